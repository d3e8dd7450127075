"""Lightning callbacks kdlab's trainer configs can list (``trainer.callbacks``)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch


class ChannelsLast(pl.Callback):
    """Puts the models' 4-D weights in channels_last memory format at the start of fitting: with
    convolutions under AMP on recent GPUs this avoids layout transposes. No-op for 1-D models."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if any(p.dim() == 4 for p in pl_module.parameters()):
            pl_module.to(memory_format=torch.channels_last)
