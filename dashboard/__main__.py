"""``python -m conveyor.dashboard``: the same as ``conveyor dashboard``."""

import sys

from .cli import main

sys.exit(main(prog="python -m conveyor.dashboard"))
