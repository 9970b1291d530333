"""Model files: the registry of every file the pack uses, where ComfyUI keeps them, the downloader, and the cache of loaded models (reloaded when a file changes)."""
