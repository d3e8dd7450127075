"""Experiment loggers the ``logger`` config group can name besides Lightning's own."""

from __future__ import annotations

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger


class WandbLogger(_LightningWandbLogger):
    """Lightning's W&B logger minus the ``anonymous`` argument it always forwards to
    ``wandb.init``, which wandb >= 0.31 warns about on every run."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._wandb_init.pop("anonymous", None)
