"""``--no-progress`` for the libraries' own progress bars (transformers' "Loading weights", diffusers' and
huggingface_hub's), through their public switches.

The setting is huggingface_hub's environment variable ``HF_HUB_DISABLE_PROGRESS_BARS``: huggingface_hub and
transformers read it when they are imported, and worker processes inherit it. diffusers has no such variable, so the
pack's code calls :func:`apply_library_progress_setting` right where it imports diffusers (importing it costs
seconds, which a command that never uses it must not pay).
"""
from __future__ import annotations

import os
import sys

PROGRESS_ENV = "HF_HUB_DISABLE_PROGRESS_BARS"
# module -> its public function that turns its progress bars off
PROGRESS_BAR_SWITCHES = {
    "huggingface_hub.utils": "disable_progress_bars",
    "transformers.utils.logging": "disable_progress_bar",
    "diffusers.utils.logging": "disable_progress_bar",
}


def disable_library_progress_bars() -> None:
    """Switch the libraries' progress bars off: those already imported now, the others when they are imported (the
    environment variable) or when the pack imports them (:func:`apply_library_progress_setting`)."""
    os.environ[PROGRESS_ENV] = "1"
    apply_library_progress_setting()


def apply_library_progress_setting() -> None:
    """If progress bars are off (``HF_HUB_DISABLE_PROGRESS_BARS``), call the switch of every library imported so far.
    Cheap: call it after importing diffusers."""
    if os.environ.get(PROGRESS_ENV, "").strip().upper() not in ("1", "ON", "YES", "TRUE"):
        return
    for module, function in PROGRESS_BAR_SWITCHES.items():
        if module in sys.modules:
            getattr(sys.modules[module], function, lambda: None)()
