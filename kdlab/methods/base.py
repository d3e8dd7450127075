"""A distillation method is a dict of weighted terms (``conf/method/<method>.yaml``).

A term wraps one pure loss of ``kdlab.losses`` with its weight and hyper-parameters, says
which feature taps it reads, and owns the learnable parts its method needs. Strategies hand
every term the same ``StepOutputs`` and sum what the terms return, so any method runs under
any strategy (offline, online, self) without new code.

A strategy calls, in order: ``select_taps(student, teacher)`` (choose module paths),
``build(student_feats, teacher_feats)`` (learnable parts from probed shapes),
``prepare(train_targets)`` (data-dependent state, at fit start), then ``forward`` each step.

A term may declare an **initialisation phase** (``init_phase``): before the student's training,
the offline strategy trains ``init_modules(student)`` on ``init_loss`` for the phase's epochs
(RepDistiller's ``init`` for AB, FT and FSP), as a fit of its own: logged under
``init_<term>/``, checkpointed in ``init_<term>/checkpoints``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from kdlab.config import NonNegativeFloat, checked
from kdlab.errors import KdlabError
from kdlab.models import feature_stages


@dataclass
class StepOutputs:
    """What one training step gives the terms: logits, labels, sample indices, tapped features."""

    student_logits: Tensor  # (b, c)
    target: Tensor  # (b,)
    teacher_logits: Tensor | None = None  # (b, c), no grad
    student_feats: dict[str, Tensor] = field(default_factory=dict)  # tap path -> features
    teacher_feats: dict[str, Tensor] = field(default_factory=dict)
    index: Tensor | None = None  # (b,) position of each sample in the training split
    epoch: int = 0  # 0-based
    # both models' logits on the strong view of the same samples (data.strong_view, for terms that
    # read it: MLKD), None otherwise
    student_logits_strong: Tensor | None = None  # (b, c)
    teacher_logits_strong: Tensor | None = None  # (b, c), no grad
    student_dist_logits: Tensor | None = None  # (b, c) a DeiT student's distillation-token head (training)


@dataclass(frozen=True)
class InitPhase:
    """A phase a term trains before the student's: ``epochs`` of SGD (``lr``, ``momentum``,
    ``weight_decay``, no schedule) on the term's ``init_loss``, as RepDistiller's ``init``."""

    epochs: int
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4


def feature_modules(model: nn.Module) -> list[nn.Module]:
    """The model's children except its classifier (RepDistiller's ``get_feat_modules``)."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    return [m for m in model.children() if m is not head]


class Term(nn.Module):
    """One weighted term. Subclasses implement ``loss``; ``forward`` returns it already weighted."""

    needs_teacher: bool = True
    #: the term reads ``StepOutputs.*_logits_strong``: the strategy runs both models on the strong view
    #: of each batch too (``data.strong_view=true``; MLKD)
    reads_strong_view: bool = False
    #: the term reads ``StepOutputs.student_dist_logits``: the student is a DeiT model with a
    #: distillation token, trained with its two heads apart (``set_distilled_training(True)``)
    distillation_token: bool = False
    #: the task loss (cross-entropy with the labels) of DOT's split: its gradient gets the task
    #: momentum, every other term's the distillation momentum (``kdlab.optim.DOT``)
    task_loss: bool = False
    #: the reference trains with the teacher in train mode (its BatchNorms normalise with batch
    #: statistics; OFD). The strategy does so and restores the teacher's running statistics after.
    teacher_train_mode: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:  # arguments are checked against their types, from Python as from a config
            cls.__init__ = checked(cls.__init__)

    def __init__(self, weight: NonNegativeFloat = 1.0):
        super().__init__()
        self.weight = float(weight)
        self.student_taps: list[str] = []
        self.teacher_taps: list[str] = []

    @property
    def teacher_logits_only(self) -> bool:
        """Whether the teacher's eval-mode logits are all this term reads of it (no teacher taps, no
        train mode), once ``select_taps`` has run: then they may come from the teacher-output cache
        (``kdlab.teacher_outputs``) instead of a forward pass of the teacher."""
        return not self.teacher_taps and not self.teacher_train_mode

    def select_taps(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Choose the module paths to tap (feature terms). Default: none."""

    def build(self, student_feats: dict[str, Tensor], teacher_feats: dict[str, Tensor]) -> None:
        """Create learnable parts from probed feature shapes (regressors, embeddings). Default: none."""

    def prepare(self, train_targets: Tensor) -> None:
        """Set up state that depends on the training data (memory banks). Default: none."""

    def loss(self, out: StepOutputs) -> Tensor:
        raise NotImplementedError

    def init_phase(self) -> InitPhase | None:
        """The phase this term trains before the student's training, if any. Default: none."""
        return None

    def deployable(self, student: nn.Module, teacher: nn.Module | None, input_shape: Sequence[int]) -> nn.Module | None:
        """The model that is deployed instead of ``student`` once this term is built, which the
        strategy then trains, validates and exports (SimKD: the student, its projector and the
        teacher's classifier), for inputs of ``input_shape`` (no batch dimension). It carries
        ``kdlab_arch`` and ``kdlab_kwargs``, which rebuild it (``kdlab.models.create_model``).
        Default: None, the student itself."""
        return None

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        """What the initialisation phase trains (the term's connectors, the student's feature
        modules); everything else stays frozen and, unless listed here, in eval mode."""
        return [self]

    def init_loss(self, out: StepOutputs) -> Tensor:
        """The (unweighted) loss of the initialisation phase."""
        raise NotImplementedError

    def forward(self, out: StepOutputs) -> Tensor:
        return self.weight * self.loss(out)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


def last_pairs(student_stages: list[str], teacher_stages: list[str], given: tuple[int, int]) -> tuple[list, list]:
    """The last min(n_student, n_teacher) stages of each model. A side whose taps are given
    explicitly arrives with no stages and counts as its ``given`` number of taps. RepDistiller zips
    ``feat_s[1:-1]`` with ``feat_t[1:-1]``, of equal length on every pair of its benchmark; on
    those pairs the last-k pairing is the same."""
    k = min(len(student_stages) or given[0], len(teacher_stages) or given[1])
    return student_stages[len(student_stages) - k :], teacher_stages[len(teacher_stages) - k :]


class FeatureTerm(Term):
    """A term on tapped features of both models.

    ``student_taps`` / ``teacher_taps`` name module paths (or ``pre_logits``, the classifier's
    input); left null, the method picks among the models' declared feature stages
    (``default_taps``). Paired lists have equal length.
    """

    def __init__(
        self,
        weight: NonNegativeFloat = 1.0,
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
    ):
        super().__init__(weight)
        self.student_taps = list(student_taps or [])
        self.teacher_taps = list(teacher_taps or [])

    def default_taps(self, student_stages: list[str], teacher_stages: list[str]) -> tuple[list[str], list[str]]:
        raise NotImplementedError

    def last_stage_pairs(self, student_stages: list[str], teacher_stages: list[str]) -> tuple[list, list]:
        """``default_taps`` of the terms that pair stages: the last min(n_student, n_teacher) of each."""
        return last_pairs(student_stages, teacher_stages, (len(self.student_taps), len(self.teacher_taps)))

    def select_taps(self, student: nn.Module, teacher: nn.Module | None) -> None:
        if not self.student_taps or not self.teacher_taps:
            s_stages = feature_stages(student, "student") if not self.student_taps else []
            t_stages = feature_stages(teacher, "teacher") if not self.teacher_taps else []
            s_default, t_default = self.default_taps(s_stages, t_stages)
            self.student_taps = self.student_taps or s_default
            self.teacher_taps = self.teacher_taps or t_default
        if len(self.student_taps) != len(self.teacher_taps):
            raise KdlabError(
                f"{type(self).__name__} pairs student taps {self.student_taps} with teacher taps "
                f"{self.teacher_taps}: give as many of each"
            )

    def pairs(self, out: StepOutputs) -> list[tuple[Tensor, Tensor]]:
        """(student, teacher) feature pairs of this step, in tap order."""
        return [(out.student_feats[s], out.teacher_feats[t]) for s, t in zip(self.student_taps, self.teacher_taps)]

    def extra_repr(self) -> str:
        return f"weight={self.weight}, student_taps={self.student_taps}, teacher_taps={self.teacher_taps}"
