"""Rewrite tests/golden/salient_parity.npz from the reference implementation.

Run with a Python where both ``transparent_background`` (1.2.12, the paper's pin) and this pack are
importable, e.g. a scratch venv outside the repository:

    <venv>/bin/python tests/golden/make_salient_golden.py

This script does not install anything.
"""
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/ -> sb_testkit
try:
    import salient_background  # noqa: F401  (installed, e.g. pip install -e . --no-deps)
except ImportError:  # register the repository root under the package name, as tests/conftest.py does
    import importlib.util

    _root = os.path.dirname(os.path.dirname(HERE))
    _spec = importlib.util.spec_from_file_location(
        "salient_background", os.path.join(_root, "__init__.py"), submodule_search_locations=[_root])
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["salient_background"] = _module
    _spec.loader.exec_module(_module)
from sb_testkit.salient_golden import GOLDEN_PATH, MODES, make_golden  # noqa: E402


def main() -> None:
    modes = sys.argv[1:] or MODES
    with tempfile.TemporaryDirectory() as tmp:
        arrays = make_golden(tmp, modes)
    np.savez_compressed(GOLDEN_PATH, **arrays)
    print(f"wrote {GOLDEN_PATH} ({os.path.getsize(GOLDEN_PATH)} bytes)")
    for mode in modes:
        print(f"{mode}: max |reference - ours| = {float(arrays[f'{mode}_max_abs_diff_ours']):.3g}; "
              f"raw max ref {float(arrays[f'{mode}_raw_max']):.6f} ours {float(arrays[f'{mode}_raw_max_ours']):.6f}; "
              f"map std {float(arrays[f'{mode}_map_std']):.3f}")


if __name__ == "__main__":
    main()
