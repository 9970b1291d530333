"""``python -m salient_background.training <prepare|train|export>`` (also under accelerate launch / torchrun)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
