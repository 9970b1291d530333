"""Training subpackage: dataset preparation (``prepare``), the ControlNet trainer (``train``) and export (``export``).

Pure (no ComfyUI): ``python -m salient_background.training <prepare|train|export>``, or the same commands under
``python -m salient_background training ...``. What ``export`` writes is what the loader node reads.
"""
