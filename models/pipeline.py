"""The former import path, kept for existing users: this module *is* ``models/generation/pipeline.py``."""
import sys

from .generation import pipeline as _moved

sys.modules[__name__] = _moved
