"""kdlab: a research framework for knowledge distillation.

Configs live in ``conf/`` (Hydra groups), paper recipes in ``experiments/``; the entry point
is ``kdlab/train.py``. See README.md for the tour.
"""

from pathlib import Path

__version__ = "0.1.0"

#: The source checkout kdlab runs from (``pip install -e .``): it holds conf/ and experiments/.
ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "conf"
