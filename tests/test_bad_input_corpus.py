"""A corpus of bad and faulty inputs to kdlab-train, kdlab-sweep and kdlab-compare, each run
through the command's own entry point (in-process: the same ``cli()`` the console script
calls, Hydra included). Every case asserts the exit code, ONE line on stderr that names the
problem and the fix (``kdlab-<tool>: error: ...``; a warning case: exit 0 and the warning), no
traceback anywhere in the output, and that every file saved before (a previous run's
results.json, checkpoint and exported student, the teacher cache, the study database, the
input files themselves) keeps its bytes. Almost every case fails before anything trains."""

from __future__ import annotations

import inspect
import json
import os
import pickle
import re
import shutil
import sys
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

import kdlab.train  # noqa: F401 (CLI below reads its cli())
from kdlab.errors import KdlabError
from kdlab.models import create_model
from kdlab.models.checkpoint import save_weights
from tests.conftest import FAST

# ---------------------------------------------------------------------------------------------
# the harness


def _entry(tool: str) -> Callable[[], None]:
    if tool == "train":
        from kdlab.train import cli
    elif tool == "sweep":
        from kdlab.sweep.run import cli
    else:
        from kdlab.report.compare import cli
    return cli


@dataclass
class Case:
    """One bad input. ``args``: the command line (``{ws}`` is the test's workspace); ``says``: a
    regex the one error line must contain (for a warning case, the output). ``setup(ws)`` writes
    the faulty files; ``changes``: files (relative to ws) the command may rewrite; ``then(ws,
    out)``: more checks."""

    id: str
    tool: str
    args: list[str]
    says: str
    setup: Callable[[Path], None] | None = None
    warning: bool = False
    changes: tuple[str, ...] = ()
    then: Callable[[Path, str], None] | None = None
    xfail: str | None = None
    base: bool = True  # add the tool's base arguments (fast training, the run directory)


@dataclass
class Outcome:
    code: int | str
    out: str
    err: str
    lines: list[str] = field(default_factory=list)


def invoke(tool: str, argv: list[str], capfd, monkeypatch) -> Outcome:
    monkeypatch.setattr(sys, "argv", [f"kdlab-{tool}", *argv])
    code: int | str = 0
    tb = ""
    with warnings.catch_warnings(record=True) as caught:  # as a console script shows them: on stderr
        warnings.simplefilter("default")
        try:
            _entry(tool)()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # anything escaping the command is a traceback the user would see
            code, tb = "exception", traceback.format_exc()
    out, err = capfd.readouterr()
    err += "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in caught) + tb
    return Outcome(code, out, err, [line for line in err.splitlines() if line.strip()])


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# the workspace: what a user has saved before the bad command


def previous_results() -> dict:
    acc = 0.7
    return {
        "task": "distill",
        "strategy": "offline",
        "method": "kd",
        "data": "mnist1d",
        "seed": 0,
        "teacher": {"arch": "cnn1d", "params": 5210, "test_acc": 0.93, "per_class_acc": [0.93] * 10},
        "student": {"arch": "mlp", "params": 15210, "test_acc": acc, "per_class_acc": [acc] * 10},
        "fidelity": {"agreement": 0.72, "kl": 0.5, "retained": 0.75},
        "calibration": {"ece": 0.04},
        "efficiency": {"param_ratio": 2.9, "latency_ms": 0.1},
        "wall_s": 10.0,
        "overrides": [],
        "wandb": None,
    }


@pytest.fixture(scope="session")
def study_db(tmp_path_factory) -> Path:
    """An optuna.db holding a study of kd_temperature_alpha with one finished trial."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = tmp_path_factory.mktemp("study") / "optuna.db"
    study = optuna.create_study(study_name="kd_temperature_alpha", storage=f"sqlite:///{path}", direction="maximize")
    dist = optuna.distributions.FloatDistribution(1.0, 20.0, log=True)
    study.add_trial(
        optuna.trial.create_trial(
            params={"method.terms.kd.temperature": 4.0}, distributions={"method.terms.kd.temperature": dist}, value=0.7
        )
    )
    return path


@pytest.fixture(scope="session")
def mnist1d_file() -> Path:
    """The generated MNIST-1D cache file of the default config (made once per session)."""
    from kdlab.data.mnist1d import load_mnist1d

    root = Path(os.environ["KDLAB_DATA_DIR"])
    load_mnist1d(root)
    (path,) = (root / "mnist1d").glob("mnist1d_n5000_seed42.npz")
    return path


@pytest.fixture
def ws(tmp_path, monkeypatch, study_db) -> Path:
    """A previous run (results.json, best checkpoint, student.safetensors), a cached teacher, a study."""
    ws = tmp_path / "ws"
    run = ws / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(previous_results(), indent=2))
    torch.manual_seed(0)
    student = create_model("mlp", 10, (1, 40))
    # the best checkpoint (a last.ckpt would make the run resume: kdlab.resume's business, tested there)
    torch.save(
        {"epoch": 3, "state_dict": {f"student.{k}": v for k, v in student.state_dict().items()}},
        run / "checkpoints" / "best-epoch003.ckpt",
    )
    save_weights(student, run / "student.safetensors", "mlp", 10, (1, 40))
    entry = ws / "cache" / "teachers" / "mnist1d-cnn1d-0123456789ab"
    save_weights(create_model("cnn1d", 10, (1, 40)), entry / "teacher.safetensors", "cnn1d", 10, (1, 40))
    (entry / "recipe.json").write_text("{}\n")
    (ws / "sweeps").mkdir()
    shutil.copy(study_db, ws / "sweeps" / "optuna.db")
    (ws / "files").mkdir()
    monkeypatch.setenv("KDLAB_CACHE_DIR", str(ws / "cache"))
    monkeypatch.setenv("KDLAB_SWEEP_DIR", str(ws / "sweeps"))
    return ws


# ---------------------------------------------------------------------------------------------
# faulty files


def files(ws: Path, name: str) -> Path:
    return ws / "files" / name


def write_model(path: Path, arch: str = "cnn1d", classes: int = 10, poison: str | None = None, torch_file=False):
    torch.manual_seed(0)
    model = create_model(arch, classes, (1, 40))
    if poison is not None:
        with torch.no_grad():
            first = next(model.parameters())
            first.view(-1)[:3] = float(poison)
    if torch_file:
        torch.save({"model": model.state_dict(), "epoch": 240}, path)
    else:
        save_weights(model, path, arch, classes, (1, 40))
    return path


class RunsCode:
    """A pickle that would run a shell command when loaded (a crafted "checkpoint")."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted_pickle(ws: Path) -> None:
    with open(files(ws, "evil.pth"), "wb") as f:
        pickle.dump({"model": RunsCode(ws / "pwned")}, f)


def nothing_ran(ws: Path, out: str) -> None:
    assert not (ws / "pwned").exists(), "the crafted pickle ran code"


def mnist1d_copy(ws: Path, src: Path, **change) -> None:
    """data.root=ws/data with a copy of the MNIST-1D cache file, some arrays replaced."""
    folder = ws / "data" / "mnist1d"
    folder.mkdir(parents=True)
    with np.load(src) as f:
        arrays = {k: f[k] for k in f.files}
    arrays.update(change)
    np.savez(folder / src.name, **{k: v for k, v in arrays.items() if v is not None})


def fake_cifar(ws: Path, label: int | None = None, evil: bool = False) -> None:
    from kdlab.data.cifar import write_fake_cifar

    base = write_fake_cifar(ws / "cifar", classes=10, n_train=50, n_test=10)
    if label is not None:
        with open(base / "test_batch", "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        entry["labels"][3] = label
        with open(base / "test_batch", "wb") as f:
            pickle.dump(entry, f, protocol=2)
    if evil:
        with open(base / "data_batch_2", "wb") as f:
            pickle.dump({"data": RunsCode(ws / "pwned"), "labels": [0]}, f)


def results_dir(ws: Path, name: str, run: str = "run0", **change) -> None:
    """ws/<name>/<run>/results.json: a previous run's results with fields replaced."""
    r = previous_results()
    for dotted, value in change.items():
        node = r
        *parts, last = dotted.split("__")
        for p in parts:
            node = node[p]
        node[last] = value
    (ws / name / run).mkdir(parents=True)
    (ws / name / run / "results.json").write_text(json.dumps(r))


def teacher_cache_entry(ws: Path) -> Path:
    """The cache folder of the teacher the fast default run asks for."""
    from kdlab.config import compose
    from kdlab.teacher import cache_entry, teacher_key, teacher_recipe

    cfg, _ = compose(FAST)
    return cache_entry(ws / "cache", teacher_key(teacher_recipe(cfg.teacher, cfg.data), "mnist1d"))


def poisoned_cache(ws: Path) -> None:
    entry = teacher_cache_entry(ws)
    write_model(entry / "teacher.safetensors", poison="nan")
    (entry / "recipe.json").write_text("{}\n")


def cache_was_replaced(ws: Path, out: str) -> None:
    from safetensors.torch import load_file

    weights = load_file(teacher_cache_entry(ws) / "teacher.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values()), "the poisoned cache entry is still there"


# ---------------------------------------------------------------------------------------------
# the corpus

#: What Hydra itself stops on before kdlab gets the config (group options and keys that do not exist,
#: overrides that do not parse, a run directory that is a file) is refused in one line only when
#: kdlab-train's cli() calls kdlab.config.check_command_line before hydra.main.
CLI = (
    None
    if "check_command_line" in inspect.getsource(sys.modules["kdlab.train"].cli)
    else "kdlab.train.cli() does not call kdlab.config.check_command_line(sys.argv[1:]) before main() yet"
)

T, S, C = "train", "sweep", "compare"
NUM = r"is not a number"
CASES: list[Case] = [
    # --- configs: values of the wrong type or out of range (validated when composed)
    Case("max_epochs=abc", T, ["trainer.max_epochs=abc"], r"trainer\.max_epochs=abc is not an integer >= 0$"),
    Case("max_epochs=-1", T, ["trainer.max_epochs=-1"], r"trainer\.max_epochs=-1 is not an integer >= 0$"),
    Case("max_epochs=1.5", T, ["trainer.max_epochs=1.5"], r"trainer\.max_epochs=1\.5 is not an integer"),
    Case(
        "student.max_epochs=x",
        T,
        ["student.max_epochs=x"],
        r"student\.max_epochs=x is not an integer >= 0$",
        base=False,
    ),
    Case("batch_size=0", T, ["data.batch_size=0"], r"data\.batch_size=0 is not an integer >= 1$"),
    Case("batch_size=abc", T, ["data.batch_size=abc"], r"data\.batch_size=abc is not an integer >= 1$"),
    Case("val_fraction=1.5", T, ["data.val_fraction=1.5"], r"data\.val_fraction=1\.5 is not a number in \[0, 1\)$"),
    Case("noise_std=-1", T, ["data.noise_std=-1"], rf"data\.noise_std=-1 {NUM} >= 0$"),
    Case("num_samples=0", T, ["data.num_samples=0"], r"data\.num_samples=0 is not an integer >= 1$"),
    Case("lr=-1", T, ["student.optimizer.lr=-1"], rf"student\.optimizer\.lr=-1 {NUM} > 0$"),
    Case("lr=abc", T, ["student.optimizer.lr=abc"], rf"student\.optimizer\.lr=abc {NUM} > 0$"),
    Case("teacher lr=0", T, ["teacher.optimizer.lr=0"], rf"teacher\.optimizer\.lr=0 {NUM} > 0$"),
    Case(
        "weight_decay=-1", T, ["+student.optimizer.weight_decay=-1"], rf"student\.optimizer\.weight_decay=-1 {NUM} >= 0"
    ),
    Case(
        "optimizer typo",
        T,
        ["+student.optimizer.lrr=0.1"],
        r"student\.optimizer\.lrr: Adam takes no argument 'lrr' \(closest: lr",
    ),
    Case(
        "optimizer unknown class",
        T,
        ["student.optimizer._target_=torch.optim.Adamm"],
        r"student\.optimizer\._target_=torch\.optim\.Adamm cannot be imported.*closest: torch\.optim\.Adam\b",
    ),
    Case("scheduler=abc", T, ["student.scheduler=abc"], r"student\.scheduler=abc is not a mapping or null$"),
    Case("seed=1.5", T, ["seed=1.5"], r"seed=1\.5 is not an integer in \[0, 4294967295\]$"),
    Case("seed=-1", T, ["seed=-1"], r"seed=-1 is not an integer in \[0, 4294967295\]$"),
    Case("seed=[1,2]", T, ["seed=[1,2]"], r"seed=\[1, 2\] is not an integer"),
    Case("teacher.seed=abc", T, ["teacher.seed=abc"], r"teacher\.seed=abc is not an integer"),
    Case(
        "teacher.max_epochs=-1",
        T,
        ["teacher.max_epochs=-1"],
        r"teacher\.max_epochs=-1 is not an integer >= 0$",
        base=False,
    ),
    Case("teacher.batch_size=0", T, ["teacher.batch_size=0"], r"teacher\.batch_size=0 is not an integer >= 1$"),
    Case("task=3", T, ["task=3"], r"task=3 is not one of distill, teacher$"),
    Case("export_onnx=maybe", T, ["export_onnx=maybe"], r"export_onnx=maybe is not true or false$"),
    Case("measure_speed=2", T, ["measure_speed=2"], r"measure_speed=2 is not true or false$"),
    Case("torch_threads=abc", T, ["torch_threads=abc"], r"torch_threads=abc is not an integer >= 1$"),
    Case("student.arch=5", T, ["student.arch=5"], r"student\.arch=5 is not a string$"),
    Case("paths.cache_dir=[1]", T, ["paths.cache_dir=[1]"], r"paths\.cache_dir=\[1\] is not a string$"),
    Case("data.shuffle=maybe", T, ["+data.shuffle=maybe"], r"data\.shuffle=maybe is not true or false$"),
    Case("data.split_seed=x", T, ["data.split_seed=x"], r"data\.split_seed=x is not an integer in"),
    Case("method.name=3", T, ["method.name=3"], r"method\.name=3 is not a string$"),
    # the 2022-2024 methods: a modifier where it cannot go, a strong view or a token that is not there
    Case(
        "standardize on at",
        T,
        ["method=at", "+method.terms.at.standardize=true"],
        r"AT takes no argument 'standardize'; standardize is an option of the logit terms kd",
    ),
    Case(
        "curriculum on fitnet",
        T,
        ["method=fitnet", "+method.terms.fitnet.curriculum.variant=global"],
        r"FitNet takes no argument 'curriculum'; curriculum is an option of the logit terms kd",
    ),
    Case("mlkd without a strong view", T, ["method=mlkd"], r"trains on a strong view.*set data\.strong_view=true"),
    Case(
        "strong view of digits",
        T,
        ["data=digits", "teacher=cnn_small", "data.strong_view=true"],
        r"digits has no strong view; the data that have one: cifar10, cifar100, mnist1d",
    ),
    Case(
        "deit token on an mlp",
        T,
        ["method=deit"],
        r"the student \(mlp\) has no distillation token.*e\.g\. student=deit_tiny_distilled",
    ),
    Case(
        "dot without a task term",
        T,
        ["method=none", "student.optimizer._target_=kdlab.optim.DOT"],
        r"DOT steps the task loss .* need both",
    ),
    Case(
        "digits test_fraction=1",
        T,
        ["data=digits", "data.test_fraction=1.0", "student=cnn_tiny", "method=none"],
        r"data\.test_fraction=1\.0 is not a number in \(0, 1\)$",
    ),
    Case(
        "cifar classes=7",
        T,
        ["data=cifar10", "data.classes=7", "student=cnn_tiny", "method=none"],
        r"data\.classes=7 is not one of 10, 100$",
    ),
    Case("student.kwargs=3", T, ["student.kwargs=3"], r"student\.kwargs=3 is not a mapping$"),
    Case("student.optimizer=3", T, ["student.optimizer=3"], r"student\.optimizer=3 is not a mapping$"),
    Case("method.terms=3", T, ["method.terms=3"], r"method\.terms=3 is not a mapping$"),
    Case("kd weight -1", T, ["method.terms.kd.weight=-1"], rf"method\.terms\.kd\.weight=-1 {NUM} >= 0$"),
    Case("distill weight -1", T, ["distill.terms.kd.weight=-1"], rf"method\.terms\.kd\.weight=-1 {NUM} >= 0$"),
    Case("temperature=nan", T, ["method.terms.kd.temperature=nan"], rf"method\.terms\.kd\.temperature=nan {NUM} > 0$"),
    Case(
        "term typo",
        T,
        ["+method.terms.kd.temprature=2"],
        r"KD takes no argument 'temprature' \(closest: temperature",
    ),
    Case(
        "dkd beta<0",
        T,
        ["method=dkd", "method.terms.dkd.beta=-8"],
        rf"method\.terms\.dkd\.beta=-8 {NUM} >= 0$",
    ),
    Case(
        "tap path that does not exist",
        T,
        ["method=fitnet", "student=cnn1d_narrow", "method.terms.fitnet.student_taps=[nope]"],
        r"student has no module 'nope'; valid tap paths: conv1, conv2, conv3",
    ),
    Case(
        "hint stage out of range",
        T,
        ["method=fitnet", "student=cnn1d_narrow", "method.terms.fitnet.hint_stage=9"],
        r"FitNet hint_stage=9, but a model has only stages .*; set method\.terms\.fitnet\.hint_stage to 0\.\.2$",
    ),
    Case(
        "methods refusing taps on an MLP",
        T,
        ["method=ofd"],
        r"student \(MLP\) declares no pre-activation stages",
    ),
    Case("at p=abc", T, ["method=at", "method.terms.at.p=abc"], r"method\.terms\.at\.p=abc is not a number > 0$"),
    Case(
        "online peer of an unknown arch",
        T,
        ["strategy=online", "strategy.peers=[{},{arch:nope}]"],
        r"unknown model 'nope'.*kdlab models: cnn1d",
    ),
    Case(
        "online deploy out of range",
        T,
        ["strategy=online", "strategy.deploy=5"],
        r"strategy\.deploy=5: use best or a peer index in 0\.\.1$",
    ),
    Case(
        "ensemble combine",
        T,
        ["teacher=cnn1d_ensemble", "teacher.ensemble.combine=median"],
        r"teacher\.ensemble\.combine=median: use probs or logits$",
    ),
    Case(
        "peers=1",
        T,
        ["strategy=online", "strategy.peers=1"],
        r"strategy\.peers=1 is not an integer >= 2 or a list of mappings$",
    ),
    Case(
        "generations=1",
        T,
        ["strategy=born_again", "strategy.generations=1"],
        r"strategy\.generations=1 is not an integer >= 2$",
    ),
    Case(
        "teacher kwargs num_classes",
        T,
        ["+teacher.kwargs.num_classes=5"],
        r"teacher\.kwargs\.num_classes=5: the class count comes from the data; remove it$",
    ),
    Case(
        "student kwargs in_chans",
        T,
        ["+student.kwargs.in_chans=3"],
        r"student\.kwargs\.in_chans=3: the input channels come from the data; remove it$",
    ),
    Case(
        "trainer accelerator",
        T,
        ["trainer.accelerator=tpu"],
        r"trainer: cannot build Trainer from this config \(ModuleNotFoundError: .*torch_xla.*; change trainer values",
    ),
    Case(
        "trainer precision",
        T,
        ["trainer.precision=13"],
        r"trainer\.precision=13 is not one of 64, 32, 16, transformer-engine, .*bf16-mixed, .* or null$",
    ),
    Case("trainer unknown key", T, ["+trainer.bogus=1"], r"trainer\.bogus: Trainer takes no argument 'bogus'"),
    # --- configs: names that do not exist (the closest valid names)
    Case("unknown arch", T, ["student.arch=mlpp"], r"unknown model 'mlpp' \(closest: mlp\)"),
    Case("unknown teacher arch", T, ["teacher.arch=cnn1dd"], r"unknown model 'cnn1dd' \(closest: cnn1d\b"),
    Case(
        "unknown method",
        T,
        ["method=kdd"],
        r"Could not find 'method/kdd' \(closest: kd\b.*Available options",
        xfail=CLI,
    ),
    Case(
        "unknown strategy", T, ["strategy=offlin"], r"Could not find 'strategy/offlin' \(closest: offline\b", xfail=CLI
    ),
    Case("unknown data", T, ["data=mnist"], r"Could not find 'data/mnist' \(closest: mnist1d\)", xfail=CLI),
    Case("unknown teacher preset", T, ["teacher=cnn1"], r"Could not find 'teacher/cnn1' \(closest: cnn1d", xfail=CLI),
    Case(
        "unknown logger",
        T,
        ["logger=wandbb"],
        r"Could not find 'logger/wandbb' \(closest: wandb\)",
        base=False,
        xfail=CLI,
    ),
    Case(
        "unknown key",
        T,
        ["trainer.max_epoch=3"],
        r"trainer\.max_epoch: no such key \(closest: trainer\.max_epochs\b.*\); add \+ to create it \(\+trainer\.max_epoch=3\)$",
        xfail=CLI,
    ),
    Case(
        "override without =",
        T,
        ["trainer.max_epochs"],
        r"Error parsing override 'trainer\.max_epochs' \(missing EQUAL at '<EOF>'\); overrides are key=value",
        xfail=CLI,
    ),
    Case(
        "override that does not parse",
        T,
        ["trainer.max_epochs=[1,"],
        r"cannot parse the overrides \(no viable alternative at input '\[1,'\); overrides are key=value",
        xfail=CLI,
    ),
    # --- the run directory
    Case(
        "run dir is a file",
        T,
        ["hydra.run.dir={ws}/files/a_file"],
        r"hydra\.run\.dir=.*a_file is an existing file; give a directory",
        setup=lambda ws: files(ws, "a_file").write_text("keep me\n"),
        base=False,
        xfail=CLI,
    ),
    Case(
        "run dir below a file",
        T,
        ["hydra.run.dir={ws}/files/a_file/run"],
        r"hydra\.run\.dir=.*a_file/run is below the file .*a_file; give a directory",
        setup=lambda ws: files(ws, "a_file").write_text("keep me\n"),
        base=False,
        xfail=CLI,
    ),
    # --- checkpoints
    Case(
        "missing teacher checkpoint",
        T,
        ["teacher.checkpoint={ws}/files/nope.safetensors"],
        r"teacher checkpoint .*nope\.safetensors not found; make one with `kdlab-train task=teacher",
    ),
    Case(
        "empty teacher checkpoint",
        T,
        ["teacher.checkpoint={ws}/files/empty.pth"],
        r"cannot read .*empty\.pth: truncated or corrupt \(the file is empty, 0 bytes\); copy it again$",
        setup=lambda ws: files(ws, "empty.pth").write_bytes(b""),
    ),
    Case(
        "empty teacher safetensors",
        T,
        ["teacher.checkpoint={ws}/files/empty.safetensors"],
        r"cannot read .*empty\.safetensors: truncated or corrupt \(the file is empty, 0 bytes\)",
        setup=lambda ws: files(ws, "empty.safetensors").write_bytes(b""),
    ),
    Case(
        "text file as checkpoint",
        T,
        ["teacher.checkpoint={ws}/files/notes.pth"],
        r"cannot read .*notes\.pth: not a PyTorch checkpoint",
        setup=lambda ws: files(ws, "notes.pth").write_text("these are my notes\n"),
    ),
    Case(
        "text file as safetensors",
        T,
        ["teacher.checkpoint={ws}/files/notes.safetensors"],
        r"cannot read .*notes\.safetensors .*not safetensors",
        setup=lambda ws: files(ws, "notes.safetensors").write_text("these are my notes\n" * 10),
    ),
    Case(
        "checkpoint is a directory",
        T,
        ["teacher.checkpoint={ws}/files"],
        r"teacher checkpoint .*files is a directory; give the checkpoint file",
    ),
    Case(
        "truncated checkpoint",
        T,
        ["teacher.checkpoint={ws}/files/cut.pth"],
        r"cannot read .*cut\.pth: truncated or corrupt",
        setup=lambda ws: files(ws, "cut.pth").write_bytes(
            write_model(files(ws, "full.pth"), torch_file=True).read_bytes()[:3000]
        ),
    ),
    Case(
        "crafted pickle does not run",
        T,
        ["teacher.checkpoint={ws}/files/evil.pth"],
        r"cannot load .*evil\.pth safely.*weights_only=True",
        setup=crafted_pickle,
        then=nothing_ran,
    ),
    Case(
        "checkpoint of another arch",
        T,
        ["teacher.checkpoint={ws}/files/small.safetensors"],
        r"holds a cnn_small, but teacher\.arch=cnn1d; set teacher\.arch=cnn_small",
        setup=lambda ws: write_model(files(ws, "small.safetensors"), "cnn_small"),
    ),
    Case(
        "torch checkpoint of another arch",
        T,
        ["teacher.checkpoint={ws}/files/small.pth"],
        r"holds a cnn_small-shaped model.*set teacher\.arch=cnn_small",
        setup=lambda ws: write_model(files(ws, "small.pth"), "cnn_small", torch_file=True),
    ),
    Case(
        "teacher of another class count",
        T,
        ["teacher.checkpoint={ws}/files/c100.safetensors"],
        r"predicts 100 classes but the data has 10; use a teacher trained on this data",
        setup=lambda ws: write_model(files(ws, "c100.safetensors"), classes=100),
    ),
    Case(
        "NaN teacher",
        T,
        ["teacher.checkpoint={ws}/files/nan.safetensors"],
        r"teacher checkpoint .*nan\.safetensors has non-finite weights \(3 NaN in conv1\.0\.weight\): its training "
        r"diverged or the file is damaged; give another checkpoint, or retrain it",
        setup=lambda ws: write_model(files(ws, "nan.safetensors"), poison="nan"),
    ),
    Case(
        "inf teacher (torch file)",
        T,
        ["teacher.checkpoint={ws}/files/inf.pth"],
        r"teacher checkpoint .*inf\.pth has non-finite weights \(3 infinite in conv1\.0\.weight\)",
        setup=lambda ws: write_model(files(ws, "inf.pth"), poison="inf", torch_file=True),
    ),
    Case(
        "poisoned teacher cache",
        T,
        [],
        r"the cached mnist1d-cnn1d-\w+ cannot be used \(teacher checkpoint .*teacher\.safetensors has non-finite weights "
        r"\(3 NaN in conv1\.0\.weight\).*\); training it again",
        setup=poisoned_cache,
        warning=True,
        changes=("cache",),
        then=cache_was_replaced,
    ),
    Case(
        "missing pretrained_path",
        T,
        ["+student.pretrained_path={ws}/files/none.safetensors"],
        r"pretrained_path .*none\.safetensors does not exist; give a local weights file",
    ),
    Case(
        "pretrained_path a text file",
        T,
        ["+student.pretrained_path={ws}/files/notes.ckpt"],
        r"cannot read .*notes\.ckpt: not a PyTorch checkpoint",
        setup=lambda ws: files(ws, "notes.ckpt").write_text("not a checkpoint\n"),
    ),
    # --- data files
    Case(
        "mnist1d wrong length",
        T,
        ["data.root={ws}/data"],
        r"MNIST-1D file .*\.npz is inconsistent \(x has 3999 rows, y 4000\); delete it",
        setup=lambda ws: MNIST1D_CHANGES(ws, "x"),
    ),
    Case(
        "mnist1d labels out of range",
        T,
        ["data.root={ws}/data"],
        r"MNIST-1D file .*\.npz is inconsistent \(y_test has labels outside 0\.\.9: 12\); delete it",
        setup=lambda ws: MNIST1D_CHANGES(ws, "y_test"),
    ),
    Case(
        "mnist1d missing array",
        T,
        ["data.root={ws}/data"],
        r"MNIST-1D file .*\.npz is inconsistent \(no x_test\); delete it",
        setup=lambda ws: MNIST1D_CHANGES(ws, "x_test"),
    ),
    Case(
        "mnist1d truncated file is regenerated",
        T,
        ["data.root={ws}/data", "method=none"],
        r"MNIST-1D file .*\.npz is unreadable .*; generating it again",
        setup=lambda ws: MNIST1D_CHANGES(ws, "truncate"),
        warning=True,
        changes=("data",),
    ),
    Case(
        "mnist1d root not writable",
        T,
        ["data.root={ws}/files/a_file/data"],
        r"cannot write MNIST-1D under .*a_file/data/mnist1d .*; set data\.root",
        setup=lambda ws: files(ws, "a_file").write_text("keep me\n"),
    ),
    Case(
        "cifar labels out of range",
        T,
        ["data=cifar10", "data.root={ws}/cifar", "student=cnn_tiny", "method=none"],
        r"CIFAR file .*test_batch has labels outside 0\.\.9 \(12\); delete it and run with data\.download=true",
        setup=lambda ws: fake_cifar(ws, label=12),
    ),
    Case(
        "cifar tampered pickle does not run",
        T,
        ["data=cifar10", "data.root={ws}/cifar", "student=cnn_tiny", "method=none"],
        r"cannot read CIFAR file .*data_batch_2 \(UnpicklingError: refusing to load posix\.system\); delete it",
        setup=lambda ws: fake_cifar(ws, evil=True),
        then=nothing_ran,
    ),
    Case(
        "cifar missing",
        T,
        ["data=cifar100", "data.root={ws}/files", "student=cnn_tiny", "method=none"],
        r"CIFAR-100 not found under .*; run once with data\.download=true",
    ),
    Case(
        "image folder missing",
        T,
        ["data=imagefolder", "data.root={ws}/nowhere", "student=cnn_tiny", "method=none"],
        r"image folder .*nowhere does not exist; set data\.root=",
    ),
    Case(
        "image folder not given",
        T,
        ["data=imagefolder", "student=cnn_tiny", "method=none"],
        r"data\.root is missing; set data\.root=",
    ),
    # --- sweeps
    Case("n_trials=abc", S, ["sweep.n_trials=abc"], r"sweep\.n_trials=abc is not an integer >= 0$"),
    Case("n_trials=-2", S, ["sweep.n_trials=-2"], r"sweep\.n_trials=-2 is not an integer >= 0$"),
    Case("direction", S, ["sweep.direction=up"], r"sweep\.direction=up is not one of maximize, minimize$"),
    Case("timeout<0", S, ["sweep.timeout=-5"], r"sweep\.timeout=-5 is not a number > 0 or null$"),
    Case(
        "metric never logged",
        S,
        ["sweep.metric=val/accuracy"],
        r"sweep\.metric=val/accuracy is never logged \(closest: val/acc\b",
    ),
    Case(
        "metric of another strategy",
        S,
        ["strategy=born_again", "sweep.metric=val/acc"],
        r"sweep\.metric=val/acc is never logged \(closest: gen2/val/acc",
    ),
    Case(
        "categorical group choice missing",
        S,
        ["~sweep.params", "+sweep.params={method:{type:categorical,choices:[kd,kdd]}}"],
        r"sweep\.params\.method: choice kdd cannot run \(.*Could not find 'method/kdd' \(closest: kd",
    ),
    Case(
        "categorical value invalid",
        S,
        ["~sweep.params", "+sweep.params={student.optimizer.lr:{type:categorical,choices:[0.01,-1]}}"],
        r"sweep\.params\.student\.optimizer\.lr: choice -1 cannot run \(student\.optimizer\.lr=-1 is not a number > 0\)",
    ),
    Case(
        "range outside the valid values",
        S,
        ["~sweep.params", "+sweep.params={method.terms.kd.temperature:{type:float,low:-1,high:4}}"],
        r"sweep\.params\.method\.terms\.kd\.temperature: low -1\.0 cannot run \(method\.terms\.kd\.temperature=-1\.0 is",
    ),
    Case(
        "low > high",
        S,
        ["~sweep.params", "+sweep.params={student.optimizer.lr:{type:float,low:0.1,high:0.01}}"],
        r"sweep\.params\.student\.optimizer\.lr: float needs numbers low < high, got low=0\.1, high=0\.01",
    ),
    Case(
        "log with low <= 0",
        S,
        ["~sweep.params", "+sweep.params={student.optimizer.lr:{type:float,low:0,high:0.1,log:true}}"],
        r"log scale needs low > 0, got 0",
    ),
    Case(
        "unknown search key",
        S,
        ["~sweep.params", "+sweep.params={method.terms.kd.temprature:{type:float,low:1,high:2}}"],
        r"no config key 'method\.terms\.kd\.temprature' \(closest: method\.terms\.kd\.temperature",
    ),
    Case(
        "unknown setting",
        S,
        ["~sweep.params", "+sweep.params={student.optimizer.lr:{type:float,low:0.001,high:0.1,lg:true}}"],
        r"unknown setting\(s\) \['lg'\]; use low, high, log, step or choices",
    ),
    Case(
        "int range with a fraction",
        S,
        ["~sweep.params", "+sweep.params={data.batch_size:{type:int,low:16.5,high:64}}"],
        r"sweep\.params\.data\.batch_size: int needs integers low < high, got low=16\.5",
    ),
    Case(
        "unknown sweep",
        S,
        ["sweeps=kd_temp"],
        r"Could not find 'sweeps/kd_temp' \(closest: kd_temperature_alpha",
        base=False,
    ),
    Case("no sweep", S, ["method=kd"], r"no sweep given; usage: kdlab-sweep sweeps=<name>", base=False),
    Case("--n-jobs abc", S, ["--n-jobs", "abc"], r"--n-jobs takes a number"),
    Case(
        "sampler unknown",
        S,
        ["sweep.sampler._target_=optuna.samplers.TPESamplr"],
        r"sweep\.sampler\._target_=optuna\.samplers\.TPESamplr cannot be imported.*closest: optuna\.samplers\.TPESampler",
    ),
    Case(
        "sampler bad argument",
        S,
        ["+sweep.sampler.n_startup=5"],
        r"sweep\.sampler\.n_startup: TPESampler takes no argument 'n_startup' \(closest: n_startup_trials",
    ),
    Case(
        "pruner bad value",
        S,
        ["sweep.pruner.n_warmup_steps=abc"],
        r"sweep\.pruner\.n_warmup_steps=abc is not an integer",
    ),
    Case(
        "storage unknown scheme",
        S,
        ["sweep.storage=nosuchdb://x/y"],
        r"cannot open sweep storage nosuchdb://x/y",
    ),
    Case(
        "existing study of the other direction",
        S,
        ["sweep.direction=minimize", "sweep.n_trials=0"],
        r"study kd_temperature_alpha exists with direction maximize, not minimize",
    ),
    # --- compare
    Case("compare no paths", C, [], r"give folders with results\.json files, or --wandb"),
    Case("compare missing folder", C, ["{ws}/nowhere"], r"nowhere does not exist"),
    Case("compare empty folder", C, ["{ws}/files"], r"no results\.json found under .*files"),
    Case(
        "compare folder without results",
        C,
        ["{ws}/files"],
        r"no results\.json found under .*files",
        setup=lambda ws: files(ws, "notes.txt").write_text("no runs here\n"),
    ),
    Case(
        "compare only corrupt results",
        C,
        ["{ws}/bad"],
        r"no readable results\.json under .*bad \(1 skipped: .*run0/results\.json: not JSON",
        setup=lambda ws: (
            (ws / "bad" / "run0").mkdir(parents=True) or (ws / "bad/run0/results.json").write_text('{"a": ')
        ),
    ),
    Case(
        "compare accuracy of the wrong type",
        C,
        ["{ws}/typed", "--out", "{ws}/report"],
        r"skipped .*results\.json: student\.test_acc is a str, not a number",
        setup=lambda ws: results_dir(ws, "typed", student__test_acc="high") or results_dir(ws, "typed", "run1"),
        warning=True,
    ),
    Case(
        "compare student section a list",
        C,
        ["{ws}/typed", "--out", "{ws}/report"],
        r"skipped .*results\.json: student is a list, not a mapping",
        setup=lambda ws: results_dir(ws, "typed", student=[1, 2]) or results_dir(ws, "typed", "run1"),
        warning=True,
    ),
    Case(
        "compare params of the wrong type",
        C,
        ["{ws}/typed", "--out", "{ws}/report"],
        r"skipped .*results\.json: teacher\.params is a str, not a number",
        setup=lambda ws: results_dir(ws, "typed", teacher__params="5k") or results_dir(ws, "typed", "run1"),
        warning=True,
    ),
    Case(
        "compare per-class lists of other lengths",
        C,
        ["{ws}/typed", "--out", "{ws}/report"],
        r"skipped .*results\.json: student\.per_class_acc has 3 classes, teacher\.per_class_acc 10",
        setup=lambda ws: (
            results_dir(ws, "typed", student__per_class_acc=[0.1, 0.2, 0.3]) or results_dir(ws, "typed", "run1")
        ),
        warning=True,
    ),
    Case(
        "compare --out an existing file",
        C,
        ["{ws}/typed", "--out", "{ws}/files/a_file"],
        r"--out .*a_file is an existing file; give a folder",
        setup=lambda ws: results_dir(ws, "typed") or files(ws, "a_file").write_text("keep me\n"),
    ),
    Case(
        "compare unknown metric",
        C,
        ["{ws}/typed", "--metric", "student.test_accuracy", "--out", "{ws}/report"],
        r"--metric student\.test_accuracy is in no results\.json \(closest: student\.test_acc",
        setup=lambda ws: results_dir(ws, "typed"),
    ),
    Case(
        "compare bad --format",
        C,
        ["{ws}/typed", "--format", "html"],
        r"argument --format: invalid choice: 'html'.*see kdlab-compare --help",
        setup=lambda ws: results_dir(ws, "typed"),
    ),
]


def MNIST1D_CHANGES(ws: Path, what: str) -> None:  # noqa: N802 (a table of faults, by name)
    src = Path(os.environ["KDLAB_DATA_DIR"]) / "mnist1d" / "mnist1d_n5000_seed42.npz"
    if what == "truncate":
        folder = ws / "data" / "mnist1d"
        folder.mkdir(parents=True)
        (folder / src.name).write_bytes(src.read_bytes()[:5000])
        return
    with np.load(src) as f:
        arrays = {k: f[k] for k in f.files}
    change = {
        "x": {"x": arrays["x"][:-1]},
        "y_test": {"y_test": np.where(np.arange(len(arrays["y_test"])) == 5, 12, arrays["y_test"])},
        "x_test": {"x_test": None},
    }[what]
    mnist1d_copy(ws, src, **change)


TRAIN_BASE = [*FAST]
SWEEP_BASE = ["sweeps=kd_temperature_alpha", "sweep.worker=0", *FAST]


def argv(case: Case, ws: Path) -> list[str]:
    args = [a.replace("{ws}", str(ws)) for a in case.args]
    if not case.base:
        base = {T: [f"hydra.run.dir={ws / 'run'}"], S: [], C: []}[case.tool]
        base = [] if any(a.startswith("hydra.run.dir=") for a in args) else base
        if case.tool == T:
            base += ["logger=none", "trainer.enable_progress_bar=false"] if "logger=" not in " ".join(args) else []
        return [*base, *args]
    if case.tool == T:  # a run that goes through (a warning case) writes into a directory of its own
        return [*TRAIN_BASE, f"hydra.run.dir={ws / ('new_run' if case.warning else 'run')}", *args]
    if case.tool == S:
        return [*SWEEP_BASE, *args]
    return args


def _param(case: Case):
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input(case: Case, ws: Path, mnist1d_file: Path, capfd, monkeypatch):
    if case.setup:
        case.setup(ws)
    before = snapshot(ws)
    result = invoke(case.tool, argv(case, ws), capfd, monkeypatch)
    everything = result.out + result.err
    assert "Traceback" not in everything, everything[-3000:]
    if case.warning:
        assert result.code == 0, everything[-3000:]
        assert re.search(case.says, everything), everything[-3000:]
    else:
        assert result.code == 1, everything[-3000:]
        prog = f"kdlab-{case.tool}: error: "
        errors = [line for line in result.lines if not line.startswith("kdlab: ")]  # notes (renamed keys) may precede
        assert len(errors) == 1 and errors[0].startswith(prog), result.err[-3000:]
        assert re.search(case.says, errors[0][len(prog) :]), errors[0]
    after = snapshot(ws)
    for path, data in before.items():
        if path.startswith(case.changes) and case.changes:
            continue
        assert path in after, f"{path} was deleted"
        assert after[path] == data, f"{path} was changed"
    if case.then:
        case.then(ws, everything)


def test_the_corpus_is_large_and_covers_every_tool():
    assert len(CASES) >= 60
    assert {c.tool for c in CASES} == {T, S, C}
    assert len({c.id for c in CASES}) == len(CASES)


def test_a_teacher_with_non_finite_weights_is_never_cached(tmp_path, monkeypatch):
    from kdlab.config import compose
    from kdlab.context import RunContext
    from kdlab.data import MNIST1D
    from kdlab.teacher import WEIGHTS_FILE, cache_entry, cache_teacher, teacher_key, teacher_recipe

    monkeypatch.setenv("KDLAB_CACHE_DIR", str(tmp_path / "cache"))
    cfg, _ = compose(FAST)
    data = MNIST1D(root=os.environ["KDLAB_DATA_DIR"])
    run = RunContext(cfg, data, tmp_path / "run")
    model = create_model("cnn1d", 10, (1, 40))
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    with pytest.raises(KdlabError, match=r"teacher cnn1d trained by kdlab has non-finite weights.*nothing was cached"):
        cache_teacher(run, cfg.teacher, model, {"val_acc_best": 0.1})
    entry = cache_entry(cfg.paths.cache_dir, teacher_key(teacher_recipe(cfg.teacher, cfg.data), "mnist1d"))
    assert not (entry / WEIGHTS_FILE).exists()


# ---------------------------------------------------------------------------------------------
# a run that diverges says so


#: The warning reaches results.json and the summary only when kdlab/train.py records it.
WARNINGS = (
    None
    if "divergence_warning" in inspect.getsource(sys.modules["kdlab.train"])
    else "kdlab/train.py does not record divergence_warning(...) in results['warnings'] yet"
)


def test_divergence_warning_says_when_the_trained_model_is_at_chance():
    from kdlab.report import divergence_warning

    learned = {"student": {"test_acc": 0.7, "per_class_acc": [0.6, 0.8, 0.7, 0.7]}}
    assert divergence_warning(learned, 4) is None
    guessing = {"student": {"test_acc": 0.27, "per_class_acc": [0.2, 0.3, 0.3, 0.28]}}  # chance 25%, +20% margin
    assert "student is no better than guessing: test accuracy 27.0% with 4 classes (chance 25.0%)" in (
        divergence_warning(guessing, 4)
    )
    # one class predicted for everything: its share of an unbalanced test set (40%), still chance
    collapsed = {"student": {"test_acc": 0.4, "per_class_acc": [1.0, 0.0, 0.01, 0.0]}}
    assert "predicts one class for almost every input" in divergence_warning(collapsed, 4)
    teacher_only = {"student": None, "teacher": {"test_acc": 0.1, "per_class_acc": [0.1] * 10}}
    assert divergence_warning(teacher_only, 10).startswith("the teacher is no better than guessing")
    assert divergence_warning({"student": {"test_acc": None}}, 10) is None


def test_the_summary_prints_the_warnings(capsys):
    from kdlab.report import print_summary

    results = {**previous_results(), "warnings": ["the student predicts one class for almost every input"]}
    print_summary(results, "results.json")
    assert "warning: the student predicts one class for almost every input" in capsys.readouterr().out


def test_a_diverged_run_is_at_chance_with_a_finite_loss_and_is_flagged(train):
    from kdlab.report import divergence_warning

    r = train(["method=none", "student.optimizer.lr=1e6", "trainer.max_epochs=2", "measure_speed=false"])
    assert r["student"]["test_acc"] < 0.15  # the loss stayed finite (the run finished), the accuracy is chance
    warning = divergence_warning(r, 10)
    assert warning is not None and "lower student.optimizer.lr" in warning


@pytest.mark.xfail(WARNINGS is not None, reason=WARNINGS or "", strict=True)
def test_a_diverged_run_records_the_warning_in_results_json_and_the_summary(train, capsys):
    from kdlab.report import divergence_warning

    r = train(["method=none", "student.optimizer.lr=1e6", "trainer.max_epochs=2", "measure_speed=false"])
    on_disk = json.loads((r["_dir"] / "results.json").read_text())
    assert on_disk["warnings"] == [divergence_warning(on_disk, 10)] and on_disk["warnings"][0]
    assert f"warning: {on_disk['warnings'][0]}" in " ".join(capsys.readouterr().out.split())


# ---------------------------------------------------------------------------------------------
# outputs get the mode of any other file


@pytest.fixture
def umask():
    def set_(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_
    os.umask(old)


def test_results_exported_student_and_cached_teacher_get_the_ordinary_mode(train, cache_dir, umask):
    umask(0o022)
    r = train([])
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(r["_dir"] / "results.json") == 0o644
    assert mode(r["_dir"] / "student.safetensors") == 0o644
    assert mode(r["_dir"] / "student.json") == 0o644
    (cached,) = (cache_dir / "teachers").glob("*/teacher.safetensors")
    assert mode(cached) == 0o644


def test_the_mode_follows_the_umask(tmp_path, umask):
    from kdlab.data.mnist1d import load_mnist1d
    from kdlab.report import write_results

    umask(0o027)
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(write_results(previous_results(), tmp_path)) == 0o640
    assert mode(save_weights(create_model("mlp", 10, (1, 40)), tmp_path / "w.safetensors", "mlp", 10, (1, 40))) == 0o640
    load_mnist1d(tmp_path / "data", num_samples=200)
    (generated,) = (tmp_path / "data" / "mnist1d").glob("*.npz")
    assert mode(generated) == 0o640
    assert not list(tmp_path.glob("**/*.tmp"))  # no temporary file left behind


def test_the_console_script_prints_the_same_one_line(tmp_path):
    """One case through the installed ``kdlab-train`` in a fresh process (the corpus runs ``cli()``
    in-process): stderr is the one line, whatever logging and warnings a real start brings."""
    import subprocess

    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    p = subprocess.run(
        [
            str(Path(sys.executable).parent / "kdlab-train"),
            "logger=none",
            f"teacher.checkpoint={empty}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KDLAB_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert p.returncode == 1 and "Traceback" not in p.stdout + p.stderr
    assert p.stderr.strip().splitlines() == [
        f"kdlab-train: error: cannot read {empty}: truncated or corrupt (the file is empty, 0 bytes); copy it again"
    ]
