"""The pieces every kdlab fit shares: Lightning loggers and a Trainer with kdlab's callbacks."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from kdlab.callbacks import ProgressBar


def quiet_third_party() -> None:
    """Keep the terminal for kdlab's own lines: no Lightning tips/device banners, no known-harmless warnings."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    for pattern in (
        ".*does not have many workers.*",  # in-memory tensors need none
        ".*isinstance\\(treespec, LeafSpec\\).*",
        ".*The number of training batches .* is smaller than the logging interval.*",
        ".*module\\(s\\) in eval mode at the start of training.*",  # the frozen teacher, on purpose
    ):
        warnings.filterwarnings("ignore", pattern)


def build_loggers(cfg: DictConfig, tags: list[str]) -> list:
    """The Lightning loggers of ``cfg.logger`` (W&B gets the run's tags), with the resolved config logged."""
    loggers = []
    for lg_cfg in (cfg.logger or {}).values():
        extra = {"tags": tags} if lg_cfg._target_.endswith("WandbLogger") and not lg_cfg.get("tags") else {}
        loggers.append(instantiate(lg_cfg, **extra))
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return loggers


def build_trainer(
    cfg: DictConfig,
    output_dir: Path,
    loggers: list,
    max_epochs: int,
    checkpoints: bool,
    monitor: str = "val/acc",
    callbacks: list | tuple = (),
    **overrides,
) -> pl.Trainer:
    """``cfg.trainer`` plus kdlab's callbacks (last + best ``monitor`` checkpoints, rich progress
    bar) and the caller's ``callbacks`` (a sweep's pruning callback)."""
    callbacks = [instantiate(c) for c in cfg.trainer.get("callbacks") or []] + list(callbacks)
    if checkpoints:
        callbacks.append(
            ModelCheckpoint(
                dirpath=output_dir / "checkpoints",
                filename="best-epoch{epoch:03d}",
                monitor=monitor,
                mode="max",
                save_last=True,
                auto_insert_metric_name=False,
            )
        )
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(ProgressBar(refresh_rate=10))
    return instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        max_epochs=max_epochs,
        enable_checkpointing=checkpoints,
        default_root_dir=str(output_dir),
        **overrides,
    )
