"""Data-parallel training of distillation modules: the strategy of ``conf/trainer/ddp.yaml``.

Lightning's DDP wraps the whole LightningModule. A distillation module holds more than what
trains: a frozen teacher (identical on every rank, never updated) and term state that kdlab keeps
identical on every rank itself (CRD's memory bank, moved with the gathered global batch). DDP
would broadcast all of it from rank 0 when it wraps the module and every buffer before every
forward (the memory bank alone is 2 x training-set size x feat_dim floats: 1.3 GB per step on
ImageNet), and Lightning's ``sync_batchnorm`` would swap the teacher's BatchNorms too and drop the
feature taps (forward hooks) of every BatchNorm it replaces. ``DDPStrategy`` keeps those out.
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy as LightningDDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger("kdlab")

#: Attributes of a kdlab training module that hold frozen reference models (never trained).
FROZEN = ("teacher",)
#: Hook dictionaries of an ``nn.Module``: what a replacement module must carry over.
HOOKS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
)


def frozen_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) of the frozen reference models of a kdlab training module (its teacher)."""
    return [(name, child) for name, child in module.named_children() if name in FROZEN]


def replicated_state(module: nn.Module) -> list[str]:
    """Names of the parameters and buffers DDP must leave alone: everything of the frozen teacher
    (identical on every rank, no gradient) and CRD's memory banks (each rank moves its own copy
    with the global batch, ``kdlab.methods.relation.ContrastMemory``)."""
    from kdlab.methods.relation import ContrastMemory

    names = []
    for path, frozen in frozen_modules(module):
        names += [f"{path}.{n}" for n, _ in frozen.named_parameters()]
        names += [f"{path}.{n}" for n, _ in frozen.named_buffers()]
    for path, child in module.named_modules():
        if isinstance(child, ContrastMemory):
            names += [f"{path}.{n}" for n, _ in child.named_buffers()]
    return names


def unused_in_a_fit(module: nn.Module) -> bool:
    """Whether some trainable parameters of ``module`` get no gradient in one of its fits: a term
    with an initialisation phase (AB, FT, FSP) trains only its connectors and the student's feature
    modules during the phase, and its connectors are idle afterwards. DDP refuses such parameters
    unless it looks for them every step (``find_unused_parameters``). So does a term that deploys
    its own model (SimKD): the student's layers after the tapped stage (MobileNetV2's and the
    ShuffleNets' last convolution) feed nothing the loss reads."""
    from kdlab.methods import Term

    return any(
        isinstance(m, Term) and (m.init_phase() is not None or type(m).deployable is not Term.deployable)
        for m in module.modules()
    )


def sync_batchnorm(module: nn.Module, skip: tuple[nn.Module, ...] = ()) -> int:
    """Swap every BatchNorm below ``module`` (not below ``skip``) for a SyncBatchNorm that shares
    its parameters and buffers and keeps its forward hooks (feature taps); returns how many."""
    swapped = 0
    for name, child in module.named_children():
        if child in skip or isinstance(child, nn.SyncBatchNorm):
            continue
        if isinstance(child, _BatchNorm):
            synced = nn.SyncBatchNorm.convert_sync_batchnorm(child)
            for hooks in HOOKS:
                if hasattr(child, hooks):
                    setattr(synced, hooks, getattr(child, hooks))
            setattr(module, name, synced)
            swapped += 1
        else:
            swapped += sync_batchnorm(child, skip)
    return swapped


class DDPStrategy(LightningDDPStrategy):
    """Lightning's ``DDPStrategy`` for kdlab's training modules:

    - the frozen teacher and CRD's memory banks are in DDP's ignore list: never broadcast, never
      all-reduced (``replicated_state``); what trains is synchronised as usual, BatchNorm
      statistics included (rank 0's, before every forward);
    - the methods whose terms train an initialisation phase leave parameters without a gradient
      in one fit or the other; DDP looks for them every step there (``unused_in_a_fit``);
    - ``sync_batchnorm`` (on GPUs; also what ``trainer.sync_batchnorm=true`` asks for): the
      BatchNorms of what trains normalise with the global batch's statistics and keep their
      feature taps; the teacher's are left as they are. DDP runs SyncBatchNorm on GPUs only: on the
      CPU each process normalises its own batch.
    """

    def __init__(self, sync_batchnorm: bool = True, process_group_backend: str | None = None, **kwargs):
        super().__init__(process_group_backend=process_group_backend, **kwargs)
        self.sync_batchnorm = sync_batchnorm

    def setup(self, trainer: pl.Trainer) -> None:
        if self._layer_sync is not None:  # Lightning's own conversion would reach the teacher and drop taps
            self._layer_sync, self.sync_batchnorm = None, True
        if trainer.state.fn == TrainerFn.FITTING and self.sync_batchnorm and self.root_device.type == "cuda":
            skip = tuple(m for _, m in frozen_modules(self.model))
            n = sync_batchnorm(self.model, skip)
            log.debug(f"sync_batchnorm: {n} BatchNorm(s) synchronised over the processes")
        super().setup(trainer)

    def configure_ddp(self) -> None:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, replicated_state(self.model))
        if unused_in_a_fit(self.model):
            self._ddp_kwargs["find_unused_parameters"] = True
        super().configure_ddp()
