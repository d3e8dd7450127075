"""What every strategy shares: YAML keys are its fields, its training module steps like the others,
and a new strategy is one new file (here: one class in this file) that kdlab-train runs unchanged."""

from dataclasses import dataclass, fields
from typing import Annotated

import pytest
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from kdlab import CONFIG_DIR
from kdlab.config import Bound
from kdlab.errors import KdlabError
from kdlab.methods import KD, CrossEntropy
from kdlab.models import create_model
from kdlab.strategies import (
    Fitted,
    OfflineDistillation,
    OnlineDistillation,
    SelfDistillation,
    Strategy,
    Trained,
)
from kdlab.strategies.offline import train_offline

STRATEGIES = sorted(p.stem for p in (CONFIG_DIR / "strategy").glob("*.yaml"))


@pytest.mark.parametrize("name", STRATEGIES)
def test_each_strategy_yaml_builds_an_object_whose_fields_are_its_keys(name):
    node = OmegaConf.load(CONFIG_DIR / "strategy" / f"{name}.yaml")
    strategy = instantiate(node)
    assert isinstance(strategy, Strategy) and strategy.name == name
    assert {f.name for f in fields(strategy)} == set(node) - {"_target_"}
    for key in set(node) - {"_target_"}:
        assert getattr(strategy, key) == node[key]


def batch(n=8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 40, generator=g), torch.randint(0, 10, (n,), generator=g), torch.arange(n)


def modules():
    torch.manual_seed(0)
    terms = {"ce": CrossEntropy(0.1), "kd": KD(0.9, temperature=4.0)}
    sgd = lambda p: torch.optim.SGD(p, lr=0.1)  # noqa: E731
    cnn = lambda: create_model("cnn1d", 10, (1, 40))  # noqa: E731
    return {
        "offline": OfflineDistillation(cnn(), terms, sgd, 10, (1, 40), teacher=cnn()),
        "online": OnlineDistillation([cnn(), cnn()], terms, [sgd, sgd], 10, (1, 40)),
        "self": SelfDistillation(cnn(), terms, sgd, 10, (1, 40)),
    }


def test_the_training_modules_return_the_same_shape_and_hold_no_config():
    for name, module in modules().items():
        if not module.automatic_optimization:  # the online module steps its peers' optimizers itself
            module.optimizers = lambda module=module: [opt for opt in module.configure_optimizers()[0]]
            module.manual_backward = lambda loss: loss.backward()
        out = module.training_step(batch(), 0)
        assert set(out) == {"loss", "loss_ce", "loss_kd"} | ({"loss_hint"} if name == "self" else set()), name
        assert out["loss"].ndim == 0 and all(not v.requires_grad for k, v in out.items() if k != "loss")
        logged = module.train_means.pop()
        assert {"loss", "loss_ce", "loss_kd"} <= set(logged)
        assert not any(isinstance(v, DictConfig) for m in module.modules() for v in vars(m).values()), name


@dataclass
class LabelSmoothingOnly(Strategy):
    """A strategy written outside kdlab: the student alone, on label-smoothed cross-entropy."""

    name = "label_smoothing"
    smoothing: Annotated[float, Bound(0, 1)] = 0.1

    def fit(self, run) -> Fitted:
        spec = run.cfg.student
        self.module = train_offline(run, run.model(spec), spec, {"ce": CrossEntropy(label_smoothing=self.smoothing)})
        kwargs = OmegaConf.to_container(spec.kwargs)
        return Fitted(
            Trained(self.module.student, spec.arch, kwargs), None, self.module.best_val_acc(), self.module.trainer
        )

    def results(self, data) -> dict:
        return {"smoothing": self.smoothing}


def test_a_new_strategy_is_one_class_that_kdlab_train_runs(train, cache_dir):
    target = f"{__name__}.LabelSmoothingOnly"
    r = train([f"strategy._target_={target}", "+strategy.smoothing=0.2"])
    assert get_class(target).name == r["strategy"] == "label_smoothing"
    assert r["smoothing"] == 0.2 and r["teacher"] is None and 0 <= r["student"]["test_acc"] <= 1
    assert (r["_dir"] / "checkpoints" / "last.ckpt").is_file() and (r["_dir"] / "student.safetensors").is_file()
    assert not (cache_dir / "teachers").exists()  # it asked for no teacher
    with pytest.raises(KdlabError, match=r"strategy\.smoothing=2\.0 is not a number in \[0, 1\]"):
        train([f"strategy._target_={target}", "+strategy.smoothing=2.0"])
