"""What every strategy shares.

A **strategy** (``Strategy``) is the unit of training: ``conf/strategy/<name>.yaml`` builds one,
its YAML keys its fields; kdlab-train hands it the run (``kdlab.context.RunContext``), it builds
its models and modules, fits them and says what the run reports (``Fitted``, ``results``).

A **training module** (``DistillationModule``) is the LightningModule a strategy fits. The base
does what they all repeat: the step's named, weighted terms summed into the loss and averaged
per epoch (``train/loss``, ``train/loss_<term>``, ``train/acc``), validation accuracy and
cross-entropy of each of the module's outputs, ``val/acc`` and ``val/acc_best`` of the reported
one, all after an optional ``log_prefix``. Subclasses say how a batch becomes losses
(``losses``) and which logits validation scores (``outputs``). Modules take values, never a config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from kdlab.config import check_arguments
from kdlab.errors import KdlabError
from kdlab.methods import Term
from kdlab.models import FeatureTaps

if TYPE_CHECKING:
    from kdlab.context import RunContext

#: The name of a module's main output: logged as ``val/acc`` (others as ``val/<output>/acc``).
STUDENT = "student"


@dataclass
class Trained:
    """A model a run reports: the module, its architecture name, and the kwargs that rebuild it."""

    model: nn.Module
    arch: str
    kwargs: dict = field(default_factory=dict)


@dataclass
class Fitted:
    """What a strategy's fit hands to evaluation."""

    student: Trained | None  # the deployable student, exported alone; None when the run trained a teacher
    teacher: Trained | None  # the model the student is compared with (fidelity); None without one
    val_acc_best: float  # best validation accuracy of the reported model (the student, else the teacher)
    trainer: pl.Trainer  # the fit whose best checkpoint holds the reported model ...
    checkpoint_prefix: str = "student."  # ... under this prefix of its state_dict

    @property
    def reported(self) -> Trained:
        return self.student or self.teacher

    @property
    def best_checkpoint(self) -> str | None:
        callback = self.trainer.checkpoint_callback
        return callback.best_model_path or None if callback is not None else None


class Strategy:
    """How a run trains and what it reports. Subclasses are dataclasses whose fields are the keys
    of their ``conf/strategy/<name>.yaml`` (typed: ``kdlab.config.validate`` checks them)."""

    name: ClassVar[str | None] = None  # results.json's "strategy"
    #: trains ``OfflineDistillation`` (kdlab.strategies.offline): strong views, distillation tokens,
    #: deployable models (SimKD) and DOT work there only
    offline_module: ClassVar[bool] = False

    def __post_init__(self):
        for f in dataclasses.fields(self):  # plain lists and dicts, whether built from YAML or Python
            setattr(self, f.name, plain(getattr(self, f.name)))
        # a strategy built from Python is checked as its config is
        check_arguments(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "strategy")

    def labels(self, cfg: DictConfig) -> dict[str, str | None]:
        """What this run trains, by role: results.json's header and the W&B tags (``role:name``)."""
        return {"strategy": self.name, "method": cfg.method.name, "student": cfg.student.arch}

    def fit(self, run: RunContext) -> Fitted:
        raise NotImplementedError

    def results(self, data) -> dict:
        """More results.json keys, once fitted (peers, exits, generations)."""
        return {}


def plain(value):
    """A config value as plain Python (lists and dicts instead of OmegaConf containers)."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


@dataclass
class StepLosses:
    loss: Tensor  # what backward sees
    terms: dict[str, Tensor]  # the named, already weighted terms (loss_<term>)
    logged: dict[str, Tensor] = field(default_factory=dict)  # more per-step values to average and log


class DistillationModule(pl.LightningModule):
    """The base of the training modules: see the module docstring. ``outputs`` names what
    validation scores (``STUDENT`` is the main one); ``log_prefix`` prefixes every logged name
    (``gen1/`` for a Born-Again generation: ``gen1/val/acc``)."""

    def __init__(self, num_classes: int, outputs: Sequence[str] = (STUDENT,), log_prefix: str = ""):
        super().__init__()
        self.log_prefix = log_prefix
        self.val_acc = nn.ModuleDict({o: MulticlassAccuracy(num_classes, average="micro") for o in outputs})
        self.val_acc_best = nn.ModuleDict({o: MaxMetric() for o in outputs})
        for metric in self.val_acc_best.values():  # in the checkpoints: a resumed run knows its best epoch so far
            metric.persistent(True)
        self.train_means, self.val_means = RunningMeans(), RunningMeans()

    def __setattr__(self, name: str, value) -> None:
        # Lightning sets _current_fx_name around every hook it calls, tens of times a step; it is a
        # plain string, which nn.Module's __setattr__ (checking for parameters, buffers, modules)
        # would store in the same place, only slower
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # what a subclass says
    def losses(self, x: Tensor, y: Tensor, index: Tensor | None) -> StepLosses:
        raise NotImplementedError

    def outputs(self, x: Tensor) -> dict[str, Tensor]:
        """The logits of each output (named as in ``__init__``) on a validation batch."""
        raise NotImplementedError

    def optimize(self, step: StepLosses) -> None:
        """One update from ``step``'s losses, for modules that optimise by hand (``automatic_optimization = False``)."""
        raise NotImplementedError

    def reported_acc(self, accs: dict[str, Tensor]) -> Tensor:
        """``val/acc`` from this epoch's accuracy of each output."""
        return accs[STUDENT]

    def reported_best(self) -> Tensor:
        return self.val_acc_best[STUDENT].compute()

    def reset_validation(self) -> None:
        """Forget the best validation accuracy (a new phase of training starts)."""
        for metric in self.val_acc_best.values():
            metric.reset()

    def best_val_acc(self) -> float:
        """The best ``val/acc`` so far (-inf without validation)."""
        return self.reported_best().item()

    # what the base does
    def setup(self, stage: str) -> None:
        if stage == "fit":  # memory banks and negative sampling need the training labels
            prepare_terms(self.trainer, [m for m in self.modules() if isinstance(m, Term)])

    def training_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        x, y, *rest = batch  # (x, y, index) from kdlab data modules
        step = self.losses(x, y, rest[0] if rest else None)
        check_finite(step.loss, {**step.terms, **step.logged}, self.current_epoch, self.global_step)
        if not self.automatic_optimization:
            self.optimize(step)
        self.train_means.add({"loss": step.loss, **step.terms, **step.logged}, len(y))
        return {"loss": step.loss, **{k: v.detach() for k, v in step.terms.items()}}

    def on_train_epoch_end(self) -> None:
        self.log_dict({f"{self.log_prefix}train/{k}": v for k, v in self.train_means.pop().items()}, sync_dist=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        losses = {}
        for name, logits in self.outputs(x).items():
            self.val_acc[name].update(logits, y)
            losses["loss" if name == STUDENT else f"{name}/loss"] = F.cross_entropy(logits, y)
        self.val_means.add(losses, len(y))

    def on_validation_epoch_end(self) -> None:
        accs = {name: metric.compute() for name, metric in self.val_acc.items()}
        for metric in self.val_acc.values():
            metric.reset()
        p = self.log_prefix
        self.log_dict({f"{p}val/{k}": v for k, v in self.val_means.pop().items()}, sync_dist=True)
        self.log_dict({f"{p}val/{n}/acc": a for n, a in accs.items() if n != STUDENT}, sync_dist=True)
        self.log(f"{p}val/acc", self.reported_acc(accs), prog_bar=True, sync_dist=True)
        if not self.trainer.sanity_checking:
            for name, acc in accs.items():
                self.val_acc_best[name](acc)
            self.log(f"{p}val/acc_best", self.reported_best(), sync_dist=True)


def batch_accuracy(logits: Tensor, y: Tensor) -> Tensor:
    return (logits.detach().argmax(-1) == y).float().mean()


class RunningMeans:
    """Batch-size-weighted sums of detached scalars, read once per epoch. Per step this costs a
    few tensor adds, where ``self.log`` costs milliseconds (Lightning moves its result
    collection on every call), which would dominate the step time of small models."""

    def __init__(self):
        self.sums: dict[tuple[str, ...], Tensor] = {}  # names -> their sums, (len(names),)
        self.count = 0

    def add(self, values: Mapping[str, Tensor], n: int) -> None:
        names = tuple(values)
        step = torch.stack([v.detach() for v in values.values()]) * n  # one add per step, not one per value
        if names in self.sums:
            self.sums[names] += step
        else:
            self.sums[names] = step
        self.count += n

    def pop(self) -> dict[str, Tensor]:
        means: dict[str, Tensor] = {}
        for names, sums in self.sums.items():
            for name, mean in zip(names, (sums / max(self.count, 1)).unbind()):
                means[name] = means[name] + mean if name in means else mean
        self.sums, self.count = {}, 0
        return means


def check_finite(loss: Tensor, parts: Mapping[str, Tensor], epoch: int, step: int) -> None:
    """Stop with one actionable line when the loss is NaN or infinite."""
    if not torch.isfinite(loss):
        detail = ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items())
        raise KdlabError(
            f"non-finite loss at epoch {epoch}, step {step} ({detail}); "
            "lower the learning rate or the loss weights. Checkpoints saved so far are kept"
        )


@torch.no_grad()
def probe(model: nn.Module, taps: FeatureTaps, input_shape: Sequence[int]) -> tuple[Tensor, dict[str, Tensor]]:
    """(logits, tapped features) of one dummy batch of two, in eval mode: the shapes learnable parts are built from."""
    was_training = model.training
    model.eval()
    try:
        logits = model(torch.zeros(2, *input_shape))
        return logits, taps.pop()
    finally:
        model.train(was_training)


def optimization(
    params: Iterable[nn.Parameter],
    optimizer: Callable[..., torch.optim.Optimizer],
    scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """An optimizer over the trainable ``params`` and its (epoch-stepped) scheduler."""
    opt = optimizer([p for p in params if p.requires_grad])
    return opt, (scheduler(opt) if scheduler is not None else None)


def lightning_optimization(params: Iterable[nn.Parameter], optimizer: Callable, scheduler: Callable | None):
    """``configure_optimizers``' answer for one optimizer stepped by Lightning (scheduler per epoch)."""
    opt, sch = optimization(params, optimizer, scheduler)
    return opt if sch is None else {"optimizer": opt, "lr_scheduler": {"scheduler": sch, "interval": "epoch"}}


def no_init_phases(terms: Mapping[str, Term], strategy: str) -> Mapping[str, Term]:
    """``terms``, refused in one line when one of them declares an initialisation phase, which only
    the offline strategies (offline, born_again) train."""
    for name, term in terms.items():
        phase = term.init_phase()
        if phase is not None and phase.epochs > 0:
            raise KdlabError(
                f"method.terms.{name} ({type(term).__name__}) trains an initialisation phase before the student, "
                f"which strategy={strategy} does not run; use strategy=offline, or set "
                f"method.terms.{name}.init_epochs=0 to skip it"
            )
    return terms


def prepare_terms(trainer, terms: Iterable[Term]) -> None:
    """Give terms the training labels (memory banks, negative sampling) once the data exists."""
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None and hasattr(datamodule, "train_targets"):
        targets = datamodule.train_targets()
        for term in terms:
            term.prepare(targets)
