"""The former import path, kept for existing users: this module *is* ``models/networks/controlnet_checkpoint.py``."""
import sys

from .networks import controlnet_checkpoint as _moved

sys.modules[__name__] = _moved
