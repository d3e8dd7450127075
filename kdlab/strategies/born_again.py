"""Born-Again Networks: a student distilled from its own previous generation."""

from __future__ import annotations

from dataclasses import dataclass

from kdlab.errors import KdlabError


@dataclass
class BornAgain:
    """Born-Again Neural Networks (Furlanello, Lipton, Tschannen, Itti & Anandkumar, ICML 2018).

    Generation 0 is the student architecture trained on the labels alone; generation g is
    a fresh copy trained under the offline strategy with the ``distill`` terms, generation
    g - 1 frozen as its teacher. ``kdlab-train`` runs the generations one after another
    (``gen<g>/`` metrics and checkpoints) and reports every generation and, with
    ``ensemble``, the average of all generations' predictions (BANE).
    """

    name = "born_again"
    generations: int = 3
    ensemble: bool = True

    def __post_init__(self):
        if self.generations < 2:
            raise KdlabError(f"strategy.generations={self.generations}: Born-Again needs at least 2 generations")
