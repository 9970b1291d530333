#!/usr/bin/env bash
# The main job on a fresh machine, in one command: a virtual environment (.venv), torch and the pack in it, then
#   python -m salient_background demo --download "$@"
# which fetches the models once (about 7.4 GB into outputs/models, verified, resumable) and runs
# mask -> generate -> evaluate on workflows/inputs/example_product.png into outputs/demo.
# Extra arguments go to the demo (python -m salient_background demo --help), e.g. --prompt "..." --device cuda.
# SALIENT_DEMO_VENV picks another environment folder; SALIENT_DEMO_TORCH what pip installs for torch (default
# "torch torchvision"; skipped when the environment already has torch). SALIENT_DEMO_TORCH_VARIANT picks the build:
# "auto" (default: the CUDA build when an NVIDIA GPU is present -- nvidia-smi on the PATH or /proc/driver/nvidia --
# else the CPU build from PyTorch's CPU wheel index, much smaller), "cpu" or "cuda" (PyPI's default build).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"

has_nvidia_gpu() {
  command -v nvidia-smi >/dev/null 2>&1 || [ -e /proc/driver/nvidia ]
}

# Which torch build to install: cpu or cuda (SALIENT_DEMO_TORCH_VARIANT, else what the machine has).
torch_variant() {
  case "${SALIENT_DEMO_TORCH_VARIANT:-auto}" in
    auto) if has_nvidia_gpu; then echo cuda; else echo cpu; fi ;;
    cpu|cuda) echo "$SALIENT_DEMO_TORCH_VARIANT" ;;
    *) echo "SALIENT_DEMO_TORCH_VARIANT must be auto, cpu or cuda (it is '$SALIENT_DEMO_TORCH_VARIANT')" >&2; return 2 ;;
  esac
}

VARIANT="$(torch_variant)"  # checked before anything is installed
if [ "${SALIENT_DEMO_TORCH_VARIANT:-auto}" != auto ]; then
  WHY="SALIENT_DEMO_TORCH_VARIANT=$VARIANT"
elif [ "$VARIANT" = cpu ]; then
  WHY="no NVIDIA GPU found; SALIENT_DEMO_TORCH_VARIANT=cuda installs the CUDA one"
else
  WHY="an NVIDIA GPU is present; SALIENT_DEMO_TORCH_VARIANT=cpu installs the CPU one"
fi
VENV="${SALIENT_DEMO_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
. "$VENV/bin/activate"
if ! python -c "import torch" 2>/dev/null; then
  TORCH_OPTIONS=""
  if [ "$VARIANT" = cpu ]; then
    TORCH_OPTIONS="--index-url $TORCH_CPU_INDEX"
    echo "torch: the CPU build from $TORCH_CPU_INDEX ($WHY)"
  else
    echo "torch: PyPI's default build, with CUDA on Linux x86-64 ($WHY)"
  fi
  # shellcheck disable=SC2086  # the spec is a list of packages, the options a list of words
  python -m pip install --quiet $TORCH_OPTIONS ${SALIENT_DEMO_TORCH:-torch torchvision}
fi
python -m pip install --quiet -e .
exec python -m salient_background demo --download "$@"
