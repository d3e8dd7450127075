"""Kill -9 and resume, measured: ``python -m kdlab.reliability`` (``make reliability``).

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/reliability.md")
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
