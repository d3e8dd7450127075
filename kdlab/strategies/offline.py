"""Offline distillation: a frozen, pretrained teacher teaches a student from scratch."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from kdlab.errors import KdlabError
from kdlab.methods import StepOutputs, Term
from kdlab.methods.deit import require_distillation_token
from kdlab.models import FeatureTaps
from kdlab.optim import dot_step, require_task_and_distillation, steps_apart
from kdlab.strategies.base import (
    STUDENT,
    DistillationModule,
    Fitted,
    StepLosses,
    Strategy,
    Trained,
    batch_accuracy,
    lightning_optimization,
    probe,
)
from kdlab.teacher_outputs import TeacherOutputs, logits_only_reason
from kdlab.teacher_outputs import plan as plan_teacher_outputs

if TYPE_CHECKING:
    from kdlab.context import RunContext

log = logging.getLogger("kdlab")


@dataclass
class Offline(Strategy):
    """The student learns from ``method``'s terms; the teacher (``conf/teacher``: a checkpoint,
    the cache, or trained on demand) is loaded only when a term needs one (not for ``method=none``)."""

    name = "offline"
    offline_module = True

    def labels(self, cfg: DictConfig) -> dict[str, str | None]:
        return {"teacher": cfg.teacher.arch, **super().labels(cfg)}

    def fit(self, run: RunContext) -> Fitted:
        spec, terms = run.cfg.student, run.terms()
        student = run.model(spec)  # before the teacher: a wrong student fails before any teacher trains
        if any(t.distillation_token for t in terms.values()):
            require_distillation_token(student, "student")
        teacher = run.teacher() if any(t.needs_teacher for t in terms.values()) else None
        # the teacher's logits from the teacher-output cache when the terms read nothing else (kdlab/teacher_outputs.py)
        self.teacher_outputs = plan_teacher_outputs(run, teacher) if teacher is not None else None
        module = train_offline(run, student, spec, terms, teacher, teacher_outputs=self.teacher_outputs)
        if self.teacher_outputs is not None and self.teacher_outputs.active:
            log.info(self.teacher_outputs.summary())
        reference = None
        if module.teacher is not None:
            reference = Trained(module.teacher, getattr(module.teacher, "kdlab_arch", run.cfg.teacher.arch))
        arch, kwargs = spec.arch, OmegaConf.to_container(spec.kwargs, resolve=True)
        if module.student is not student:  # a term's deployable model (SimKD), which rebuilds from its own arch
            arch, kwargs = module.student.kdlab_arch, module.student.kdlab_kwargs
        return Fitted(Trained(module.student, arch, kwargs), reference, module.best_val_acc(), module.trainer)

    def results(self, data) -> dict:
        """results.json's ``teacher_cache``: whether the teacher-output cache was used (else why not),
        its dtype, hit rate, fill time and size on disk; null without a teacher."""
        cache = getattr(self, "teacher_outputs", None)
        return {"teacher_cache": cache.report() if cache is not None else None}


def train_offline(
    run: RunContext,
    model: nn.Module,
    spec: DictConfig,
    terms: Mapping[str, Term],
    teacher: nn.Module | None = None,
    log_prefix: str = "",
    teacher_outputs: TeacherOutputs | None = None,
    **fit,
) -> OfflineDistillation:
    """Fit ``model`` on ``terms`` (``teacher`` frozen, its logits from ``teacher_outputs`` when given)
    with the optimizer and scheduler of preset ``spec``, in ``run``; ``fit`` goes to ``RunContext.fit``
    (sub-directory, epochs, ...). Students, Born-Again generations and teachers trained by kdlab are
    all trained here."""
    optimizer, scheduler = run.optimization(spec)
    module = OfflineDistillation(
        model,
        terms,
        optimizer,
        run.data.num_classes,
        run.data.input_shape,
        scheduler=scheduler,
        teacher=teacher,
        log_prefix=log_prefix,
        teacher_outputs=teacher_outputs,
    )
    for name, term in terms.items():  # the terms' initialisation phases (AB, FT, FSP): each a fit of its own
        phase = term.init_phase()
        if phase is not None and phase.epochs > 0:
            module.phase, module.log_prefix = name, f"{log_prefix}init_{name}/"
            subdir = str(Path(fit.get("subdir", "")) / f"init_{name}")
            run.fit(module, subdir=subdir, log_prefix=module.log_prefix, max_epochs=phase.epochs)
            module.phase, module.log_prefix = None, log_prefix
            module.reset_validation()
    run.fit(module, log_prefix=log_prefix, **fit)
    return module


def split_heads(output) -> tuple[Tensor, Tensor | None]:
    """(class logits, distillation-token logits or None) of a student's output: a DeiT student in
    distilled training returns both heads, every other model (and DeiT in eval mode) one tensor."""
    return output if isinstance(output, tuple) else (output, None)


class OfflineDistillation(DistillationModule):
    """Trains ``student`` on the weighted sum of ``terms``; ``teacher`` is frozen.

    The teacher gets ``requires_grad_(False)`` and stays in eval mode whenever the module is
    put in train mode, unless a term's reference trains with it in train mode
    (``Term.teacher_train_mode``, OFD: batch statistics; its BN statistics are restored after
    each fit). When no term needs a teacher (``method=none``) this is plain supervised training
    and no teacher is kept. With ``teacher_outputs`` (``kdlab.teacher_outputs``) and terms that read
    only the teacher's logits, training steps read them from the teacher-output cache, by each
    sample's index and view, and the teacher runs only on the rows still missing. Learnable parts
    of the terms (regressors, embeddings) are optimised with the student and saved in its
    checkpoints. While ``phase`` names a term, the module
    trains that term's initialisation phase instead (``train_offline`` runs them first).

    Logged once per epoch: ``train/loss`` and every weighted term as ``train/loss_<name>``,
    ``train/acc``, ``val/loss``, ``val/acc``, ``val/acc_best`` (each after ``log_prefix``).
    """

    def __init__(
        self,
        student: nn.Module,
        terms: Mapping[str, Term],
        optimizer: Callable[..., torch.optim.Optimizer],
        num_classes: int,
        input_shape: Sequence[int],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        teacher: nn.Module | None = None,
        log_prefix: str = "",
        teacher_outputs: TeacherOutputs | None = None,
    ):
        super().__init__(num_classes, [STUDENT], log_prefix)
        if not terms:
            raise KdlabError("method.terms is empty; give at least one loss term (e.g. method=none for cross-entropy)")
        needs_teacher = [name for name, t in terms.items() if t.needs_teacher]
        if needs_teacher and teacher is None:
            raise KdlabError(f"method terms {needs_teacher} need a teacher, but none was given")
        self.student = student
        self.phase: str | None = None  # a term's name while its initialisation phase trains
        self.teacher = teacher.requires_grad_(False).eval() if needs_teacher else None
        # a term whose reference trains with the teacher in train mode (OFD): batch statistics in its
        # BatchNorms; their running statistics are put back after each fit
        self.teacher_train_mode = self.teacher is not None and any(t.teacher_train_mode for t in terms.values())
        self._teacher_buffers = (
            {k: v.clone() for k, v in self.teacher.state_dict().items()} if self.teacher_train_mode else None
        )
        self.terms = nn.ModuleDict(dict(terms))
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        for term in self.terms.values():
            term.select_taps(self.student, self.teacher)
        self.student_taps = FeatureTaps(student, [p for t in terms.values() for p in t.student_taps], "student")
        self.teacher_taps = (
            FeatureTaps(self.teacher, [p for t in terms.values() for p in t.teacher_taps], "teacher")
            if self.teacher is not None
            else None
        )
        self.teacher_outputs = teacher_outputs if self.teacher is not None else None
        self._views: Tensor | None = None  # the view ids of the training batch being stepped
        self._strong: Tensor | None = None  # the strong view of the training batch being stepped
        self.reads_strong_view = any(t.reads_strong_view for t in terms.values())
        if self.teacher_outputs is not None and self.teacher_outputs.active:
            reason = logits_only_reason(self.terms)
            if reason:
                self.teacher_outputs.disable(reason)
            elif self.reads_strong_view:  # the strong view's draws are not enumerable: the teacher runs on them
                self.teacher_outputs.disable("a term reads the teacher's logits on the strong view (data.strong_view)")
        if any(t.distillation_token for t in terms.values()):  # DeiT: the class and distillation heads apart
            require_distillation_token(student, "student")
            student.set_distilled_training(True)
        self._probe_and_build(input_shape)
        for term in self.terms.values():  # SimKD deploys the student with its projector and the teacher's head
            deployed = term.deployable(self.student, self.teacher, input_shape)
            if deployed is not None:
                self.student = deployed
        # DOT (kdlab.optim.DOT): the task and distillation gradients are stepped apart, by hand
        if steps_apart(optimizer):
            self.automatic_optimization = False
            require_task_and_distillation({n: t.task_loss for n, t in self.terms.items()}, "the DOT optimizer")

    def _probe_and_build(self, input_shape: Sequence[int]) -> None:
        """One forward pass on a dummy batch gives the tapped shapes the terms build from."""
        _, s_feats = probe(self.student, self.student_taps, input_shape)
        t_feats = probe(self.teacher, self.teacher_taps, input_shape)[1] if self.teacher is not None else {}
        for term in self.terms.values():
            term.build(s_feats, t_feats)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.train(mode and self.teacher_train_mode and self.phase is None)
        if self.phase is not None and mode:  # only what the phase trains is in train mode
            self.student.eval()
            for m in self.init_modules():
                m.train()
        return self

    def on_fit_end(self) -> None:
        if self._teacher_buffers is not None:  # the teacher as loaded, whatever train mode did to its BN statistics
            self.teacher.load_state_dict(self._teacher_buffers)
            self.teacher.eval()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the frozen teacher stays out of the checkpoints (ImageNet's ResNet-34 would add 87 MB to each):
        # a resumed run loads it again from where it came from (its checkpoint, the cache), the same weights
        if self.teacher is not None:
            checkpoint["state_dict"] = {
                k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")
            }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.teacher is not None:  # the teacher as loaded, so that the strict load finds every key
            state = checkpoint["state_dict"]
            state.update(
                {f"teacher.{k}": v for k, v in self.teacher.state_dict().items() if f"teacher.{k}" not in state}
            )

    def init_modules(self) -> list[nn.Module]:
        return self.terms[self.phase].init_modules(self.student)

    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)

    def training_step(self, batch, batch_idx: int):
        # (x, y, index, view) when the augmentation draws enumerable views (kdlab.data.base.TrainViews),
        # (x, y, index, view or None, x_strong) with data.strong_view
        self._views = batch[3] if len(batch) > 3 else None
        self._strong = batch[4] if len(batch) > 4 else None
        try:
            return super().training_step(batch, batch_idx)
        finally:
            self._views = self._strong = None

    def optimize(self, step: StepLosses) -> None:
        """DOT's update (manual optimisation): the distillation terms' gradient, then the task
        terms', each with its own momentum, as the authors' trainer (mdistiller's ``DOT.train_iter``)."""
        opt = self.optimizers()
        if self.phase is not None:  # an initialisation phase: plain SGD on its loss
            opt.zero_grad()
            self.manual_backward(step.loss)
            opt.step()
            return
        task = [step.terms[f"loss_{n}"] for n, t in self.terms.items() if t.task_loss]
        distill = [step.terms[f"loss_{n}"] for n, t in self.terms.items() if not t.task_loss]
        dot_step(opt, torch.stack(task).sum(), torch.stack(distill).sum(), self.manual_backward)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if not self.automatic_optimization and self.phase is None:  # DOT: the epoch's scheduler step by hand
            scheduler = self.lr_schedulers()
            if scheduler is not None:
                scheduler.step()

    def step_outputs(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> StepOutputs:
        """Student forward (with grad) and teacher forward (without), with their taps; the teacher's
        logits from the teacher-output cache when it is on (training steps only)."""
        logits, dist_logits = split_heads(self.student(x))
        feats = self.student_taps.pop()
        out = StepOutputs(
            logits, y, student_feats=feats, index=index, epoch=self.current_epoch, student_dist_logits=dist_logits
        )
        strong = self._strong if self.reads_strong_view and self.training and self.phase is None else None
        if strong is not None:  # the student on the strong view (MLKD), its taps dropped
            out.student_logits_strong = split_heads(self.student(strong))[0]
            self.student_taps.pop()
        if self.teacher is not None:
            cache = self.teacher_outputs
            if cache is not None and cache.active and index is not None and self.training and self.phase is None:
                out.teacher_logits = cache.logits(self.teacher, x, index, self._views)
            else:
                with torch.no_grad():
                    out.teacher_logits = self.teacher(x)
            out.teacher_feats = self.teacher_taps.pop()
            if strong is not None:
                with torch.no_grad():
                    out.teacher_logits_strong = self.teacher(strong)
                self.teacher_taps.pop()
        return out

    def losses(self, x: Tensor, y: Tensor, index: Tensor | None) -> StepLosses:
        out = self.step_outputs(x, y, index)
        if self.phase is not None:
            terms = {f"loss_{self.phase}": self.terms[self.phase].init_loss(out)}
        else:
            terms = {f"loss_{name}": term(out) for name, term in self.terms.items()}
        logged = {"acc": batch_accuracy(out.student_logits, y)}
        for name, term in self.terms.items():  # CTKD's learnt temperature: train/temperature_<term>
            curriculum = getattr(term, "curriculum", None)
            if curriculum is not None and curriculum.last is not None:
                logged[f"temperature_{name}"] = curriculum.last
        return StepLosses(torch.stack(list(terms.values())).sum(), terms, logged)

    def outputs(self, x: Tensor) -> dict[str, Tensor]:
        logits = self.student(x)
        self.student_taps.pop()
        return {STUDENT: logits}

    def configure_optimizers(self):
        if self.phase is not None:  # SGD on what the phase trains, no schedule (RepDistiller's init)
            p = self.terms[self.phase].init_phase()
            params = list({id(q): q for m in self.init_modules() for q in m.parameters() if q.requires_grad}.values())
            return torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
        # the student and the terms' learnable parts; the frozen teacher has none to give
        return lightning_optimization(self.parameters(), self.optimizer_factory, self.scheduler_factory)
