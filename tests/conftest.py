"""Test environment: offline, no W&B account, one CPU thread, every file under a temp dir."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_TMP = Path(tempfile.mkdtemp(prefix="kdlab-tests-"))
os.environ.update(
    HF_HUB_OFFLINE="1",
    WANDB_MODE="offline",
    WANDB_SILENT="true",
    WANDB_DIR=str(_TMP / "wandb"),
    WANDB_CACHE_DIR=str(_TMP / "wandb-cache"),
    WANDB_CONFIG_DIR=str(_TMP / "wandb-config"),
    WANDB_DATA_DIR=str(_TMP / "wandb-data"),
    KDLAB_DATA_DIR=str(_TMP / "data"),  # MNIST-1D is generated once per session here
    OMP_NUM_THREADS="1",
)

import pytest  # noqa: E402
import torch  # noqa: E402

from kdlab.config import compose  # noqa: E402

torch.set_num_threads(1)

#: Overrides that make a run take a few seconds: a few batches, one epoch, no progress bar.
FAST = [
    "logger=none",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "teacher.max_epochs=1",
]


def compose_cfg(overrides: list[str] | tuple = ()):
    return compose(list(overrides))[0]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """A fresh teacher cache for one test."""
    path = tmp_path / "cache"
    monkeypatch.setenv("KDLAB_CACHE_DIR", str(path))
    return path


@pytest.fixture
def train(tmp_path, cache_dir):
    """Run kdlab-train in-process: train(overrides, fast=True) -> results dict (run dir: result['_dir'])."""
    from kdlab.train import run

    counter = iter(range(1000))

    def _train(overrides=(), fast: bool = True) -> dict:
        out = tmp_path / f"run{next(counter)}"
        cfg, choices = compose([*(FAST if fast else []), *overrides])
        results = run(cfg, out, list(overrides), experiment=choices.get("experiments"))
        results["_dir"] = out
        return results

    return _train
