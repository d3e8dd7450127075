"""Relation-based terms: the student matches how the teacher relates the samples of a batch
(or, for CRD, of the whole training set through a memory bank)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.config import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from kdlab.errors import KdlabError
from kdlab.losses import crd_loss, pkt_loss, rkd_loss, sp_loss
from kdlab.losses.relation import cc_kernel_loss, cc_loss
from kdlab.methods.base import FeatureTerm, StepOutputs
from kdlab.models import PRE_LOGITS


class SP(FeatureTerm):
    """Tung & Mori (2019): batch similarity (Gram) matrices of the last feature stage."""

    def __init__(
        self,
        weight: NonNegativeFloat = 3000.0,
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
    ):
        super().__init__(weight, student_taps, teacher_taps)

    def default_taps(self, student_stages, teacher_stages):
        return student_stages[-1:], teacher_stages[-1:]

    def loss(self, out: StepOutputs) -> Tensor:
        return sum(sp_loss(fs, ft) for fs, ft in self.pairs(out))


class EmbeddingTerm(FeatureTerm):
    """A term on the penultimate embeddings (the classifier's inputs) unless told otherwise."""

    def default_taps(self, student_stages, teacher_stages):
        return [PRE_LOGITS], [PRE_LOGITS]

    def select_taps(self, student, teacher):  # no declared stages needed for pre_logits
        self.student_taps = self.student_taps or [PRE_LOGITS]
        self.teacher_taps = self.teacher_taps or [PRE_LOGITS]
        super().select_taps(student, teacher)


class PKT(EmbeddingTerm):
    """Passalis & Tefas (2018): conditional probability distributions of cosine similarities."""

    def __init__(
        self,
        weight: NonNegativeFloat = 30000.0,
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
    ):
        super().__init__(weight, student_taps, teacher_taps)

    def loss(self, out: StepOutputs) -> Tensor:
        return sum(pkt_loss(fs, ft) for fs, ft in self.pairs(out))


class RKD(EmbeddingTerm):
    """Park et al. (2019): distance- and angle-wise relations of the embeddings."""

    def __init__(
        self,
        weight: NonNegativeFloat = 1.0,
        distance_weight: NonNegativeFloat = 25.0,
        angle_weight: NonNegativeFloat = 50.0,
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
    ):
        super().__init__(weight, student_taps, teacher_taps)
        self.distance_weight, self.angle_weight = distance_weight, angle_weight

    def loss(self, out: StepOutputs) -> Tensor:
        return sum(rkd_loss(fs, ft, self.distance_weight, self.angle_weight) for fs, ft in self.pairs(out))


class Embed(nn.Module):
    """CRD's embedding head: flatten -> linear -> L2 normalisation."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


def world() -> tuple[int, int]:
    """(number of processes, this one's rank) of the initialised process group; (1, 0) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_global_batch(t: Tensor) -> Tensor:
    """Every process's ``(b, ...)`` rows as the ``(world * b, ...)`` global batch, in the order one
    process would have drawn it: with DistributedSampler, rank r's i-th sample is the global batch's
    sample ``i * world + r``. Not differentiable (for indices, labels and detached embeddings);
    ``t`` itself when there is no process group."""
    w, _ = world()
    if w == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(w)]
    dist.all_gather(parts, t.contiguous())
    return torch.stack(parts, 1).flatten(0, 1)  # (b, w, ...) -> (b * w, ...)


def own_rows(t: Tensor) -> Tensor:
    """This process's rows of a global batch built by ``gather_global_batch``."""
    w, r = world()
    return t if w == 1 else t.unflatten(0, (-1, w))[:, r]


class ContrastMemory(nn.Module):
    """CRD's memory bank: one slowly updated embedding per training sample and per model.

    Scores of a view are exp(<memory of the other model, embedding> / T) / Z for the positive
    and K negatives; Z is fixed from the first batch (mean score times ``n_data``), as the
    reference code. After scoring, the positives' memories move towards the new embeddings
    (``momentum``) and are re-normalised; the move is applied when the next step starts
    (after this step's backward, which needs the old memory), so every step scores against
    the same memory as in the reference code.

    Under DDP every process holds the whole bank and moves it with the global batch's embeddings
    (gathered from all processes), and Z is the global batch's mean: the banks stay identical on
    every rank and equal to the one a single process sees with the global batch (RepDistiller's).
    """

    def __init__(self, dim: int, n_data: int, nce_t: float, momentum: float):
        super().__init__()
        self.n_data, self.nce_t, self.momentum = n_data, nce_t, momentum
        stdv = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_s", torch.rand(n_data, dim) * 2 * stdv - stdv)
        self.register_buffer("memory_t", torch.rand(n_data, dim) * 2 * stdv - stdv)
        self.register_buffer("z", torch.full((2,), -1.0))  # (Z_student, Z_teacher); < 0: not set yet
        self._pending: tuple[Tensor, Tensor, Tensor] | None = None  # last step's (index, v_s, v_t)
        # a checkpoint holds the memory with the last step's move applied (a resumed run goes on from it)
        self.register_state_dict_pre_hook(lambda module, prefix, keep_vars: module._apply_pending_update())

    def forward(self, v_s: Tensor, v_t: Tensor, index: Tensor, sample: Tensor) -> tuple[Tensor, Tensor]:
        """v_*: (b, d) embeddings; index: (b,) their samples; sample: (b, 1 + K), positives first."""
        self._apply_pending_update()
        # <memory[sample[i, k]], v[i]> as one (b, n) product and a gather: far cheaper than
        # gathering (b, 1 + K, d) memory rows when K is a sizeable fraction of n
        scores_s = torch.exp((v_s @ self.memory_t.t().to(v_s.dtype)).gather(1, sample) / self.nce_t)  # (b, 1+K)
        scores_t = torch.exp((v_t @ self.memory_s.t().to(v_t.dtype)).gather(1, sample) / self.nce_t)
        if self.z[0] < 0:
            z = torch.stack([scores_s.mean(), scores_t.mean()]).detach()
            w, _ = world()
            if w > 1:  # the global batch's mean (every rank's batch has the same size)
                dist.all_reduce(z)
                z = z / w
            self.z.copy_(z * self.n_data)
        # the memories feed this step's backward: move them at the start of the next step, on every
        # rank with every rank's samples
        self._pending = tuple(gather_global_batch(t) for t in (index, v_s.detach().float(), v_t.detach().float()))
        return scores_s / self.z[0], scores_t / self.z[1]

    @torch.no_grad()
    def _apply_pending_update(self) -> None:
        if self._pending is None:
            return
        index, v_s, v_t = self._pending
        for memory, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
            moved = memory[index] * self.momentum + v * (1 - self.momentum)
            memory.index_copy_(0, index, F.normalize(moved, dim=1))
        self._pending = None


class CRD(EmbeddingTerm):
    """Tian et al. (2020): contrastive representation distillation. Embedding heads on both
    models' penultimate features and a memory bank of every training sample; each step
    contrasts a sample's positive pair against ``nce_k`` negatives drawn from other classes
    (the reference code's 'exact' mode). Needs ``(x, y, index)`` batches."""

    def __init__(
        self,
        weight: NonNegativeFloat = 0.8,
        feat_dim: PositiveInt = 128,
        nce_k: PositiveInt = 16384,
        nce_t: PositiveFloat = 0.07,
        nce_m: Fraction = 0.5,
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
    ):
        super().__init__(weight, student_taps, teacher_taps)
        self.feat_dim, self.nce_k, self.nce_t, self.nce_m = feat_dim, nce_k, nce_t, nce_m
        self.memory: ContrastMemory | None = None

    def select_taps(self, student, teacher):
        super().select_taps(student, teacher)
        if len(self.student_taps) != 1:
            raise KdlabError(f"CRD contrasts one feature pair, got taps {self.student_taps} / {self.teacher_taps}")

    def build(self, student_feats, teacher_feats):
        s, t = student_feats[self.student_taps[0]], teacher_feats[self.teacher_taps[0]]
        self.embed_s = Embed(s[0].numel(), self.feat_dim)
        self.embed_t = Embed(t[0].numel(), self.feat_dim)

    def prepare(self, train_targets: Tensor) -> None:
        n = len(train_targets)
        if self.memory is None or self.memory.n_data != n:
            device = self.embed_s.linear.weight.device
            self.memory = ContrastMemory(self.feat_dim, n, self.nce_t, self.nce_m).to(device)
        self.register_buffer("targets", train_targets.to(self.memory.memory_s.device), persistent=False)

    def negatives(self, index: Tensor, target: Tensor) -> Tensor:
        """(b, 1 + K) sample indices: each row's own index, then K indices of other classes."""
        neg = torch.randint(0, len(self.targets), (len(index), self.nce_k), device=index.device)
        clash = self.targets[neg] == target[:, None]
        while clash.any():  # redraw same-class picks (few per round when classes are many)
            neg[clash] = torch.randint(0, len(self.targets), (int(clash.sum()),), device=index.device)
            clash = self.targets[neg] == target[:, None]
        return torch.cat([index[:, None], neg], 1)

    def loss(self, out: StepOutputs) -> Tensor:
        if self.memory is None or out.index is None:
            raise KdlabError("CRD needs its memory bank and sample indices: train it through a kdlab data module")
        ((fs, ft),) = self.pairs(out)
        v_s, v_t = self.embed_s(fs), self.embed_t(ft)
        # under DDP the negatives are drawn for the global batch and each rank keeps its own rows: as one
        # process with the global batch when the ranks' random streams agree (Lightning seeds every rank
        # alike), and negatives of other classes for this rank's samples whatever the streams
        sample = own_rows(self.negatives(gather_global_batch(out.index), gather_global_batch(out.target)))
        scores_s, scores_t = self.memory(v_s, v_t, out.index, sample)
        return crd_loss(scores_s, scores_t, self.memory.n_data)


class LinearEmbed(nn.Module):
    """RepDistiller's ``LinearEmbed``: flatten -> linear (no normalisation)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1))


class CC(EmbeddingTerm):
    """Peng et al. (2019): correlation congruence, as RepDistiller's ``--distill correlation``:
    learnable linear embeddings (``feat_dim``) of both models' penultimate features, both trained
    with the student, compared by RepDistiller's ``Correlation`` (``cc_loss``, the code of the CRD
    table's numbers) or, with ``kernel="gaussian"``, by the paper's Taylor-expanded Gaussian-RBF
    correlation matrices (``cc_kernel_loss``, ``gamma``, ``max_p``)."""

    def __init__(
        self,
        weight: NonNegativeFloat = 0.02,
        feat_dim: PositiveInt = 128,
        kernel: Literal["gaussian"] | None = None,
        gamma: PositiveFloat = 0.4,
        max_p: NonNegativeInt = 2,
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
    ):
        super().__init__(weight, student_taps, teacher_taps)
        self.feat_dim, self.kernel, self.gamma, self.max_p = feat_dim, kernel, gamma, max_p

    def select_taps(self, student, teacher):
        super().select_taps(student, teacher)
        if len(self.student_taps) != 1:
            raise KdlabError(f"CC embeds one feature pair, got taps {self.student_taps} / {self.teacher_taps}")

    def build(self, student_feats, teacher_feats):
        s, t = student_feats[self.student_taps[0]], teacher_feats[self.teacher_taps[0]]
        self.embed_s = LinearEmbed(s[0].numel(), self.feat_dim)
        self.embed_t = LinearEmbed(t[0].numel(), self.feat_dim)

    def loss(self, out: StepOutputs) -> Tensor:
        ((fs, ft),) = self.pairs(out)
        if self.kernel == "gaussian":
            return cc_kernel_loss(self.embed_s(fs), self.embed_t(ft), self.gamma, self.max_p)
        return cc_loss(self.embed_s(fs), self.embed_t(ft))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, feat_dim={self.feat_dim}"
