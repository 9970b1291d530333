"""Maps the repository root to the package ``salient_background``.

The root is what ComfyUI imports (``custom_nodes/<clone>/__init__.py``), so the clone's folder name
never matters: installed, the code is always ``salient_background``. Metadata lives in pyproject.toml.
"""
from setuptools import find_packages, setup

SUBPACKAGES = find_packages(".", exclude=["tests", "tests.*", "benchmarks", "benchmarks.*", "build", "build.*"])

setup(
    package_dir={"salient_background": "."},
    packages=["salient_background"] + [f"salient_background.{name}" for name in SUBPACKAGES],
)
