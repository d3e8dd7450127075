"""kdlab-train end to end: results.json, the teacher cache, the timm path, W&B, errors, the CLI."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdlab.errors import KdlabError
from kdlab.models import create_model
from kdlab.models.checkpoint import save_weights
from kdlab.report import REQUIRED_KEYS

BIN = Path(sys.executable).parent


def check_fraction(x):
    assert isinstance(x, float) and 0.0 <= x <= 1.0


def test_distill_run_writes_every_results_key(train):
    r = train(["method=kd"])
    on_disk = json.loads((r["_dir"] / "results.json").read_text())
    assert list(on_disk)[: len(REQUIRED_KEYS)] == list(REQUIRED_KEYS) and "export" in on_disk
    head = (on_disk["task"], on_disk["strategy"], on_disk["method"], on_disk["data"], on_disk["seed"])
    assert head == ("distill", "offline", "kd", "mnist1d", 0)
    t, s = on_disk["teacher"], on_disk["student"]
    assert (t["arch"], t["params"], s["arch"], s["params"]) == ("cnn1d", 5210, "mlp", 15210)
    for x in (
        t["test_acc"],
        s["test_acc"],
        s["val_acc_best"],
        on_disk["fidelity"]["agreement"],
        on_disk["calibration"]["ece"],
    ):
        check_fraction(x)
    assert on_disk["fidelity"]["kl"] >= 0
    assert on_disk["fidelity"]["retained"] == pytest.approx(s["test_acc"] / t["test_acc"], abs=1e-4)
    eff = on_disk["efficiency"]
    assert eff["param_ratio"] == pytest.approx(15210 / 5210) and eff["latency_ms"] > 0 and eff["teacher_latency_ms"] > 0
    assert eff["compression"] == pytest.approx(5210 / 15210, abs=1e-4)
    assert eff["speedup"] == pytest.approx(eff["teacher_latency_ms"] / eff["latency_ms"], rel=1e-2)
    assert eff["throughput"] == pytest.approx(256 / eff["latency_ms_b256"] * 1e3, rel=1e-2)
    assert t["size_mb"] == pytest.approx(5210 * 4 / 1e6) and s["size_mb"] == pytest.approx(15210 * 4 / 1e6)
    assert len(s["per_class_acc"]) == len(t["per_class_acc"]) == 10
    gaps, worst = on_disk["bias"]["per_class_gap"], on_disk["bias"]["worst_classes"]
    assert len(worst) == 3 and worst[0]["gap"] == max(gaps) and worst[0]["gap"] >= worst[1]["gap"] >= worst[2]["gap"]
    assert on_disk["export"]["size_mb"] == pytest.approx(15210 * 4 / 1e6, rel=0.05)
    assert on_disk["wall_s"] > 0 and on_disk["overrides"] == ["method=kd"] and on_disk["wandb"] is None
    checkpoints = r["_dir"] / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file() and list(checkpoints.glob("best-*.ckpt"))


def test_baseline_run_has_no_teacher(train):
    r = train(["method=none"])
    assert r["teacher"] is None and r["fidelity"] is None and r["efficiency"]["param_ratio"] is None
    assert r["method"] == "none" and r["student"]["test_acc"] > 0


def test_without_a_validation_split_validation_runs_on_the_test_set(train):
    # the benchmarks' protocol: train on everything, report the last and the best test epoch
    r = train(["method=none", "data.val_fraction=0.0", "trainer.max_epochs=3", "trainer.limit_val_batches=1.0"])
    text = (r["_dir"] / "results.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    s = json.loads(text)["student"]
    assert s["val_acc_best"] is None and s["test_acc_best_val"] is None
    # the last epoch is one of the epochs the best is chosen from
    assert s["test_acc_best_epoch"] >= s["test_acc"] - 1e-6 and s["test_acc"] > 0


def test_with_a_validation_split_the_best_epoch_is_chosen_on_validation(train):
    s = train(["method=none"])["student"]
    assert s["test_acc_best_epoch"] is None and s["val_acc_best"] is not None and s["test_acc_best_val"] is not None


def test_teacher_is_trained_once_then_reused_and_results_do_not_depend_on_it(train, cache_dir, caplog):
    caplog.set_level(logging.INFO, logger="kdlab")
    first = train(["seed=3"])
    assert "no cached mnist1d-cnn1d-" in caplog.text
    (entry,) = (cache_dir / "teachers").glob("mnist1d-cnn1d-*/")
    weights = entry / "teacher.safetensors"
    mtime = weights.stat().st_mtime_ns
    caplog.clear()
    second = train(["seed=3"])
    assert "reusing cached mnist1d-cnn1d-" in caplog.text and "no cached" not in caplog.text
    assert weights.stat().st_mtime_ns == mtime
    assert json.loads((entry / "recipe.json").read_text())["recipe"]["arch"] == "cnn1d"
    # same seed, same numbers, whether the teacher was trained in the run or read from the cache
    for key in ("teacher", "student", "fidelity"):
        for k, v in first[key].items():
            if "latency" not in k:
                assert second[key][k] == v, (key, k)
    caplog.clear()
    train(["seed=3", "teacher.optimizer.lr=0.005"])  # another recipe -> another teacher
    assert "no cached" in caplog.text and len(list((cache_dir / "teachers").glob("*/"))) == 2
    caplog.clear()
    train(["seed=4", "data.batch_size=50"])  # the student's batch size is not the teacher's
    assert "reusing cached" in caplog.text


def test_task_teacher_saves_a_checkpoint_that_distill_runs_load(train, cache_dir, caplog):
    t = train(["task=teacher"])
    assert t["task"] == "teacher" and t["student"] is None and t["teacher"]["arch"] == "cnn1d"
    check_fraction(t["teacher"]["val_acc_best"])
    path = t["_dir"] / "teacher.safetensors"
    assert path.is_file()
    caplog.set_level(logging.INFO, logger="kdlab")
    d = train([f"teacher.checkpoint={path}"])
    assert f"loading {path}" in caplog.text
    assert d["teacher"]["test_acc"] == t["teacher"]["test_acc"]
    caplog.clear()
    train([])  # task=teacher also filled the cache
    assert "reusing cached" in caplog.text


def test_timm_teacher_on_digits(train):
    r = train(["data=digits", "teacher.arch=resnet18", "student.arch=cnn_small", "method=kd"])
    assert r["data"] == "digits" and r["teacher"]["arch"] == "resnet18" and r["teacher"]["params"] > 11_000_000
    assert r["student"]["arch"] == "cnn_small"


def test_fake_cifar_distill_run(train, tmp_path):
    from kdlab.data.cifar import write_fake_cifar

    write_fake_cifar(tmp_path / "cifar", classes=100, n_train=200, n_test=50)
    r = train(
        [
            "data=cifar100",
            f"data.root={tmp_path / 'cifar'}",
            "teacher.arch=cnn_small",
            "student.arch=cnn_tiny",
        ]
    )
    assert r["data"] == "cifar100" and r["teacher"]["params"] > r["student"]["params"]


def test_wandb_offline_run_is_complete_and_finished(train):
    r = train(["logger=wandb"])
    run_dir = Path(r["wandb"]["run_dir"])
    assert r["wandb"]["mode"] == "offline" and list(run_dir.glob("run-*.wandb"))
    out = subprocess.run(
        [str(BIN / "wandb"), "leet", "inspect", "--summary", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(out.stdout)
    assert summary["state"] == "finished"
    assert {
        "task:distill",
        "strategy:offline",
        "method:kd",
        "teacher:cnn1d",
        "student:mlp",
        "data:mnist1d",
    } <= set(summary["tags"])
    assert summary["config"]["method"]["terms"]["kd"]["temperature"] == 4.0
    assert summary["summary"]["test/acc"] == pytest.approx(r["student"]["test_acc"])
    assert "train/loss_kd" in summary["summary"] and "val/acc" in summary["summary"]


def test_wandb_run_is_finished_when_the_job_fails(train):
    import wandb

    with pytest.raises(KdlabError):
        train(["logger=wandb", "student.arch=nope"])
    assert wandb.run is None


def test_errors_are_one_clear_line(train, tmp_path, cache_dir):
    with pytest.raises(KdlabError, match=r"unknown model 'mlpp'.*closest: mlp"):
        train(["student.arch=mlpp"])
    assert not (cache_dir / "teachers").exists()  # caught before any teacher training
    with pytest.raises(
        KdlabError,
        match=r"teacher checkpoint .*nope.safetensors not found; make one with `kdlab-train task=teacher",
    ):
        train([f"teacher.checkpoint={tmp_path / 'nope.safetensors'}"])
    wrong = save_weights(create_model("cnn1d", 100, (1, 40)), tmp_path / "c100.safetensors", "cnn1d", 100, (1, 40))
    with pytest.raises(KdlabError, match="predicts 100 classes but the data has 10"):
        train([f"teacher.checkpoint={wrong}"])
    with pytest.raises(KdlabError, match="task=tutor is not one of distill, teacher"):
        train(["task=tutor"])


def kdlab_train(*args, cwd):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [str(BIN / "kdlab-train"), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_cli_error_exits_nonzero_with_one_line(tmp_path):
    p = kdlab_train("student.arch=resnt18", "logger=none", cwd=tmp_path)
    assert p.returncode == 1
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("kdlab-train: error: unknown model 'resnt18'") and "resnet18" in last


def test_cli_multirun(tmp_path, cache_dir):
    fast = [
        "logger=none",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "teacher.max_epochs=1",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    p = kdlab_train("-m", "method=none,kd", *fast, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    results = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert [json.loads(f.read_text())["method"] for f in results] == ["none", "kd"]


@pytest.mark.slow
def test_cli_ddp_on_cpu(tmp_path, cache_dir):
    p = kdlab_train(
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_epochs=1",
        "teacher.max_epochs=1",
        "logger=none",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    assert r["student"]["test_acc"] > 0 and "GLOBAL_RANK: 1" in p.stdout + p.stderr


def test_exported_student_reproduces_the_runs_test_accuracy(train):
    from kdlab.data import MNIST1D
    from kdlab.models.checkpoint import load_weights
    from kdlab.report import accuracy, predict

    r = train(["method=fitnet", "export_onnx=true"])  # the student leaves its regressor and teacher behind
    config = json.loads((r["_dir"] / "student.json").read_text())
    student = load_weights(
        r["_dir"] / "student.safetensors", config["arch"], config["num_classes"], config["input_shape"]
    )
    assert sum(p.numel() for p in student.parameters()) == r["student"]["params"] == 15210
    data = MNIST1D(**{k: v for k, v in config["data"].items() if k != "_target_"})
    logits, target = predict(student, data)
    assert accuracy(logits, target) == pytest.approx(r["student"]["test_acc"], abs=1e-6)
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(r["export"]["onnx"])
    onnx_logits = session.run(None, {"x": data.test_set.x.numpy()})[0]
    assert (onnx_logits.argmax(-1) == data.test_set.y.numpy()).mean() == pytest.approx(
        r["student"]["test_acc"], abs=1e-6
    )


def test_last_checkpoint_is_the_latest_epoch_and_a_rerun_overwrites_it(train):
    # Lightning's save_last on the monitored checkpoint rewrites last.ckpt only when val/acc improves
    r = train(["method=none", "trainer.max_epochs=5"])
    checkpoints = r["_dir"] / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 4
    from kdlab.config import compose
    from kdlab.train import run

    over = ["logger=none", "method=none", "trainer.max_epochs=2", "+trainer.limit_train_batches=3"]
    with pytest.raises(KdlabError, match="another config .*teacher.max_epochs: 1 -> 100"):
        run(compose(over)[0], r["_dir"], summary=False)  # another config into the same directory: refused
    run(compose([*over, "resume=never"])[0], r["_dir"], summary=False)  # unless told to start over
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in checkpoints.iterdir())[-1] == "last.ckpt" and len(list(checkpoints.iterdir())) == 2


def test_a_second_run_into_a_directory_in_use_refuses_in_one_line(train, tmp_path):
    import subprocess
    import sys
    import textwrap

    from kdlab.context import run_directory

    busy = tmp_path / "busy"
    busy.mkdir()
    with run_directory(busy):
        from kdlab.config import compose
        from kdlab.train import run

        cfg, _ = compose(["logger=none", "method=none"])
        with pytest.raises(KdlabError, match=r"busy is in use by another kdlab run \(pid \d+\).*hydra.run.dir") as e:
            run(cfg, busy, summary=False)
        assert "\n" not in str(e.value) and not (busy / "results.json").exists()
    # a run killed while holding the directory does not leave it held
    holder = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from kdlab.context import run_directory
        with run_directory(Path({str(busy)!r})):
            print("held", flush=True)
            time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    p.kill()
    p.wait()
    with run_directory(busy):
        pass
