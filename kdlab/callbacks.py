"""Lightning callbacks kdlab's trainer configs can list (``trainer.callbacks``)."""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import RichProgressBar
from torch import nn


class ChannelsLast(pl.Callback):
    """Puts the models' 4-D weights in channels_last memory format at the start of fitting: with
    convolutions under AMP on recent GPUs this avoids layout transposes. No-op for 1-D models."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if any(p.dim() == 4 for p in pl_module.parameters()):
            pl_module.to(memory_format=torch.channels_last)


log = logging.getLogger("kdlab")


def compile_or_eager(module: nn.Module, role: str, mode: str | None = None) -> None:
    """``module`` compiled in place (``torch.compile`` of its call; its parameters, state_dict keys
    and hooks unchanged). Compilation happens at the first call: if it fails there (no compiler,
    an unsupported operation, a backend error) the module runs eagerly from then on, after one line
    saying so. An error eager execution raises too (a wrong shape) is the model's, and is raised."""
    compiled = torch.compile(module._call_impl, mode=mode)
    state = {"compiled": True}

    def call(*args, **kwargs):
        if state["compiled"]:
            try:
                return compiled(*args, **kwargs)
            except Exception as e:  # torch._dynamo / inductor errors have many types
                state["compiled"] = False
                module._compiled_call_impl = None
                reason = (str(e).strip().splitlines() or [""])[0][:200]
                log.warning(f"torch.compile failed on the {role} ({type(e).__name__}: {reason}); it runs eagerly")
        return module._call_impl(*args, **kwargs)

    module._compiled_call_impl = call


class CompileModels(pl.Callback):
    """``compile.student`` / ``compile.teacher``: the training module's student(s) (``student``,
    online ``peers``) and offline ``teacher`` compiled before fitting (``compile_or_eager``)."""

    def __init__(self, student: bool = False, teacher: bool = False, mode: str | None = None):
        self.student, self.teacher, self.mode = student, teacher, mode
        self.done: set[int] = set()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        roles = []
        if self.student:
            roles += [("student", getattr(pl_module, "student", None))]
            roles += [(f"peer {i}", m) for i, m in enumerate(getattr(pl_module, "peers", None) or [])]
        if self.teacher:
            roles += [("teacher", getattr(pl_module, "teacher", None))]
        for role, module in roles:
            if isinstance(module, nn.Module) and id(module) not in self.done:
                compile_or_eager(module, role, self.mode)
                self.done.add(id(module))


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar without the logger's version number (``v_num``)."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
