"""Image, mask and framing operations on ComfyUI-layout tensors and PIL images."""
