"""Pure, ComfyUI-free logic: networks, checkpoint loading, image and mask operations.

Nothing here imports ComfyUI; the nodes in ``nodes/`` adapt these functions to ComfyUI types.
"""
