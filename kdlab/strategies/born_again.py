"""Born-Again Networks: a student distilled from its own previous generation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from omegaconf import OmegaConf

from kdlab.config import Bound
from kdlab.methods import CrossEntropy
from kdlab.models.ensemble import TeacherEnsemble
from kdlab.report.results import model_report
from kdlab.strategies.base import Fitted, Strategy, Trained
from kdlab.strategies.offline import OfflineDistillation, train_offline

if TYPE_CHECKING:
    from kdlab.context import RunContext

log = logging.getLogger("kdlab")


@dataclass
class BornAgain(Strategy):
    """Born-Again Neural Networks (Furlanello, Lipton, Tschannen, Itti & Anandkumar, ICML 2018).

    Generation 0 is the student preset trained on the labels alone; generation g is a fresh
    copy trained under the offline strategy with the ``method`` terms, generation g - 1 frozen
    as its teacher. Each generation trains in ``gen<g>/`` (checkpoints) and logs as
    ``gen<g>/...``. Reports the last generation as the student and the one before as its
    teacher, every generation (``generations``) and, with ``ensemble``, the average of all
    generations' predictions (BANE).
    """

    name = "born_again"
    generations: Annotated[int, Bound(2)] = 3  # including generation 0
    ensemble: bool = True

    def fit(self, run: RunContext) -> Fitted:
        spec = run.cfg.student
        self.fitted: list[OfflineDistillation] = []
        for g in range(self.generations):
            teacher = self.fitted[-1].student.requires_grad_(False) if self.fitted else None
            terms = run.terms() if teacher is not None else {"ce": CrossEntropy()}
            log.info(f"born-again: generation {g} of {self.generations}" + (" (labels only)" if g == 0 else ""))
            self.fitted.append(train_offline(run, run.model(spec), spec, terms, teacher, f"gen{g}/", subdir=f"gen{g}"))
        self.arch = spec.arch
        last, previous = self.fitted[-1], self.fitted[-2]
        student = Trained(last.student, spec.arch, OmegaConf.to_container(spec.kwargs, resolve=True))
        teacher = Trained(previous.student, f"{spec.arch} (generation {len(self.fitted) - 2})")
        return Fitted(student, teacher, last.best_val_acc(), last.trainer)

    def results(self, data) -> dict:
        out = {
            "generations": [
                {
                    "generation": g,
                    **model_report(m.student, self.arch, data)[0],
                    "val_acc_best": round(m.best_val_acc(), 6),
                }
                for g, m in enumerate(self.fitted)
            ]
        }
        if self.ensemble:
            students = [m.student for m in self.fitted]
            ens = TeacherEnsemble(students, arch=f"ensemble[{self.arch} x{len(students)}]")
            out["ensemble"] = model_report(ens, ens.kdlab_arch, data)[0]
        return out
