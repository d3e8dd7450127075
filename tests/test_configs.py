"""Every config file composes; experiments are reachable as experiments=<path>."""

from pathlib import Path

import pytest
from hydra.utils import get_class, instantiate

from kdlab import CONFIG_DIR, ROOT
from kdlab.config import validate
from kdlab.errors import KdlabError
from kdlab.methods import Term
from tests.conftest import compose_cfg

GROUPS = ["data", "teacher", "student", "strategy", "method", "trainer", "logger"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONFIG_DIR / g).glob("*.yaml"))]
# Hydra 1.3 does not list searchpath groups reliably: enumerate experiment files with pathlib.
EXPERIMENTS = sorted(
    p.relative_to(ROOT / "experiments").with_suffix("").as_posix() for p in (ROOT / "experiments").rglob("*.yaml")
)


def test_every_group_has_options():
    assert {g for g, _ in OPTIONS} == set(GROUPS)
    assert EXPERIMENTS, "experiments/ should hold at least one recipe"


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_group_option_composes(group, option):
    overrides = [f"{group}={option}"]
    if (group, option) == ("data", "imagefolder"):
        overrides.append("data.root=/some/folder")
    cfg = compose_cfg(overrides)
    cfg.paths.output_dir = "/tmp/x"
    if group == "method":
        terms = instantiate(cfg.method.terms)
        assert terms and all(isinstance(t, Term) for t in terms.values())
        assert cfg.method.name in (option, option.replace("_", "+"))  # kd_at combines kd and at
    if group in ("teacher", "student"):
        assert cfg[group].arch and cfg[group].optimizer._partial_


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name):
    cfg = compose_cfg([f"experiments={name}"])
    assert cfg.method.name and cfg.teacher.arch and cfg.student.arch
    folder, file = name.split("/")[-2:]
    assert folder in ("mnist1d", "digits", "cifar10", "cifar100", "imagenet"), (
        "experiments live under a folder per dataset"
    )
    strategy = get_class(cfg.strategy._target_).name
    named_after = (
        cfg.task if cfg.task == "teacher" else None,  # teacher_<arch>: trains and caches a teacher
        cfg.method.name,
        strategy,
        {"online": "dml"}.get(strategy),
        {"self": "byot"}.get(strategy),
        "paper" if cfg.method.name == "none" else None,  # paper_<arch>: a paper's baseline under its exact protocol
    )
    assert any(n and file.startswith(n) for n in named_after), "named <method or strategy>_<teacher>_<student>"
    cfg.paths.output_dir = "/unused"
    validate(cfg)  # every value, every _target_'s arguments, what the terms and the data must agree on


def test_experiments_reachable_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert compose_cfg([f"experiments={EXPERIMENTS[0]}"]).method.name


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(KdlabError, match=r"(?s)method/dkdd.*Available options.*kd.*none"):
        compose_cfg(["method=dkdd"])


def test_default_is_offline_kd_on_mnist1d():
    cfg = compose_cfg()
    assert (cfg.data._target_, cfg.teacher.arch, cfg.student.arch, cfg.method.name, cfg.task) == (
        "kdlab.data.MNIST1D",
        "cnn1d",
        "mlp",
        "kd",
        "distill",
    )
    assert Path(CONFIG_DIR / "experiments").resolve() == (ROOT / "experiments").resolve()
