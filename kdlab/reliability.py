"""Kill -9 and resume, measured: ``python -m kdlab.reliability`` (``make reliability``).

``--sweep``: a study of 6 trials whose worker is killed with SIGKILL twice in the middle of a
trial; the worker is started again with the same command each time. Reports the finished
trials, the retried ones and the epoch each retry resumed from. Appends to docs/reliability.md.

One uninterrupted ``kdlab-train`` run (MNIST-1D, offline KD, cnn1d -> mlp, 30 epochs,
``trainer.deterministic=true``), then ``--kills`` runs of the same command, each killed with
SIGKILL at a random moment and started again with the same command until it finishes. Reports
for each: the epoch it was killed in, the epoch it resumed from, the work lost (seconds trained
after the last checkpoint, in epochs), and whether the final metrics and weights equal the
uninterrupted run's. Writes docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

EPOCHS = 30
COMMAND = [
    "logger=none",
    "measure_speed=false",
    "trainer.enable_progress_bar=false",
    "trainer.deterministic=true",
    "data.batch_size=16",  # 250 steps an epoch: epochs long enough to kill inside one
    f"trainer.max_epochs={EPOCHS}",
]
METRICS = ("test_acc", "val_acc_best", "test_acc_best_epoch")


def train(run_dir: Path, env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kdlab.train", *COMMAND, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(run_dir: Path, env: dict) -> tuple[dict, float]:
    start = time.perf_counter()
    proc = train(run_dir, env)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"kdlab-train failed in {run_dir}: {err.strip().splitlines()[-1] if err.strip() else ''}")
    return json.loads((run_dir / "results.json").read_text()), time.perf_counter() - start


def checkpoint_epoch(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:
        return None


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a / "student.safetensors")), load_file(str(b / "student.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def killed_run(run_dir: Path, env: dict, kill_epoch: int, fraction: float) -> dict:
    """Start the run, SIGKILL it ``fraction`` of an epoch into epoch ``kill_epoch`` (0-based),
    then start the same command again and let it finish."""
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = train(run_dir, env)
    writes: list[float] = []  # the times last.ckpt was (re)written: one per finished epoch
    while len(writes) < kill_epoch and proc.poll() is None:
        mtime = last.stat().st_mtime if last.exists() else None
        if mtime is not None and (not writes or mtime != writes[-1]):
            writes.append(mtime)
        time.sleep(0.005)
    if proc.poll() is not None:
        raise SystemExit(f"the run in {run_dir} ended before epoch {kill_epoch}: {proc.stderr.read()[-500:]}")
    epoch_s = sorted(b - a for a, b in zip(writes, writes[1:]))[(len(writes) - 2) // 2]
    time.sleep(fraction * epoch_s)
    killed_at = time.time()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved_at, epoch = last.stat().st_mtime, checkpoint_epoch(last)
    lost_s = killed_at - saved_at
    results, resume_s = finish(run_dir, env)
    return {
        "resumed_from": results["resumed_from"],
        "epoch_killed_in": epoch + 1,
        "epoch_s": round(epoch_s, 3),
        "lost_s": round(lost_s, 2),
        "lost_epochs": round(lost_s / epoch_s, 2),
        "resume_wall_s": round(resume_s, 1),
        "results": results,
        "files_left": sorted(p.name for p in (run_dir / "checkpoints").iterdir()),
    }


SWEEP = [
    "sweeps=kd_temperature_alpha",
    "sweep.n_trials=6",
    "sweep.pruner=null",
    "sweep.heartbeat_interval=1",
    "sweep.grace_period=3",
    "trainer.max_epochs=8",
    "data.batch_size=16",
    "logger=none",
    "measure_speed=false",
    "trainer.enable_progress_bar=false",
]


def sweep_kills(tmp: Path, env: dict, kills: int = 2) -> dict:
    """A 6-trial study whose worker is SIGKILLed ``kills`` times mid-trial and restarted each time."""
    import optuna

    env = {**env, "KDLAB_SWEEP_DIR": str(tmp / "sweeps")}
    cmd = [sys.executable, "-m", "kdlab.sweep", *SWEEP, "--target=6"]
    study_dir, killed, starts = tmp / "sweeps" / "kd_temperature_alpha", [], 0
    start = time.perf_counter()
    while True:
        starts += 1
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if len(killed) < kills:  # wait for a trial (one not killed before) to be a few epochs in, then kill
            victim = None
            while proc.poll() is None and victim is None:
                for last in study_dir.glob("trial_*/checkpoints/last.ckpt"):
                    trial = last.parent.parent
                    if trial.name not in killed and not (trial / "results.json").exists():
                        if (checkpoint_epoch(last) or 0) >= 2:
                            victim = trial
                time.sleep(0.05)
            if victim is not None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                killed.append(victim.name)
                time.sleep(4)  # past the grace period: the next worker finds the trial stale and retries it
                continue
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"kdlab-sweep failed: {err.strip().splitlines()[-1] if err.strip() else ''}")
        break
    wall = time.perf_counter() - start
    study = optuna.load_study(study_name="kd_temperature_alpha", storage=f"sqlite:///{tmp / 'sweeps' / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    resumed = {}
    for name in killed:
        results = json.loads((study_dir / name / "results.json").read_text())
        resumed[name] = results["resumed_from"]
    return {
        "worker_starts": starts,
        "killed_trials": killed,
        "resumed_from": resumed,
        "complete": states.count("COMPLETE"),
        "failed_then_retried": states.count("FAIL"),
        "states": states,
        "wall_s": round(wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/reliability.md")
    ap.add_argument("--sweep", action="store_true", help="the killed-worker sweep instead, appended to --out")
    args = ap.parse_args()
    if args.sweep:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            env = {**os.environ, "WANDB_MODE": "disabled", "KDLAB_CACHE_DIR": str(tmp / "cache")}
            row = sweep_kills(tmp, env)
        print(json.dumps(row))
        write_sweep_report(Path(args.out), row)
        return
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "WANDB_MODE": "disabled", "KDLAB_CACHE_DIR": str(tmp / "cache")}
        finish(tmp / "teacher-warmup", env)  # trains and caches the teacher: the timed runs reuse it
        whole, whole_s = finish(tmp / "whole", env)
        rows = []
        for i in range(args.kills):
            row = killed_run(tmp / f"killed{i}", env, rng.randint(3, EPOCHS - 2), rng.random())
            row["equal"] = all(row["results"]["student"][k] == whole["student"][k] for k in METRICS) and same_weights(
                tmp / "whole", tmp / f"killed{i}"
            )
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "results"}))
    write_report(Path(args.out), whole, whole_s, rows)


def write_report(out: Path, whole: dict, whole_s: float, rows: list[dict]) -> None:
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Reliability: kill -9 and resume",
        "",
        f"`make reliability` (`python -m kdlab.reliability`), {time.strftime('%Y-%m-%d')}, on {os.cpu_count()} CPU "
        f"cores ({cpu}), torch {torch.__version__}, one thread, no GPU. The epoch times vary with whatever else "
        "shares the cores; what the table checks is the equality and the fraction of an epoch lost.",
        "",
        f"The run: `kdlab-train {' '.join(COMMAND)}` (offline KD, cnn1d -> mlp on MNIST-1D). Uninterrupted: "
        f"{whole_s:.1f} s wall, test accuracy {whole['student']['test_acc']}, best validation accuracy "
        f"{whole['student']['val_acc_best']}.",
        "",
        "Each row: the same command killed with SIGKILL at a random moment, then run again (the same command, "
        "`resume=auto`). *Lost* is the time between the last checkpoint's write and the kill, in seconds and in "
        "epochs (the median time between two checkpoint writes of that run, before the kill).",
        "",
        "| kill | killed during epoch (0-based) | resumed from (the last saved epoch) | epoch s | lost s | lost epochs | "
        "resumed run wall s | test acc | final metrics and weights equal | files in checkpoints/ |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows):
        lines.append(
            f"| {i + 1} | {r['epoch_killed_in']} | {r['resumed_from']} | {r['epoch_s']} | {r['lost_s']} | {r['lost_epochs']} | "
            f"{r['resume_wall_s']} | {r['results']['student']['test_acc']} | {'yes' if r['equal'] else 'NO'} | "
            f"{', '.join(r['files_left'])} |"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


def write_sweep_report(out: Path, row: dict) -> None:
    text = out.read_text() if out.exists() else "# Reliability\n"
    marker = "\n## A sweep whose worker is killed"
    text = text.split(marker)[0].rstrip("\n") + "\n"
    resumed = ", ".join(f"{k}: epoch {v}" for k, v in row["resumed_from"].items())
    text += (
        f"{marker} twice\n\n`python -m kdlab.reliability --sweep`, {time.strftime('%Y-%m-%d')}: "
        f"`kdlab-sweep {' '.join(SWEEP)} --target=6` (SQLite storage), its worker killed with SIGKILL in the middle "
        f"of {len(row['killed_trials'])} trials (each at least 3 epochs in) and started again with the same "
        f"command each time ({row['worker_starts']} starts, {row['wall_s']} s in all).\n\n"
        f"- trials COMPLETE: {row['complete']}; trials FAIL (the killed ones, marked after the heartbeat grace "
        f"period and queued again): {row['failed_then_retried']}\n"
        f"- the retries ran in the killed trials' directories and resumed from their checkpoints: {resumed}\n"
        f"- trial states in order: {', '.join(row['states'])}\n"
    )
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
