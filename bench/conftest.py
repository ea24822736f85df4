"""pytest set-up of the research bench: its scripts (``learning_speed.py``,
``profile_ops.py``) import as top-level modules, as they do when run as
``python bench/<script>.py``."""

import sys
from pathlib import Path

BENCH = str(Path(__file__).resolve().parent)
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)
