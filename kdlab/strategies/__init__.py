"""Who teaches whom and which parameters train.

offline: a frozen teacher teaches the student (``OfflineDistillation``);
online: peers teach each other (``OnlineDistillation``: DML, KDCL);
self: the student teaches itself (``SelfDistillation``: BYOT heads; ``BornAgain``: generations).
"""

from kdlab.strategies.born_again import BornAgain
from kdlab.strategies.offline import OfflineDistillation
from kdlab.strategies.online import OnlineDistillation
from kdlab.strategies.self_distill import SelfDistillation

__all__ = ["OfflineDistillation", "OnlineDistillation", "SelfDistillation", "BornAgain"]
