"""Optuna sweeps over composed training configs (``kdlab-sweep``; files in ``sweeps/``)."""

from kdlab.sweep.space import Param, parse_space

__all__ = ["Param", "parse_space"]
