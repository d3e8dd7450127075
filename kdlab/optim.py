"""Optimizers for distillation: DOT, the Distillation-Oriented Trainer.

DOT: A Distillation-Oriented Trainer (Zhao, Cui, Song & Liang, ICCV 2023). SGD whose momentum
is kept apart for the task loss's gradient (momentum ``m - delta``) and for the distillation
loss's gradient (``m + delta``): the distillation loss, optimised with the larger momentum,
dominates the student's optimisation. One training step needs two backward passes:

    optimizer.zero_grad(set_to_none=True)
    distill_loss.backward(retain_graph=True)
    optimizer.step_kd()            # records the distillation gradients
    optimizer.zero_grad(set_to_none=True)
    task_loss.backward()
    optimizer.step()               # both momenta updated, the parameters moved

``dot_step`` runs this sequence (with Lightning's ``manual_backward`` as the backward).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from kdlab.errors import KdlabError

#: the authors' default (mdistiller/engine/cfg.py ``CFG.SOLVER.DOT.DELTA``; their CIFAR-100
#: configs keep it, their ImageNet configs set 0.09)
DEFAULT_DELTA = 0.075


class DOT(torch.optim.Optimizer):
    """DOT: A Distillation-Oriented Trainer (Zhao, Cui, Song & Liang, ICCV 2023).

    SGD with two momentum buffers per parameter, exactly as the authors' optimizer
    (mdistiller/engine/dot.py ``DistillationOrientedTrainer``) built by their trainer
    (mdistiller/engine/trainer.py ``DOT.init_optimizer``): ``m_task = momentum - delta``,
    ``m_kd = momentum + delta``. ``step_kd()`` after the distillation loss's backward records
    its gradient ``k``; ``step()`` after the task loss's backward reads the task gradient ``g``
    and moves each parameter ``p`` (weight decay ``wd``, dampening ``d``) by

    - ``g`` and ``k`` (both losses reach ``p``): ``b_task = m_task * b_task + (1 - d) * (g + wd * p)``,
      ``b_kd = m_kd * b_kd + (1 - d) * k``; weight decay goes with the task gradient only;
    - ``g`` only: ``b_task = (m_task + m_kd) / 2 * b_task + (1 - d) * (g + wd * p)``;
    - ``k`` only: ``b_kd = (m_task + m_kd) / 2 * b_kd + (1 - d) * (k + wd * p)``;

    then ``p -= lr * b_task`` and ``p -= lr * b_kd`` (in this order, each buffer that was updated).
    Quirks of the authors' code, kept:

    - a buffer's first value is the gradient itself (``clone``, no dampening, as torch's SGD), and
      a parameter reached by the distillation loss only starts its buffer from ``k`` *without*
      weight decay (their weight decay sits in the branch after the first-step test), where a
      task-only parameter's first value is ``g + wd * p``;
    - with ``m_task == 0`` (``delta == momentum``) no task buffer is kept at all, also for
      task-only parameters (their ``if momentum != 0`` wraps the task momentum); the
      distillation buffer is always kept.

    With ``delta = 0`` this is SGD with momentum on the summed loss (the two buffers add up to
    SGD's) as long as the losses reaching each parameter stay the same from step to step (KD: both
    reach every student parameter) and, with weight decay, no parameter is reached by the
    distillation loss only (the first-step quirk above). A buffer whose loss does not reach its
    parameter at a step is neither decayed nor applied, where SGD's one buffer would carry on.
    Parameters without either gradient are left alone.

    The authors assert one parameter group; here each group is stepped with its own ``lr``,
    ``momentum``, ``delta``, ``weight_decay`` and ``dampening`` (read at every step, so LR
    schedulers work), which for one group is their optimizer. All state lives in ``self.state``
    under the authors' keys, ``momentum_buffer`` (task) and ``momentum_kd_buffer``
    (distillation), plus ``kd_grad``, the distillation gradient recorded by ``step_kd`` (a copy,
    so any ``zero_grad`` is safe) until ``step`` uses it: ``state_dict``/``load_state_dict``
    round-trip and move with the parameters.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        delta: float = DEFAULT_DELTA,
        weight_decay: float = 0.0,
        dampening: float = 0.0,
    ):
        defaults = dict(lr=lr, momentum=momentum, delta=delta, weight_decay=weight_decay, dampening=dampening)
        check_hyperparameters(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        check_hyperparameters(self.param_groups[-1])

    @torch.no_grad()
    def step_kd(self, closure: Callable[[], Any] | None = None) -> Any:
        """Record the distillation loss's gradient of every parameter that has one (call it after
        the distillation loss's backward). Any gradient recorded before and not yet used by
        ``step`` is forgotten, as the authors' ``step_kd`` replaces its lists."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state:
                    state.pop("kd_grad", None)
                if p.grad is not None:
                    self.state[p]["kd_grad"] = p.grad.detach().clone()
        return loss

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update both momenta and the parameters from the task gradients now in ``.grad`` and the
        distillation gradients recorded by ``step_kd`` (none: every parameter is task-only)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, damp = group["lr"], group["weight_decay"], group["dampening"]
            # computed as the authors' trainer and dot() do, to the last bit
            m_task = group["momentum"] - group["delta"]
            m_kd = group["momentum"] + group["delta"]
            m_one = (m_kd + m_task) / 2.0  # a parameter that only one of the losses reaches
            for p in group["params"]:
                state = self.state.get(p)
                kd_grad = state.pop("kd_grad", None) if state else None
                if p.grad is not None:  # the task gradient
                    d_p = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                    if m_task != 0:
                        buf = self.state[p].get("momentum_buffer")
                        if buf is None:
                            buf = self.state[p]["momentum_buffer"] = d_p.detach().clone()
                        else:
                            buf.mul_(m_task if kd_grad is not None else m_one).add_(d_p, alpha=1 - damp)
                        d_p = buf
                    p.add_(d_p, alpha=-lr)
                if kd_grad is not None:
                    buf = self.state[p].get("momentum_kd_buffer")
                    if buf is None:  # no weight decay on the first step (the authors' quirk)
                        buf = self.state[p]["momentum_kd_buffer"] = kd_grad
                    elif p.grad is not None:
                        buf.mul_(m_kd).add_(kd_grad, alpha=1 - damp)
                    else:  # only the distillation loss reaches p: it carries the weight decay
                        d_p = kd_grad if wd == 0 else kd_grad.add(p, alpha=wd)
                        buf.mul_(m_one).add_(d_p, alpha=1 - damp)
                    p.add_(buf, alpha=-lr)
        return loss


def steps_apart(optimizer: Any) -> bool:
    """Whether ``optimizer`` (a class, or a factory of one: ``functools.partial`` from ``_partial_:
    true``) steps the distillation gradient apart from the task gradient (``step_kd``: ``DOT``), which
    the offline strategy then does with two backward passes (``dot_step``)."""
    target = getattr(optimizer, "func", optimizer)
    return isinstance(target, type) and callable(getattr(target, "step_kd", None))


def require_task_and_distillation(task_loss: dict[str, bool], optimizer: str) -> None:
    """One line unless the terms (name -> ``Term.task_loss``) hold both kinds DOT steps apart."""
    if set(task_loss.values()) != {True, False}:
        raise KdlabError(
            f"{optimizer} steps the task loss (cross-entropy) and the distillation terms apart; method.terms "
            f"{sorted(task_loss)} need both (e.g. method=kd), or use torch.optim.SGD"
        )


def check_hyperparameters(group: dict[str, Any]) -> None:
    """One line for a hyperparameter the authors' optimizer refuses (negative lr, weight decay,
    task or distillation momentum)."""
    lr, momentum, delta, wd = group["lr"], group["momentum"], group["delta"], group["weight_decay"]
    if not isinstance(lr, Tensor) and lr < 0:
        raise KdlabError(f"DOT needs lr >= 0, got {lr}")
    if wd < 0:
        raise KdlabError(f"DOT needs weight_decay >= 0, got {wd}")
    if momentum - delta < 0 or momentum + delta < 0:
        raise KdlabError(
            f"DOT's momenta momentum - delta and momentum + delta must be >= 0, got momentum={momentum}, "
            f"delta={delta}; use |delta| <= momentum (the authors: momentum 0.9, delta {DEFAULT_DELTA})"
        )


def dot_step(
    optimizer: torch.optim.Optimizer,
    task_loss: Tensor,
    distill_loss: Tensor,
    backward: Callable[..., Any] | None = None,
) -> None:
    """One DOT update, the authors' sequence (mdistiller/engine/trainer.py ``DOT.train_iter``):
    zero the gradients, backpropagate ``distill_loss`` keeping the graph, ``step_kd``, zero the
    gradients, backpropagate ``task_loss``, ``step``.

    ``optimizer`` is a ``DOT`` or Lightning's wrapper of one (``self.optimizers()`` in a
    LightningModule with ``automatic_optimization = False``: its ``step`` goes through the
    precision plugin and counts the global step). ``backward(loss, retain_graph=...)`` does a
    backward pass: ``self.manual_backward`` in a LightningModule, ``Tensor.backward`` when None.
    Float16 mixed precision (a gradient scaler) is refused: the scaler would unscale the task
    gradients only.
    """
    inner = getattr(optimizer, "optimizer", optimizer)  # Lightning's LightningOptimizer wraps it
    if not isinstance(inner, DOT):
        raise KdlabError(f"dot_step needs a kdlab.optim.DOT optimizer, got {type(inner).__name__}")
    precision = getattr(getattr(optimizer, "_strategy", None), "precision_plugin", None)
    if getattr(precision, "scaler", None) is not None:
        raise KdlabError(
            "DOT does not work with a gradient scaler (trainer.precision=16-mixed): it would unscale the "
            "task gradients only; use trainer.precision=bf16-mixed or 32-true"
        )
    if backward is None:
        backward = Tensor.backward
    optimizer.zero_grad(set_to_none=True)
    backward(distill_loss, retain_graph=True)
    inner.step_kd()
    optimizer.zero_grad(set_to_none=True)
    backward(task_loss)
    optimizer.step()
