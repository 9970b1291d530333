"""``python -m salient_background <command>``."""
import sys

from .cli import main

sys.exit(main())
