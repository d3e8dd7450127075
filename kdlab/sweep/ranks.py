"""A sweep whose trials train with DDP: one study, many processes per trial.

Under ``torchrun`` or ``srun`` every process of a job runs ``kdlab-sweep``. Only rank 0 runs the
Optuna study: for each trial it sends the trial's overrides and run directory to the other ranks
(``Ranks.send``), and all of them train that trial together (``follow`` on ranks > 0). The trial's
value, its pruning and its results are rank 0's: the study sees one trial and one value, never one
per rank.

    torchrun --nproc_per_node 4 $(which kdlab-sweep) sweeps=kd_temperature_alpha trainer=ddp trainer.devices=4
    srun --ntasks-per-node 4 kdlab-sweep sweeps=... trainer=ddp trainer.devices=4     # a SLURM job step

Pruning under DDP is optuna-integration's: rank 0's ``PyTorchLightningPruningCallback`` decides and
broadcasts its decision; ``FollowPruning`` is the other ranks' side of that broadcast.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from omegaconf import DictConfig

from kdlab.errors import KdlabError

log = logging.getLogger("kdlab.sweep")


def uses_ddp(cfg: DictConfig) -> bool:
    """Whether ``cfg.trainer`` trains with a DDP strategy (``ddp``, ``ddp_spawn``, a ``DDPStrategy``)."""
    strategy = cfg.trainer.get("strategy", "auto")
    name = str(strategy.get("_target_", "")) if isinstance(strategy, DictConfig) else str(strategy)
    return "ddp" in name.lower()


def cluster_environment():
    """Lightning's environment of processes started outside Lightning (torchrun, srun), or None."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    for env in (TorchElasticEnvironment, SLURMEnvironment):
        if env.detect():
            return env()
    return None


def processes_per_trial(cfg: DictConfig) -> int:
    """How many processes Lightning would train a trial of ``cfg`` on (devices x nodes)."""
    t = cfg.trainer
    devices = t.get("devices", 1)
    if isinstance(devices, str) and devices.lstrip("-").isdigit():
        devices = int(devices)
    if not isinstance(devices, int) or devices == -1:  # auto, -1, a list of ids
        if isinstance(devices, int | str):
            accelerator = str(t.get("accelerator", "auto"))
            devices = torch.cuda.device_count() if accelerator in ("auto", "gpu", "cuda") else 1
        else:
            devices = len(devices)
    return max(int(devices), 1) * int(t.get("num_nodes", 1) or 1)


@dataclass
class Ranks:
    """The processes of one DDP sweep worker, in a process group of their own (``torch.distributed``
    default group, which Lightning then trains in) and a gloo group for the trials' messages."""

    rank: int
    world: int
    group: object | None = None  # gloo group for object messages (None: the default group is gloo)

    def send(self, message: dict | None) -> None:
        """Rank 0: the next trial (overrides, run directory), or None when the study is done."""
        dist.broadcast_object_list([message], src=0, group=self.group)

    def receive(self) -> dict | None:
        box = [None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]


def join(cfg: DictConfig) -> Ranks | None:
    """This process's place in a DDP sweep, the process group set up (Lightning's fits reuse it);
    None for a sweep whose trials train in one process (or whose processes are independent workers).

    A DDP trainer whose processes Lightning would start itself is refused: each of them would re-run
    the whole sweep command (a study per rank) instead of following rank 0's trial."""
    if not uses_ddp(cfg):
        return None
    env = cluster_environment()
    if env is None or env.world_size() <= 1:
        if processes_per_trial(cfg) > 1:
            raise KdlabError(
                "a sweep whose trials train with DDP needs its processes started by torchrun or srun, "
                "where rank 0 runs the study and the others follow its trials: torchrun --nproc_per_node "
                f"{processes_per_trial(cfg)} $(which kdlab-sweep) ... (docs/cluster.md)"
            )
        return None
    if not dist.is_initialized():
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        strategy = cfg.trainer.get("strategy")
        backend = strategy.get("process_group_backend") if isinstance(strategy, DictConfig) else None
        if backend is None:
            on_gpu = str(cfg.trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda")
            backend = "nccl" if on_gpu and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, rank=env.global_rank(), world_size=env.world_size())
    group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), group)


class FollowPruning(pl.Callback):
    """Ranks > 0's side of optuna-integration's ``PyTorchLightningPruningCallback`` under DDP: after
    each validation it broadcasts rank 0's decision to prune; every rank then stops together."""

    def __init__(self, monitor: str):
        self.monitor = monitor

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the same conditions under which rank 0's callback reaches its broadcast
        if trainer.sanity_checking or trainer.callback_metrics.get(self.monitor) is None:
            return
        should_stop = trainer.strategy.broadcast(False)
        trainer.should_stop = trainer.should_stop or should_stop


def follow(ranks: Ranks, metric: str) -> int:
    """Ranks > 0: train every trial rank 0 sends, with rank 0, until it says the study is done.
    A trial that fails here fails on rank 0 too (it is the same config); the next one follows.
    Returns the number of trials followed."""
    from kdlab.config import compose
    from kdlab.train import run as train_run

    followed = 0
    while (trial := ranks.receive()) is not None:
        followed += 1
        log.info(f"rank {ranks.rank}: training trial {trial['number']} with rank 0 in {trial['run_dir']}")
        try:
            trial_cfg, choices = compose(trial["overrides"])
            train_run(
                trial_cfg,
                Path(trial["run_dir"]),
                trial["overrides"],
                callbacks=[FollowPruning(metric)],
                summary=False,
                experiment=choices.get("experiments"),
            )
        except Exception as e:  # as rank 0's study catches it
            log.warning(f"trial {trial['number']} failed on rank {ranks.rank}: {type(e).__name__}: {e}")
    return followed
