"""Online distillation: a cohort of peers trained together from scratch, teaching each other."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated, Literal

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from kdlab.config import Bound, NonNegativeInt
from kdlab.errors import KdlabError
from kdlab.methods import FeatureTerm, StepOutputs, Term
from kdlab.models import FeatureTaps
from kdlab.report.results import model_report
from kdlab.strategies.base import (
    DistillationModule,
    Fitted,
    StepLosses,
    Strategy,
    Trained,
    batch_accuracy,
    no_init_phases,
    optimization,
    probe,
)

if TYPE_CHECKING:
    from kdlab.context import RunContext

MODES = ("mutual", "ensemble")
ENSEMBLE = "ensemble"


@dataclass
class Online(Strategy):
    """Peers from ``peers``: a count of copies of the ``student`` preset (different inits), or one
    override of it per peer (``[{}, {arch: cnn1d}]``: heterogeneous cohorts). ``mode`` and
    ``deploy`` as ``OnlineDistillation``. Reports every peer (``peers``) and the one deployed."""

    name = "online"
    peers: Annotated[int, Bound(2)] | list[dict] = 2
    mode: Literal["mutual", "ensemble"] = "mutual"
    deploy: Literal["best"] | NonNegativeInt = "best"

    def peer_specs(self, student: DictConfig) -> list[DictConfig]:
        """The preset of each peer: ``student`` with the peer's overrides."""
        overrides = [{}] * self.peers if isinstance(self.peers, int) else self.peers
        base = OmegaConf.to_container(student, resolve=True)
        return [OmegaConf.create({**base, **o}) for o in overrides]

    def fit(self, run: RunContext) -> Fitted:
        self.specs = self.peer_specs(run.cfg.student)
        models = [run.model(spec) for spec in self.specs]
        optimizers, schedulers = zip(*(run.optimization(spec) for spec in self.specs))
        self.module = OnlineDistillation(
            models,
            no_init_phases(run.terms(), "online"),
            list(optimizers),
            run.data.num_classes,
            run.data.input_shape,
            list(schedulers),
            self.mode,
            self.deploy,
        )
        trainer = run.fit(self.module)
        d = self.module.deployed_index()
        student = Trained(self.module.peers[d], self.specs[d].arch, OmegaConf.to_container(self.specs[d].kwargs))
        return Fitted(student, None, self.module.best_val_accs()[d], trainer, checkpoint_prefix=f"peers.{d}.")

    def results(self, data) -> dict:
        best = self.module.best_val_accs()
        peers = [
            {"peer": i, **model_report(p, s.arch, data)[0], "val_acc_best": best[i]}
            for i, (p, s) in enumerate(zip(self.module.peers, self.specs))
        ]
        return {"peers": peers, "deployed_peer": self.module.deployed_index(), "mode": self.mode}


class OnlineDistillation(DistillationModule):
    """``models``: k >= 2 peers (architectures may differ), each with its own optimizer, trained at once.

    Every peer gets the terms of ``method``: terms without a teacher (cross-entropy) on its
    own outputs; terms with a teacher against
    - ``mode="mutual"``: each other peer in turn, averaged -- Deep Mutual Learning (Zhang,
      Xiang, Hospedales & Lu, CVPR 2018);
    - ``mode="ensemble"``: the cohort's averaged logits -- the naive ensemble teacher of
      KDCL (Guo et al., CVPR 2020).
    Teachers' outputs and features are detached: a peer learns from the others' predictions
    but sends no gradient through them. Feature terms (mutual mode) get their own copy, and
    learnable parts, per (student peer, teacher peer) pair.

    ``deploy``: the peer reported as the student, ``"best"`` (highest validation accuracy)
    or an index. Logged per epoch: ``train/loss``, ``train/loss_<term>`` (mean over peers),
    ``train/peer<i>/...``, ``val/peer<i>/acc``, and ``val/acc`` (the best peer's).
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        terms: Mapping[str, Term],
        optimizers: Sequence[Callable[..., torch.optim.Optimizer]],
        num_classes: int,
        input_shape: Sequence[int],
        schedulers: Sequence[Callable | None] | None = None,
        mode: str = "mutual",
        deploy: str | int = "best",
    ):
        k = len(models)
        super().__init__(num_classes, [f"peer{i}" for i in range(k)])
        self.automatic_optimization = False  # one optimizer per peer
        if k < 2:
            raise KdlabError(f"online distillation needs at least 2 peers, got {k}; set strategy.peers")
        if mode not in MODES:
            raise KdlabError(f"strategy.mode={mode}: use one of {', '.join(MODES)}")
        if deploy != "best" and not (isinstance(deploy, int) and 0 <= deploy < k):
            raise KdlabError(f"strategy.deploy={deploy}: use best or a peer index in 0..{k - 1}")
        if mode == ENSEMBLE and any(isinstance(t, FeatureTerm) for t in terms.values()):
            raise KdlabError("feature terms need one teacher model: use strategy.mode=mutual with them")
        self.peers = nn.ModuleList(models)
        self.mode, self.deploy = mode, deploy
        self.optimizer_factories = list(optimizers)
        self.scheduler_factories = list(schedulers or [None] * k)
        self.teacher_terms = [name for name, t in terms.items() if t.needs_teacher]
        # objectives[i][source]: peer i's copy of the terms against one teacher source
        self.objectives = nn.ModuleList(
            nn.ModuleDict({str(s): nn.ModuleDict(copy.deepcopy(dict(terms))) for s in self.sources(i)})
            for i in range(k)
        )
        paths: list[list[str]] = [[] for _ in range(k)]
        for i in range(k):
            for s, objective in self.objectives[i].items():
                for term in objective.values():
                    term.select_taps(self.peers[i], None if s == ENSEMBLE else self.peers[int(s)])
                    paths[i] += term.student_taps
                    if s != ENSEMBLE:
                        paths[int(s)] += term.teacher_taps
        self.taps = [FeatureTaps(p, paths[i], f"peer {i}") for i, p in enumerate(self.peers)]
        feats = [probe(p, self.taps[i], input_shape)[1] for i, p in enumerate(self.peers)]
        for i in range(k):
            for s, objective in self.objectives[i].items():
                for term in objective.values():
                    term.build(feats[i], {} if s == ENSEMBLE else feats[int(s)])

    def sources(self, i: int) -> list[str]:
        return [ENSEMBLE] if self.mode == ENSEMBLE else [str(j) for j in range(len(self.peers)) if j != i]

    def forward(self, x: Tensor) -> Tensor:
        return self.peers[self.deployed_index()](x)

    def peer_losses(self, x: Tensor, y: Tensor, index: Tensor | None):
        """(each peer's total loss, each peer's named weighted terms, each peer's logits)."""
        logits = [peer(x) for peer in self.peers]
        feats = [taps.pop() for taps in self.taps]
        cohort = torch.stack(logits).mean(0).detach()  # (b, c): the ensemble teacher
        totals, parts = [], []
        for i in range(len(self.peers)):
            own = StepOutputs(logits[i], y, student_feats=feats[i], index=index, epoch=self.current_epoch)
            losses: dict[str, Tensor] = {}
            for name in self.objectives[i][self.sources(i)[0]]:
                per_source = []
                for s in self.sources(i) if name in self.teacher_terms else self.sources(i)[:1]:
                    out = own
                    if name in self.teacher_terms:
                        t_logits = cohort if s == ENSEMBLE else logits[int(s)].detach()
                        t_feats = {} if s == ENSEMBLE else {p: f.detach() for p, f in feats[int(s)].items()}
                        out = replace(own, teacher_logits=t_logits, teacher_feats=t_feats)
                    per_source.append(self.objectives[i][s][name](out))
                losses[f"loss_{name}"] = torch.stack(per_source).mean()
            totals.append(torch.stack(list(losses.values())).sum())
            parts.append(losses)
        return totals, parts, logits

    def losses(self, x: Tensor, y: Tensor, index: Tensor | None) -> StepLosses:
        totals, parts, logits = self.peer_losses(x, y, index)
        terms = {name: torch.stack([p[name] for p in parts]).mean() for name in parts[0]}  # mean over peers
        logged = {}
        for i, p in enumerate(parts):
            logged.update({f"peer{i}/{k}": v for k, v in p.items()})
            logged[f"peer{i}/acc"] = batch_accuracy(logits[i], y)
        # the sum: each peer's loss reaches only its own parameters
        return StepLosses(torch.stack(totals).sum(), terms, logged)

    def optimize(self, step: StepLosses) -> None:
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for opt in optimizers:
            opt.zero_grad()
        self.manual_backward(step.loss)
        for opt in optimizers:
            opt.step()

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        schedulers = self.lr_schedulers()
        for sch in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            sch.step()

    def outputs(self, x: Tensor) -> dict[str, Tensor]:
        logits = {f"peer{i}": peer(x) for i, peer in enumerate(self.peers)}
        for taps in self.taps:
            taps.pop()
        return logits

    def reported_acc(self, accs: dict[str, Tensor]) -> Tensor:
        return torch.stack(list(accs.values())).max()  # the best peer's

    def reported_best(self) -> Tensor:
        return torch.tensor(max(self.best_val_accs()))

    def best_val_accs(self) -> list[float]:
        return [round(m.compute().item(), 6) if m.update_count else float("-inf") for m in self.val_acc_best.values()]

    def deployed_index(self) -> int:
        if self.deploy != "best":
            return int(self.deploy)
        accs = [m.compute().item() if m.update_count else 0.0 for m in self.val_acc_best.values()]
        return max(range(len(accs)), key=accs.__getitem__)

    def configure_optimizers(self):
        optimizers, schedulers = [], []
        for i, peer in enumerate(self.peers):
            params = [*peer.parameters()]
            for objective in self.objectives[i].values():  # the peer's learnable term parts
                params += [*objective.parameters()]
            opt, sch = optimization(params, self.optimizer_factories[i], self.scheduler_factories[i])
            optimizers.append(opt)
            if sch is not None:
                schedulers.append(sch)
        return optimizers, schedulers
