"""Resume: a run started again continues from its own last.ckpt to the result it would have had
uninterrupted; a checkpoint of another config is refused; checkpoints are written atomically."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import load_file

import kdlab.resume
from kdlab.config import compose
from kdlab.errors import KdlabError
from kdlab.train import run

BIN = Path(sys.executable).parent
FAST = ["logger=none", "measure_speed=false", "trainer.enable_progress_bar=false", "trainer.max_epochs=3"]


class Crash(RuntimeError):
    pass


class CrashAt(pl.Callback):
    """Dies at the start of epoch ``epoch`` of the fit logging ``prefix``: the checkpoints of the
    epochs before are on disk, as after a kill -9 between epochs."""

    def __init__(self, epoch: int, fit: str = ""):
        self.epoch, self.fit = epoch, fit

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == self.epoch and getattr(module, "log_prefix", "") == self.fit:
            raise Crash(f"killed at epoch {self.epoch}")


def train(out, *overrides, callbacks=()):
    cfg, _ = compose([*FAST, *overrides])
    return run(cfg, out, callbacks=list(callbacks), summary=False)


def weights(path):
    return load_file(str(path / "student.safetensors"))


def assert_same_run(a: dict, b: dict, dir_a, dir_b):
    for k in ("test_acc", "val_acc_best", "test_acc_best_epoch", "test_acc_best_val"):
        assert a["student"][k] == b["student"][k], k
    assert a["fidelity"] == b["fidelity"] and a["calibration"] == b["calibration"]
    wa, wb = weights(dir_a), weights(dir_b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module", autouse=True)
def teacher_cache(tmp_path_factory):
    """One teacher cache for the module's runs (the teacher trains once)."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("cache")
        mp.setenv("KDLAB_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    return train(out), out


def test_crashed_run_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path, caplog):
    whole, whole_dir = uninterrupted
    assert whole["resumed_from"] is None
    with pytest.raises(Crash):
        train(tmp_path, callbacks=[CrashAt(2)])
    assert not (tmp_path / "results.json").exists()
    assert torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)["epoch"] == 1
    with caplog.at_level(logging.INFO, logger="kdlab"):
        resumed = train(tmp_path)  # the same command
    assert resumed["resumed_from"] == 1  # the epoch of the checkpoint it continued from (0-based)
    assert any("resuming from" in r.getMessage() for r in caplog.records)
    assert_same_run(whole, resumed, whole_dir, tmp_path)
    # one last.ckpt (the latest epoch), one best, nothing versioned or half-written beside them
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert len(names) == 2 and names[0].startswith("best-epoch") and names[1] == "last.ckpt"
    assert torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)["epoch"] == 2
    assert json.loads((tmp_path / "results.json").read_text())["resumed_from"] == 1


def test_finished_run_lengthened_continues_from_its_last_epoch(tmp_path):
    train(tmp_path)
    longer = train(tmp_path, "trainer.max_epochs=4")  # the run length may change (T_max follows it)
    assert longer["resumed_from"] == 2
    assert torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)["epoch"] == 3


def test_other_config_is_refused_naming_the_keys(tmp_path):
    with pytest.raises(Crash):
        train(tmp_path, callbacks=[CrashAt(1)])
    before = (tmp_path / "checkpoints/last.ckpt").read_bytes()
    with pytest.raises(KdlabError) as e:
        train(tmp_path, "seed=1", "method.terms.kd.temperature=2")
    msg = str(e.value)
    assert "\n" not in msg and "seed: 0 -> 1" in msg and "method.terms.kd.temperature" in msg and "resume=never" in msg
    assert (tmp_path / "checkpoints/last.ckpt").read_bytes() == before  # nothing lost


def test_resume_never_starts_over(tmp_path, caplog):
    with pytest.raises(Crash):
        train(tmp_path, callbacks=[CrashAt(1)])
    with caplog.at_level(logging.WARNING, logger="kdlab"):
        fresh = train(tmp_path, "resume=never", "seed=1")
    assert fresh["resumed_from"] is None
    assert any("resume=never" in r.getMessage() and "overwriting" in r.getMessage() for r in caplog.records)
    assert torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)["epoch"] == 2


def test_explicit_checkpoint_path(uninterrupted, tmp_path):
    whole, whole_dir = uninterrupted
    crashed = tmp_path / "crashed"
    with pytest.raises(Crash):
        train(crashed, callbacks=[CrashAt(1)])
    resumed = train(tmp_path / "elsewhere", f"resume={crashed}/checkpoints/last.ckpt")
    assert resumed["resumed_from"] == 0
    assert_same_run(whole, resumed, whole_dir, tmp_path / "elsewhere")


@pytest.mark.parametrize(
    "content, expected",
    [(b"", "not a readable checkpoint"), (b"PK\x03\x04 truncated", "not a readable checkpoint")],
)
def test_unreadable_checkpoint_is_not_trusted(tmp_path, content, expected):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints/last.ckpt").write_bytes(content)
    with pytest.raises(KdlabError, match=expected):
        train(tmp_path)
    with pytest.raises(KdlabError, match="no such checkpoint"):
        train(tmp_path / "x", "resume=/nonexistent/last.ckpt")


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_save = torch.save

    def save_until_full(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] > 4:  # epochs 0 and 1 write best + last; epoch 2's write finds the disk full
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(kdlab.resume.torch, "save", save_until_full)
    with pytest.raises(KdlabError, match="disk full while writing .* intact"):
        train(tmp_path)
    monkeypatch.undo()
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert not [n for n in ckpts if n.endswith(".tmp")]
    assert torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)["epoch"] == 1  # intact, loadable
    assert train(tmp_path)["resumed_from"] == 1  # and the same command goes on once space is back


def test_born_again_resumes_in_the_generation_it_was_in(tmp_path):
    over = ["strategy=born_again", "strategy.generations=2", "trainer.max_epochs=2"]
    whole = train(tmp_path / "whole", *over)
    with pytest.raises(Crash):
        train(tmp_path / "cut", *over, callbacks=[CrashAt(1, "gen1/")])
    resumed = train(tmp_path / "cut", *over)
    assert resumed["resumed_from"] == 0  # generation 1's checkpoint (generation 0 had finished)
    assert_same_run(whole, resumed, tmp_path / "whole", tmp_path / "cut")
    assert [g["test_acc"] for g in whole["generations"]] == [g["test_acc"] for g in resumed["generations"]]


@pytest.mark.parametrize("overrides", [["strategy=online"], ["method=crd", "method.terms.crd.nce_k=64"]])
def test_online_peers_and_term_state_resume(tmp_path, overrides):
    whole = train(tmp_path / "whole", *overrides)
    with pytest.raises(Crash):
        train(tmp_path / "cut", *overrides, callbacks=[CrashAt(2)])
    resumed = train(tmp_path / "cut", *overrides)
    assert resumed["resumed_from"] == 1
    assert_same_run(whole, resumed, tmp_path / "whole", tmp_path / "cut")
    if "peers" in whole:
        assert [p["test_acc"] for p in whole["peers"]] == [p["test_acc"] for p in resumed["peers"]]


def test_wandb_run_is_resumed_by_id(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    over = ["logger=wandb", "trainer.max_epochs=2"]
    with pytest.raises(Crash):
        train(tmp_path, *over, callbacks=[CrashAt(1)])
    first_id = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)["kdlab"]["wandb_id"]
    assert first_id
    resumed = train(tmp_path, *over)
    assert resumed["wandb"]["id"] == first_id


def test_deterministic_runs_are_bit_identical(tmp_path):
    a = train(tmp_path / "a", "trainer.deterministic=true", "trainer.max_epochs=2")
    b = train(tmp_path / "b", "trainer.deterministic=true", "trainer.max_epochs=2")
    drop = {"wall_s", "efficiency", "export"}  # timings, and the paths of the files written
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
    assert_same_run(a, b, tmp_path / "a", tmp_path / "b")


def test_same_command_continues_the_unfinished_run_of_the_default_directory(tmp_path, teacher_cache):
    """kdlab-train's default directory is new at every start (outputs/<task>/<date>/<time>): started
    again, the same command continues the newest unfinished run of its config, in that run's directory."""
    runs = tmp_path / "outputs" / "distill"
    with pytest.raises(Crash):
        train(runs / "2026-01-01" / "10-00-00", callbacks=[CrashAt(1)])
    train(runs / "2026-01-01" / "09-00-00", "seed=3")  # another config: not continued
    env = {**os.environ, "KDLAB_CACHE_DIR": str(teacher_cache)}
    cmd = [str(BIN / "kdlab-train"), *FAST]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "continuing the unfinished run of this config in" in out.stdout + out.stderr
    results = json.loads((runs / "2026-01-01" / "10-00-00" / "results.json").read_text())
    assert results["resumed_from"] == 0
    # finished now: the next start is a run of its own
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "continuing" not in again.stdout + again.stderr
    assert len(list(runs.glob("*/*/results.json"))) == 3


def test_checkpoints_leave_the_frozen_teacher_out(uninterrupted):
    _, whole_dir = uninterrupted
    state = torch.load(whole_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert any(k.startswith("student.") for k in state) and not any(k.startswith("teacher.") for k in state)


@pytest.mark.parametrize(
    "overrides",
    [
        # the strong view's own generator, DOT's two momentum buffers, the manual scheduler steps
        [
            "method=mlkd",
            "data.strong_view=true",
            "student.optimizer._target_=kdlab.optim.DOT",
            "+student.optimizer.momentum=0.9",
        ],
        # SimKD's deployable student (backbone, projector, the teacher's head) in the checkpoint
        ["method=simkd", "teacher=cnn_small", "student=cnn1d_narrow", "teacher.max_epochs=2"],
    ],
    ids=["mlkd-strong-view-dot", "simkd"],
)
def test_the_2022_2024_methods_resume_to_the_uninterrupted_result(tmp_path, overrides):
    whole = train(tmp_path / "whole", *overrides)
    with pytest.raises(Crash):
        train(tmp_path / "crashed", *overrides, callbacks=[CrashAt(2)])
    resumed = train(tmp_path / "crashed", *overrides)
    assert resumed["resumed_from"] == 1
    assert_same_run(whole, resumed, tmp_path / "whole", tmp_path / "crashed")
