#!/usr/bin/env bash
# The main job on a fresh machine, in one command: a virtual environment (.venv), torch and the pack in it, then
#   python -m salient_background demo --download "$@"
# which fetches the models once (about 7.4 GB into outputs/models, verified, resumable) and runs
# mask -> generate -> evaluate on workflows/inputs/example_product.png into outputs/demo.
# Extra arguments go to the demo (python -m salient_background demo --help), e.g. --prompt "..." --device cuda.
# SALIENT_DEMO_VENV picks another environment folder; SALIENT_DEMO_TORCH what pip installs for torch (default
# "torch torchvision"; skipped when the environment already has torch).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${SALIENT_DEMO_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
. "$VENV/bin/activate"
if ! python -c "import torch" 2>/dev/null; then
  # shellcheck disable=SC2086  # the spec is a list of packages
  python -m pip install --quiet ${SALIENT_DEMO_TORCH:-torch torchvision}
fi
python -m pip install --quiet -e .
exec python -m salient_background demo --download "$@"
