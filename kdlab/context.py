"""What a strategy gets from kdlab-train: the run's config, data, directory, loggers and callbacks,
and the helpers every strategy needs (terms, models, optimizers, the teacher, a Lightning fit)."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.seed import isolate_rng
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdlab.callbacks import CompileModels, ProgressBar
from kdlab.config import instantiate
from kdlab.errors import KdlabError
from kdlab.models import create_model
from kdlab.resume import AtomicCheckpointIO, Resume, ResumeState, flat_config

log = logging.getLogger("kdlab")


@dataclass
class RunContext:
    """One run: ``cfg`` (the composed config), ``data`` (its data module), ``output_dir`` (where its
    files go), ``loggers`` and ``callbacks`` (extra Lightning callbacks, e.g. a sweep's pruner),
    ``resume`` (the checkpoints its fits continue from: ``kdlab.resume.plan``)."""

    cfg: DictConfig
    data: pl.LightningDataModule
    output_dir: Path
    loggers: list = field(default_factory=list)
    callbacks: list = field(default_factory=list)
    resume: Resume = field(default_factory=Resume)

    def child(self, **changes) -> RunContext:
        """The same run with other data, directory, loggers or callbacks (a teacher trained on demand)."""
        return dataclasses.replace(self, **changes)

    def terms(self) -> dict:
        """A fresh set of the method's weighted terms (``method.terms``)."""
        return instantiate(self.cfg.method.terms)

    def model(self, spec: DictConfig, role: str = "student") -> nn.Module:
        """The model of a teacher or student preset (``arch``, ``kwargs``, optional pretrained weights);
        ``role`` names the config group in error messages."""
        return create_model(
            spec.arch,
            self.data.num_classes,
            self.data.input_shape,
            pretrained=spec.get("pretrained", False),
            pretrained_path=spec.get("pretrained_path"),
            role=role,
            **spec.kwargs,
        )

    @staticmethod
    def optimization(spec: DictConfig) -> tuple[Callable, Callable | None]:
        """The (optimizer, scheduler) factories of a preset; the module gives them its parameters."""
        return instantiate(spec.optimizer), (instantiate(spec.scheduler) if spec.scheduler else None)

    def teacher(self) -> nn.Module:
        """The offline teacher of ``cfg.teacher`` (a checkpoint, the cache, or trained now and cached).
        The run's random state is left as it was: a run is the same whether its teacher was cached."""
        from kdlab.teacher import get_teacher  # the teacher trains through strategies, which use this module

        with isolate_rng():
            return get_teacher(self)

    def fit(
        self,
        module: pl.LightningModule,
        subdir: str = "",
        log_prefix: str = "",
        max_epochs: int | None = None,
        checkpoints: bool = True,
        **trainer_overrides,
    ) -> pl.Trainer:
        """Train ``module`` on the run's data in ``output_dir/subdir`` (checkpoints there, the best by
        ``<log_prefix>val/acc``), continuing from that directory's ``last.ckpt`` when the run resumes;
        returns the trainer, the module back on the CPU."""
        ckpt = self.resume.checkpoint_for(self.output_dir / subdir / "checkpoints") if checkpoints else None
        trainer = build_trainer(
            self.cfg,
            self.output_dir / subdir,
            self.loggers,
            self.cfg.trainer.max_epochs if max_epochs is None else max_epochs,
            checkpoints,
            monitor=f"{log_prefix}val/acc",
            callbacks=self.callbacks,
            config=flat_config(self.cfg),
            **trainer_overrides,
        )
        if ckpt is not None:
            log.info(f"{subdir or 'run'}: resuming from {ckpt}")
        trainer.fit(module, datamodule=self.data, ckpt_path=ckpt, weights_only=True)
        module.cpu()
        return trainer


@contextmanager
def run_directory(output_dir: Path):
    """Hold ``output_dir`` for one run: a second kdlab run started into it while the first is alive
    stops in one line instead of mixing its files with the first's. The lock (``.kdlab.lock``, an
    OS file lock) goes with the process, so a killed run never leaves it held. DDP ranks other than
    0 share their rank 0's directory and do not take it."""
    if rank_zero_only.rank != 0:  # Lightning's rank of this process: RANK, LOCAL_RANK or SLURM_PROCID
        yield
        return
    path = output_dir / ".kdlab.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise KdlabError(
                f"{output_dir} is in use by another kdlab run (pid {holder}); wait for it, or give this run "
                "another directory (hydra.run.dir=...)"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def quiet_third_party() -> None:
    """Keep the terminal for kdlab's own lines: no Lightning tips/device banners, no known-harmless warnings."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    for pattern in (
        ".*does not have many workers.*",  # in-memory tensors need none
        ".*isinstance\\(treespec, LeafSpec\\).*",
        ".*The number of training batches .* is smaller than the logging interval.*",
        ".*module\\(s\\) in eval mode at the start of training.*",  # the frozen teacher, on purpose
        ".*Checkpoint directory .* exists and is not empty.*",  # resume continues there (kdlab.resume)
        # a resumed fit that had finished: its best accuracy is the restored state, with no update since
        ".*compute.* method of metric MaxMetric was called before the .*update.*",
    ):
        warnings.filterwarnings("ignore", pattern)


def build_loggers(cfg: DictConfig, tags: list[str], wandb_id: str | None = None) -> list:
    """The Lightning loggers of ``cfg.logger`` (W&B gets the run's tags, and continues run
    ``wandb_id`` when the run resumes), with the resolved config logged."""
    loggers = []
    for lg_cfg in (cfg.logger or {}).values():
        extra = {}
        if lg_cfg._target_.endswith("WandbLogger"):
            if not lg_cfg.get("tags"):
                extra["tags"] = tags
            if wandb_id:
                extra.update(id=wandb_id, resume="allow")
        loggers.append(instantiate(lg_cfg, **extra))
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return loggers


class NoProfiler(PassThroughProfiler):
    """Lightning's default profiler (none) without its cost: Lightning wraps every hook of every
    step in ``profiler.profile(name)``, a generator-based context manager built anew each time
    (tens of them per step); this one hands back one reusable no-op context."""

    _nothing = contextlib.nullcontext()

    def profile(self, action_name: str):
        return self._nothing


def build_trainer(
    cfg: DictConfig,
    output_dir: Path,
    loggers: list,
    max_epochs: int,
    checkpoints: bool,
    monitor: str = "val/acc",
    callbacks: list | tuple = (),
    config: dict | None = None,
    **overrides,
) -> pl.Trainer:
    """``cfg.trainer`` plus kdlab's callbacks (last + best ``monitor`` checkpoints, written
    atomically and carrying ``config`` and the RNG states for resume; rich progress bar) and the
    caller's ``callbacks`` (a sweep's pruning callback)."""
    callbacks = [instantiate(c) for c in cfg.trainer.get("callbacks") or []] + list(callbacks)
    plugins = [instantiate(p) for p in cfg.trainer.get("plugins") or []]
    if checkpoints:
        callbacks.append(ResumeState(config or {}))
        plugins.append(AtomicCheckpointIO())
        # the best first: it is the trainer's checkpoint_callback, which reports best_model_path
        callbacks.append(
            ModelCheckpoint(
                dirpath=output_dir / "checkpoints",
                filename="best-epoch{epoch:03d}",
                monitor=monitor,
                mode="max",
                auto_insert_metric_name=False,
                enable_version_counter=False,  # a resumed run re-reaching an epoch overwrites its file
            )
        )
        # last.ckpt: the state after the latest epoch, every epoch (save_last on the monitored callback
        # rewrites it only when the accuracy improves), overwritten in place (no last-v1.ckpt beside it)
        callbacks.append(
            ModelCheckpoint(
                dirpath=output_dir / "checkpoints", filename="last", monitor=None, enable_version_counter=False
            )
        )
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(ProgressBar(refresh_rate=10))
    wanted = cfg.get("compile") or {}
    if wanted.get("student") or wanted.get("teacher"):
        callbacks.append(CompileModels(bool(wanted.get("student")), bool(wanted.get("teacher")), wanted.get("mode")))
    if cfg.trainer.get("accelerator") == "cpu":
        # Lightning asks torch to count GPUs through NVML (no fork poisoning), which Adam's step then
        # repeats on every step: a failed dlopen of libnvidia-ml, 30 us, on a machine without a GPU.
        # A CPU run uses no CUDA at all, so the plain count (cached by the runtime) is as safe.
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    if cfg.trainer.get("profiler") is None:
        overrides.setdefault("profiler", NoProfiler())
    return instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        max_epochs=max_epochs,
        enable_checkpointing=checkpoints,
        default_root_dir=str(output_dir),
        plugins=plugins or None,
        **overrides,
    )
