"""Strategies: who teaches whom, which parameters train, and what a run reports.

A strategy is one file: the dataclass its ``conf/strategy/<name>.yaml`` builds (how it builds,
fits and reports) beside the LightningModule it trains.

offline: a frozen teacher teaches the student (``Offline``, ``OfflineDistillation``);
online: peers teach each other (``Online``, ``OnlineDistillation``: DML, KDCL);
self: the student teaches itself (``SelfDistill``, ``SelfDistillation``: BYOT heads;
``BornAgain``: generations, each an offline run).
"""

from kdlab.strategies.base import DistillationModule, Fitted, Strategy, Trained
from kdlab.strategies.born_again import BornAgain
from kdlab.strategies.offline import Offline, OfflineDistillation
from kdlab.strategies.online import Online, OnlineDistillation
from kdlab.strategies.self_distill import SelfDistill, SelfDistillation

__all__ = [
    "Strategy",
    "Fitted",
    "Trained",
    "DistillationModule",
    "Offline",
    "OfflineDistillation",
    "Online",
    "OnlineDistillation",
    "SelfDistill",
    "SelfDistillation",
    "BornAgain",
]
