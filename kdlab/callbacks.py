"""Lightning callbacks kdlab's trainer configs can list (``trainer.callbacks``)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import RichProgressBar


class ChannelsLast(pl.Callback):
    """Puts the models' 4-D weights in channels_last memory format at the start of fitting: with
    convolutions under AMP on recent GPUs this avoids layout transposes. No-op for 1-D models."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if any(p.dim() == 4 for p in pl_module.parameters()):
            pl_module.to(memory_format=torch.channels_last)


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar without the logger's version number (``v_num``)."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
