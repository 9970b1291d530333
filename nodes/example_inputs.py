"""The shipped workflows' example inputs (``workflows/inputs/*``, e.g. the photo their Load Image names) are copied
into ComfyUI's input folder when the pack loads, so a template runs on its first queue.

A file already in the input folder is never replaced (it may be the user's own picture under the same name), and
nothing here may stop the pack from loading: an error is logged and the next file is tried. ``folder_paths`` is
imported inside the function, so importing this module needs no ComfyUI.
"""
from __future__ import annotations

import logging
import os
import shutil

log = logging.getLogger(__name__)

EXAMPLE_INPUTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workflows", "inputs")


def install_example_inputs(source_dir: str = EXAMPLE_INPUTS_DIR) -> list[str]:
    """Copy every file of ``source_dir`` that ComfyUI's input folder lacks; returns the names copied."""
    try:
        import folder_paths  # ComfyUI's; absent when the pack is imported outside ComfyUI
    except ImportError:
        return []
    except Exception as exc:  # noqa: BLE001 - the pack must load whatever happens here
        log.warning("Salient Background: example inputs not copied (folder_paths failed to import): %s", exc)
        return []
    try:
        target_dir = folder_paths.get_input_directory()
        names = sorted(n for n in os.listdir(source_dir) if os.path.isfile(os.path.join(source_dir, n)))
        if names:
            os.makedirs(target_dir, exist_ok=True)
    except Exception as exc:  # noqa: BLE001 - the pack must load whatever happens here
        log.warning("Salient Background: example inputs not copied into ComfyUI's input folder: %s", exc)
        return []
    copied = []
    for name in names:
        if _copy_if_absent(os.path.join(source_dir, name), os.path.join(target_dir, name)):
            copied.append(name)
    if copied:
        log.info("Salient Background: copied the example inputs %s into %s", ", ".join(copied), target_dir)
    return copied


def _copy_if_absent(source: str, target: str) -> bool:
    """Exclusive create ("xb"): an existing file, even one appearing meanwhile, is left untouched."""
    try:
        with open(source, "rb") as src, open(target, "xb") as dst:
            try:
                shutil.copyfileobj(src, dst)
            except BaseException:
                dst.close()
                os.remove(target)  # no half-written file under the example's name
                raise
        return True
    except FileExistsError:
        return False
    except Exception as exc:  # noqa: BLE001
        log.warning("Salient Background: example input %s not copied to %s: %s", os.path.basename(source), target, exc)
        return False
