"""Several teachers acting as one (multi-teacher offline distillation)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.errors import KdlabError


class TeacherEnsemble(nn.Module):
    """Members' predictions combined into one set of logits, so every response method works
    unchanged: ``combine="probs"`` returns log(sum_i w_i softmax(z_i)) (the weighted average of
    the members' distributions, whose softmax is that average), ``"logits"`` the weighted
    average of the logits. ``weights`` default to uniform and are normalised to sum 1.
    Feature methods can tap a member by path (``members.0.conv3``)."""

    def __init__(
        self,
        members: Sequence[nn.Module],
        weights: Sequence[float] | None = None,
        combine: str = "probs",
        arch: str = "ensemble",
    ):
        super().__init__()
        if len(members) < 2:
            raise KdlabError(f"a teacher ensemble needs at least 2 members, got {len(members)}")
        if combine not in ("probs", "logits"):
            raise KdlabError(f"teacher.ensemble.combine={combine}: use probs or logits")
        w = torch.ones(len(members)) if weights is None else torch.as_tensor(list(weights), dtype=torch.float32)
        if w.shape != (len(members),) or (w < 0).any() or w.sum() <= 0:
            raise KdlabError(f"teacher.ensemble.weights={list(weights)}: give {len(members)} non-negative numbers")
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", w / w.sum())
        self.combine, self.kdlab_arch = combine, arch

    def forward(self, x: Tensor) -> Tensor:
        logits = torch.stack([m(x) for m in self.members])  # (k, b, c)
        w = self.weights.to(logits.dtype).view(-1, 1, 1)
        if self.combine == "logits":
            return (w * logits).sum(0)
        return torch.logsumexp(F.log_softmax(logits, -1) + w.log(), dim=0)  # log sum_i w_i p_i
