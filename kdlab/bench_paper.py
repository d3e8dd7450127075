"""The MNIST-1D paper protocol end to end: `kdlab-train experiments=mnist1d/paper_cnn1d` (1-D CNN,
8,000 steps at batch 100, the test set evaluated every 250 steps) against the MNIST-1D paper's own
training loop doing the same as a bare script (``PAPER``: torch and numpy, the cached MNIST-1D
arrays, ``kdlab.reproduce.paper_train``: 8,001 steps, 33 test evaluations), whole processes from
start to exit, alternated, median of ``ROUNDS``. Each one's imports are timed on their own too
(``python -c "import ..."``).

    python -m kdlab.bench --only paper
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROUNDS = 3
#: the paper's loop as a script: what it imports is torch, numpy and the loop itself
PAPER = """
import sys, numpy as np, torch
from kdlab.reproduce import PaperCNN, paper_train
torch.set_num_threads(1)
a = np.load(sys.argv[1])
x, y = torch.as_tensor(a["x"], dtype=torch.float32), torch.as_tensor(a["y"], dtype=torch.long)
xt, yt = torch.as_tensor(a["x_test"], dtype=torch.float32), torch.as_tensor(a["y_test"], dtype=torch.long)
torch.manual_seed(0)
print(paper_train(PaperCNN(), x, y, xt, yt)["test_acc"])
"""
PAPER_IMPORTS = "import numpy, torch, kdlab.reproduce"


def wall_s(cmd: list[str], env: dict, cwd: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"kdlab.bench_paper: {' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def run_all(env: dict) -> str:
    from kdlab.bench import machine

    python = sys.executable
    kdlab_train = str(Path(python).with_name("kdlab-train"))
    data = os.path.abspath(os.environ.get("KDLAB_DATA_DIR", "data"))
    env = {**env, "KDLAB_DATA_DIR": data}
    from kdlab.data.mnist1d import load_mnist1d

    load_mnist1d(data)  # generated once, before anything is timed
    arrays = str(Path(data) / "mnist1d" / "mnist1d_n5000_seed42.npz")
    times: dict[str, list[float]] = {"kdlab": [], "paper": [], "import_kdlab": [], "import_paper": []}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        for r in range(ROUNDS):
            times["paper"].append(wall_s([python, "-c", PAPER, arrays], env, work))
            times["kdlab"].append(
                wall_s(
                    [
                        kdlab_train,
                        "experiments=mnist1d/paper_cnn1d",
                        "logger=none",
                        "trainer.enable_progress_bar=false",
                        f"hydra.run.dir={work}/kdlab{r}",
                    ],
                    env,
                    work,
                )
            )
            times["import_kdlab"].append(wall_s([python, "-c", "import kdlab.train"], env, work))
            times["import_paper"].append(wall_s([python, "-c", PAPER_IMPORTS], env, work))
            print(
                f"paper protocol, round {r}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True
            )
    med = {k: statistics.median(v) for k, v in times.items()}
    spread = {k: f"{min(v):.1f}-{max(v):.1f}" for k, v in times.items()}
    lines = [
        f"## MNIST-1D paper protocol end to end, CPU ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {machine('cpu')}. Written by `make bench` (`python -m kdlab.bench --only paper`) in "
        f"{time.perf_counter() - start:.0f} s: whole processes, alternated, median of {ROUNDS} (range in brackets). "
        "kdlab: `kdlab-train experiments=mnist1d/paper_cnn1d logger=none` (8,000 steps of batch 100, the test set "
        "every 250 steps, the final report with latency); the paper's loop: its notebooks/train.py loop as a "
        "script (`kdlab.bench_paper.PAPER`: torch and numpy, the cached arrays, 8,001 steps, 33 test evaluations).",
        "",
        "| | kdlab-train | the paper's loop | kdlab / paper |",
        "|---|---|---|---|",
        f"| whole run (s) | {med['kdlab']:.1f} ({spread['kdlab']}) | {med['paper']:.1f} ({spread['paper']}) | "
        f"{med['kdlab'] / med['paper']:.2f} |",
        f"| of which importing its code (s) | {med['import_kdlab']:.1f} ({spread['import_kdlab']}) | "
        f"{med['import_paper']:.1f} ({spread['import_paper']}) | |",
        f"| the rest (s) | {med['kdlab'] - med['import_kdlab']:.1f} | {med['paper'] - med['import_paper']:.1f} | "
        f"{(med['kdlab'] - med['import_kdlab']) / (med['paper'] - med['import_paper']):.2f} |",
    ]
    return "\n".join(lines) + "\n"
