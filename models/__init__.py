"""Pure, ComfyUI-free logic, by responsibility (docs/architecture.md has the map):

* ``networks/``    -- the networks and their checkpoint readers (InSPyReNet, SAM, the salient ControlNet's layouts)
* ``imaging/``     -- image, mask and framing operations
* ``generation/``  -- background generation: inpaint inputs, prompt encoding, the diffusers pipeline
* ``scoring/``     -- the object-expansion score
* ``model_files/`` -- the registry of model files, where ComfyUI keeps them, the downloader, the loaded-model cache
* ``runs/``        -- batch runs over folders of photos (item ids)
* ``bases.py``     -- the inpainting bases and the families ComfyUI recognises, and which base a file is for (the
  ground floor: every other part imports it; it reads JSON and the model registry, nothing else of ours)
* ``errors.py``, ``precision.py`` -- error types and the device/dtype choice every part uses

Nothing here imports ComfyUI; the nodes in ``nodes/`` adapt these functions to ComfyUI types.
"""
