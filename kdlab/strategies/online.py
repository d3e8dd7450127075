"""Online distillation: a cohort of peers trained together from scratch, teaching each other."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from kdlab.distill import FeatureTerm, StepOutputs, Term
from kdlab.errors import KdlabError
from kdlab.models import FeatureTaps
from kdlab.strategies.base import RunningMeans, check_finite, optimization, prepare_terms, probe

MODES = ("mutual", "ensemble")
ENSEMBLE = "ensemble"


class OnlineDistillation(pl.LightningModule):
    """k >= 2 peers (architectures may differ), each with its own optimizer, trained at once.

    Every peer gets the terms of ``distill``: terms without a teacher (cross-entropy) on its
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

    name = "online"

    def __init__(
        self,
        peers: Sequence[nn.Module],
        terms: Mapping[str, Term],
        optimizers: Sequence[Callable[..., torch.optim.Optimizer]],
        num_classes: int,
        input_shape: Sequence[int],
        schedulers: Sequence[Callable | None] | None = None,
        mode: str = "mutual",
        deploy: str | int = "best",
    ):
        super().__init__()
        self.automatic_optimization = False  # one optimizer per peer
        k = len(peers)
        if k < 2:
            raise KdlabError(f"online distillation needs at least 2 peers, got {k}; set strategy.peers")
        if mode not in MODES:
            raise KdlabError(f"strategy.mode={mode}: use one of {', '.join(MODES)}")
        if deploy != "best" and not (isinstance(deploy, int) and 0 <= deploy < k):
            raise KdlabError(f"strategy.deploy={deploy}: use best or a peer index in 0..{k - 1}")
        if mode == ENSEMBLE and any(isinstance(t, FeatureTerm) for t in terms.values()):
            raise KdlabError("feature terms need one teacher model: use strategy.mode=mutual with them")
        self.peers = nn.ModuleList(peers)
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
        self.val_acc = nn.ModuleList(MulticlassAccuracy(num_classes, average="micro") for _ in range(k))
        self.val_acc_best = nn.ModuleList(MaxMetric() for _ in range(k))
        self.train_means, self.val_means = RunningMeans(), RunningMeans()

    def sources(self, i: int) -> list[str]:
        return [ENSEMBLE] if self.mode == ENSEMBLE else [str(j) for j in range(len(self.peers)) if j != i]

    def setup(self, stage: str) -> None:
        if stage == "fit":
            prepare_terms(
                self.trainer,
                (t for objective in self.objectives for ts in objective.values() for t in ts.values()),
            )

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

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, y, *rest = batch
        totals, parts, logits = self.peer_losses(x, y, rest[0] if rest else None)
        loss = torch.stack(totals).sum()  # each peer's loss reaches only its own parameters
        check_finite(
            loss,
            {f"peer{i}/{k}": v for i, p in enumerate(parts) for k, v in p.items()},
            self.current_epoch,
            self.global_step,
        )
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for opt in optimizers:
            opt.zero_grad()
        self.manual_backward(loss)
        for opt in optimizers:
            opt.step()
        logged = {"loss": loss}
        for name in parts[0]:
            logged[name] = torch.stack([p[name] for p in parts]).mean()
        for i, p in enumerate(parts):
            logged.update({f"peer{i}/{k}": v for k, v in p.items()})
            logged[f"peer{i}/acc"] = (logits[i].detach().argmax(-1) == y).float().mean()
        self.train_means.add(logged, len(y))
        return loss

    def on_train_epoch_end(self) -> None:
        self.log_dict({f"train/{k}": v for k, v in self.train_means.pop().items()}, sync_dist=True)
        schedulers = self.lr_schedulers()
        for sch in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            sch.step()

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        for i, peer in enumerate(self.peers):
            logits = peer(x)
            self.val_acc[i].update(logits, y)
            self.val_means.add({f"peer{i}/loss": F.cross_entropy(logits, y)}, len(y))
        for taps in self.taps:
            taps.pop()

    def on_validation_epoch_end(self) -> None:
        accs = [m.compute() for m in self.val_acc]
        for m in self.val_acc:
            m.reset()
        self.log_dict({f"val/{k}": v for k, v in self.val_means.pop().items()}, sync_dist=True)
        self.log_dict({f"val/peer{i}/acc": a for i, a in enumerate(accs)}, sync_dist=True)
        self.log("val/acc", torch.stack(accs).max(), prog_bar=True, sync_dist=True)
        if not self.trainer.sanity_checking:
            for best, acc in zip(self.val_acc_best, accs):
                best(acc)

    def best_val_accs(self) -> list[float]:
        return [round(m.compute().item(), 6) for m in self.val_acc_best]

    def deployed_index(self) -> int:
        if self.deploy != "best":
            return int(self.deploy)
        accs = [m.compute().item() if m.update_count else 0.0 for m in self.val_acc_best]
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
