"""LightningModules that decide who teaches whom and which parameters train."""

from kdlab.strategies.offline import OfflineDistillation

__all__ = ["OfflineDistillation"]
