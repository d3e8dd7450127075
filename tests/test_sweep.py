"""kdlab-sweep: search spaces, pruning, resume, W&B groups, failures, PostgreSQL workers, the dashboard."""

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from kdlab import ROOT
from kdlab.errors import KdlabError
from kdlab.sweep.run import load_sweep, sweep
from kdlab.sweep.space import parse_space
from tests.conftest import compose_cfg

BIN = Path(sys.executable).parent
SWEEPS = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))
# a few batches per epoch; the learning rate decides who is pruned: 1e-9 learns nothing
TINY = [
    "trainer.max_epochs=2",
    "+trainer.limit_train_batches=10",
    "trainer.enable_progress_bar=false",
    "teacher.max_epochs=1",
    "sweep.worker=0",
    "~sweep.params",
    "+sweep.params={student.optimizer.lr:{type:categorical,choices:[0.01,1e-9]}}",
    "sweep.pruner.n_startup_trials=1",
    "sweep.pruner.n_warmup_steps=0",
]


@pytest.mark.parametrize("name", SWEEPS)
def test_shipped_sweeps_compose_and_parse(name):
    cfg, space = load_sweep([f"sweeps={name}"])
    assert space and cfg.sweep.study_name == name and cfg.sweep.direction == "maximize"


def test_kd_sweep_searches_temperature_and_weight():
    cfg = compose_cfg(["sweeps=kd_temperature_alpha"])
    space = {p.key: p for p in parse_space(cfg.sweep.params, cfg)}
    t = space["method.terms.kd.temperature"]
    assert (t.low, t.high, t.log) == (1.0, 20.0, True)
    w = space["method.terms.kd.weight"]
    assert (w.low, w.high, w.log) == (0.0, 1.0, False)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"method.terms.kd.temprature": {"type": "float", "low": 1, "high": 2}},
            r"no config key 'method.terms.kd.temprature' \(closest: method.terms.kd.temperature",
        ),
        ({"student.optimizer.lr": {"type": "float", "low": 0.1, "high": 0.01}}, r"low < high"),
        ({"student.optimizer.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, r"log scale needs low > 0"),
        ({"student.optimizer.lr": {"type": "uniform", "low": 0.0, "high": 0.1}}, r"type: float\|int\|categorical"),
        ({"student.optimizer.lr": {"type": "float", "low": 0.0, "high": 0.1, "lg": True}}, r"unknown setting"),
        ({"method": {"type": "float", "low": 0, "high": 1}}, r"config group; search it with type: categorical"),
        ({"method": {"type": "categorical", "choices": []}}, r"non-empty 'choices'"),
        ({}, r"sweep.params is empty"),
    ],
)
def test_bad_search_spaces_fail_clearly(params, message):
    with pytest.raises(KdlabError, match=message):
        parse_space(params, compose_cfg(["sweeps=kd_temperature_alpha"]))


def test_group_choices_and_int_params_are_searchable():
    cfg = compose_cfg(["sweeps=kd_temperature_alpha"])
    space = parse_space(
        {
            "method": {"type": "categorical", "choices": ["kd", "dkd"]},
            "data.batch_size": {"type": "int", "low": 32, "high": 128, "step": 32},
        },
        cfg,
    )
    study = optuna.create_study()
    trial = study.ask()
    overrides = [p.override(p.suggest(trial)) for p in space]
    assert overrides[0] in ("method=kd", "method=dkd") and overrides[1].startswith("data.batch_size=")
    assert int(overrides[1].split("=")[1]) in (32, 64, 96, 128)


@pytest.fixture
def sweep_dir(tmp_path, monkeypatch, cache_dir):
    path = tmp_path / "sweeps"
    monkeypatch.setenv("KDLAB_SWEEP_DIR", str(path))
    return path


def load(sweep_dir, name="kd_temperature_alpha"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir / 'optuna.db'}")


def wandb_run(run_dir: Path) -> tuple[str, dict]:
    """(group, final summary view) of an offline W&B run, read back with `wandb leet inspect`."""
    leet = [str(BIN / "wandb"), "leet", "inspect", "--json"]
    records = subprocess.run([*leet, str(run_dir)], capture_output=True, text=True, check=True).stdout
    group = next(json.loads(line)["run"]["run_group"] for line in records.splitlines() if '"type":"run"' in line)
    summary = subprocess.run([*leet, "--summary", str(run_dir)], capture_output=True, text=True, check=True).stdout
    return group, json.loads(summary)


def test_sqlite_sweep_prunes_logs_each_trial_to_wandb_and_resumes(sweep_dir, caplog, capsys):
    caplog.set_level(logging.INFO, logger="kdlab")
    sweep(["sweeps=kd_temperature_alpha", "sweep.n_trials=4", "logger=wandb", *TINY])
    study = load(sweep_dir)
    states = [t.state for t in study.trials]
    assert len(states) == 4 and TrialState.PRUNED in states and TrialState.COMPLETE in states
    assert caplog.text.count("no cached mnist1d-cnn1d") == 1  # the teacher is trained once, then reused
    study_dir = sweep_dir / "kd_temperature_alpha"
    best = json.loads((study_dir / "best.json").read_text())
    assert best["best_params"] == {"student.optimizer.lr": 0.01} and best["trials"]["pruned"] >= 1
    assert (
        best["command"].startswith("kdlab-train sweeps=kd_temperature_alpha ")
        and "student.optimizer.lr=0.01" in best["command"]
    )
    assert "run it: kdlab-train sweeps=kd_temperature_alpha" in capsys.readouterr().out
    for t in study.trials:
        (run_dir,) = (study_dir / f"trial_{t.number:03d}" / "wandb").glob("offline-run-*")
        group, run = wandb_run(run_dir)
        assert group == "kd_temperature_alpha" and f"trial:{t.number}" in run["tags"]
        assert run["state"] == "finished" and run["summary"]["state"] == t.state.name.lower().replace(
            "complete", "finished"
        )
        assert ("pruned" in run["tags"]) == (t.state == TrialState.PRUNED)
        assert run["config"]["student"]["optimizer"]["lr"] == t.params["student.optimizer.lr"]
        if t.state == TrialState.COMPLETE:
            results = json.loads((study_dir / f"trial_{t.number:03d}" / "results.json").read_text())
            assert results["student"]["val_acc_best"] == pytest.approx(t.value, abs=1e-6)
    sweep(["sweeps=kd_temperature_alpha", "sweep.n_trials=2", "logger=none", *TINY])  # the same study, resumed
    assert len(load(sweep_dir).trials) == 6


def test_a_failing_trial_is_recorded_and_the_study_goes_on(sweep_dir):
    sweep(
        [
            "sweeps=kd_temperature_alpha",
            "sweep.n_trials=3",
            "logger=none",
            *TINY[:5],
            "~sweep.params",
            "+sweep.params={student.arch:{type:categorical,choices:[mlp,no_such_model]}}",
        ]
    )
    study = load(sweep_dir)
    by_arch = {t.params["student.arch"]: t.state for t in study.trials}
    assert len(study.trials) == 3 and by_arch.get("no_such_model", TrialState.FAIL) == TrialState.FAIL
    assert all(
        t.state == (TrialState.COMPLETE if t.params["student.arch"] == "mlp" else TrialState.FAIL) for t in study.trials
    )


def test_cli_reports_a_bad_search_key_in_one_line(tmp_path):
    p = subprocess.run(
        [
            str(BIN / "kdlab-sweep"),
            "sweeps=kd_temperature_alpha",
            "~sweep.params",
            "+sweep.params={method.terms.kd.temprature:{type:float,low:1,high:2}}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1].startswith("kdlab-sweep: error: sweep.params.method.terms.kd.temprature")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres(tmp_path):
    """A throw-away PostgreSQL server on 127.0.0.1 (`.ci/run` installs the binaries)."""
    bindir = next((Path(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"))[::-1]), None)
    initdb = shutil.which("initdb") or (str(bindir / "initdb") if bindir else None)
    if not initdb or not Path(initdb).exists():
        pytest.skip("PostgreSQL server binaries not installed (apt-get install -y postgresql)")
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # the server refuses root
    base = Path(tempfile.mkdtemp(prefix="kdlab-pg-"))  # outside pytest's 0700 tmp tree, for that user
    os.chmod(base, 0o755)
    data = base / "pg"
    data.mkdir()
    if as_postgres:
        shutil.chown(data, "postgres")
    port = free_port()
    subprocess.run(
        [*as_postgres, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], check=True, capture_output=True
    )
    subprocess.run(
        [
            *as_postgres,
            pg_ctl,
            "-D",
            str(data),
            "-l",
            str(data / "log"),
            "-w",
            "-o",
            f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_postgres, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_two_workers_fill_one_postgresql_study_with_distinct_trials(postgres, tmp_path, cache_dir):
    env = {**os.environ, "KDLAB_SWEEP_DIR": str(tmp_path / "sweeps"), "PYTHONWARNINGS": "ignore"}
    args = [
        "sweeps=kd_temperature_alpha",
        f"sweep.storage={postgres}",
        "sweep.n_trials=2",
        "logger=none",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=3",
        "trainer.enable_progress_bar=false",
        "teacher.max_epochs=1",
    ]
    # the study is created once, then two workers (as on two machines) add their trials to it
    subprocess.run(
        [str(BIN / "kdlab-sweep"), *args, "sweep.n_trials=0"],
        check=True,
        env=env,
        capture_output=True,
        cwd=tmp_path,
        timeout=300,
    )
    workers = [
        subprocess.Popen(
            [str(BIN / "kdlab-sweep"), *args, f"sweep.worker={i}"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert all(w.returncode == 0 for w in workers), [o[1][-2000:] for o in outputs]
    study = optuna.load_study(study_name="kd_temperature_alpha", storage=postgres)
    assert len(study.trials) == 4 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert {t.user_attrs["worker"] for t in study.trials} == {0, 1}
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4  # distinct, differently seeded


@pytest.fixture
def dashboard(tmp_path):
    db = tmp_path / "optuna.db"
    storage = f"sqlite:///{db}"
    study = optuna.create_study(study_name="kd_demo", storage=storage, direction="maximize")
    study.optimize(
        lambda t: 1 - (t.suggest_float("method.terms.kd.temperature", 1, 20, log=True) - 4) ** 2 / 400, n_trials=5
    )
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "optuna-dashboard"), "--host", "127.0.0.1", "--port", str(port), storage],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{base}/api/studies", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    try:
        yield base, study
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_dashboard_serves_the_study(dashboard):
    base, study = dashboard
    studies = json.loads(urllib.request.urlopen(f"{base}/api/studies", timeout=10).read())["study_summaries"]
    (entry,) = [s for s in studies if s["study_name"] == "kd_demo"]
    detail = json.loads(urllib.request.urlopen(f"{base}/api/studies/{entry['study_id']}", timeout=10).read())
    assert detail["name"] == "kd_demo" and len(detail["trials"]) == 5
    assert {p["name"] for t in detail["trials"] for p in t["params"]} == {"method.terms.kd.temperature"}


def test_dashboard_page_shows_the_trials_in_headless_chromium(dashboard, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("Chromium not installed (apt-get install -y chromium)")
    base, study = dashboard
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chrome'}",
        "--virtual-time-budget=20000",
        "--window-size=1280,900",
    ]
    page = f"{base}/dashboard/studies/{study._study_id}/trials"
    dom = subprocess.run([chromium, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert "kd_demo" in dom and "5 Trials" in dom and "method.terms.kd.temperature" in dom
    shot = tmp_path / "study.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", page], capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_n_jobs_starts_worker_processes_that_share_the_trials(sweep_dir):
    sweep(["sweeps=kd_temperature_alpha", "sweep.n_trials=2", "--n-jobs=2", "logger=none", *TINY])
    study = load(sweep_dir)
    assert 2 <= len(study.trials) <= 3  # a worker finishing its trial as the target is reached may add one
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
