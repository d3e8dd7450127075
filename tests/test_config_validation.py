"""Invalid values are refused when the config is composed, before anything trains, in one line;
renamed overrides still work."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdlab.config import compose, upgrade_overrides, validate
from kdlab.errors import KdlabError
from kdlab.methods import DKD, KD, TfKD
from kdlab.strategies import BornAgain, Online

BIN = Path(sys.executable).parent

BAD = [
    (["method.terms.kd.temperature=0"], r"^method\.terms\.kd\.temperature=0 is not a number > 0$"),
    (["method.terms.kd.temperature=-2.5"], r"^method\.terms\.kd\.temperature=-2\.5 is not a number > 0$"),
    (["method.terms.kd.weight=-1"], r"^method\.terms\.kd\.weight=-1 is not a number >= 0$"),
    (["method=dkd", "method.terms.dkd.beta=-8"], r"^method\.terms\.dkd\.beta=-8 is not a number >= 0$"),
    (["method=dkd", "method.terms.dkd.warmup_epochs=2.5"], r"warmup_epochs=2\.5 is not an integer >= 0"),
    (["method=tfkd", "method.terms.tfkd.correct_prob=1.0"], r"correct_prob=1\.0 is not a number in \(0, 1\)"),
    (["method=crd", "method.terms.crd.nce_k=0"], r"^method\.terms\.crd\.nce_k=0 is not an integer >= 1$"),
    (["+method.terms.kd.temprature=2"], r"KD takes no argument 'temprature' \(closest: temperature"),
    (["data.batch_size=0"], r"^data\.batch_size=0 is not an integer >= 1$"),
    (["data.val_fraction=1.0"], r"^data\.val_fraction=1\.0 is not a number in \[0, 1\)$"),
    (["data.val_fraction=-0.1"], r"^data\.val_fraction=-0\.1 is not a number in \[0, 1\)$"),
    (["data.noise_std=-1"], r"^data\.noise_std=-1 is not a number >= 0$"),
    (["seed=1.5"], r"^seed=1\.5 is not an integer in \[0, 4294967295\]$"),
    (["seed=abc"], r"^seed=abc is not an integer"),
    (["seed=-1"], r"^seed=-1 is not an integer in"),
    (["trainer.max_epochs=ten"], r"^trainer\.max_epochs=ten is not an integer >= 0$"),
    (["trainer.max_epochs=-1"], r"^trainer\.max_epochs=-1 is not an integer >= 0$"),
    (["teacher.max_epochs=x"], r"^teacher\.max_epochs=x is not an integer >= 0$"),
    (["teacher.batch_size=0"], r"^teacher\.batch_size=0 is not an integer >= 1$"),
    (["teacher.seed=0.5"], r"^teacher\.seed=0\.5 is not an integer"),
    (["torch_threads=0"], r"^torch_threads=0 is not an integer >= 1$"),
    (["task=tutor"], r"^task=tutor is not one of distill, teacher$"),
    (["strategy=online", "strategy.mode=median"], r"^strategy\.mode=median is not one of mutual, ensemble$"),
    (["strategy=online", "strategy.peers=1"], r"^strategy\.peers=1 is not an integer >= 2 or a list of mappings$"),
    (["strategy=online", "strategy.deploy=-1"], r"^strategy\.deploy=-1 is not one of best or an integer >= 0$"),
    (["strategy=born_again", "strategy.generations=1"], r"^strategy\.generations=1 is not an integer >= 2$"),
    (["strategy=self", "strategy.feature_weight=-0.1"], r"^strategy\.feature_weight=-0\.1 is not a number >= 0$"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_invalid_values_are_refused_in_one_line(overrides, message):
    cfg, _ = compose(overrides)
    cfg.paths.output_dir = "/unused"
    with pytest.raises(KdlabError, match=message) as e:
        validate(cfg)
    assert "\n" not in str(e.value)


def test_every_shipped_config_is_valid():
    """Every group option (the experiments are validated where tests/test_configs.py composes them)."""
    from tests.test_configs import OPTIONS

    needs = {"data=imagefolder": ["data.root=/some/folder"], "method=mlkd": ["data.strong_view=true"]}
    for overrides in [[f"{g}={o}"] for g, o in OPTIONS]:
        cfg, _ = compose([*overrides, *needs.get(overrides[0], [])])
        cfg.paths.output_dir = "/unused"
        validate(cfg)


def test_a_bad_value_stops_the_run_before_anything_trains(train, cache_dir, tmp_path):
    with pytest.raises(KdlabError, match=r"method\.terms\.kd\.temperature=0 is not a number > 0"):
        train(["method.terms.kd.temperature=0"])
    assert not (cache_dir / "teachers").exists()  # no teacher was trained
    assert not list(tmp_path.glob("run*/checkpoints"))


def test_the_cli_reports_a_bad_value_in_one_line(tmp_path):
    p = subprocess.run(
        [str(BIN / "kdlab-train"), "data.batch_size=0", "logger=none"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == ["kdlab-train: error: data.batch_size=0 is not an integer >= 1"]


def test_terms_and_strategies_built_in_python_are_checked_the_same_way():
    with pytest.raises(KdlabError, match=r"KD\.temperature=0 is not a number > 0"):
        KD(temperature=0)
    with pytest.raises(KdlabError, match=r"DKD\.weight=-1\.0 is not a number >= 0"):
        DKD(weight=-1.0)
    with pytest.raises(KdlabError, match=r"TfKD\.correct_prob=1\.5 is not a number in \(0, 1\)"):
        TfKD(correct_prob=1.5)
    with pytest.raises(KdlabError, match=r"strategy\.generations=1 is not an integer >= 2"):
        BornAgain(generations=1)
    with pytest.raises(KdlabError, match=r"strategy\.mode=median is not one of mutual, ensemble"):
        Online(mode="median")
    assert KD(weight=0.9, temperature=4).temperature == 4.0


def test_the_old_distill_override_still_works_and_says_it_is_now_method(capsys):
    assert upgrade_overrides(["distill=dkd", "distill.terms.dkd.beta=2", "+distill.x=1", "seed=1"]) == [
        "method=dkd",
        "method.terms.dkd.beta=2",
        "+method.x=1",
        "seed=1",
    ]
    assert "`distill` is now `method`" in capsys.readouterr().err
    cfg, choices = compose(["distill=dkd", "distill.terms.dkd.beta=2.0"])
    assert cfg.method.name == "dkd" and cfg.method.terms.dkd.beta == 2.0 and choices["method"] == "dkd"
    assert upgrade_overrides(["task=distill", "method=kd"]) == ["task=distill", "method=kd"]  # the task keeps its name


def test_the_cli_accepts_the_old_override(tmp_path):
    p = subprocess.run(
        [str(BIN / "kdlab-train"), "distill=dkdd", "logger=none"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert p.returncode == 1 and "`distill` is now `method`" in p.stderr
    assert "Could not find 'method/dkdd'" in p.stderr
