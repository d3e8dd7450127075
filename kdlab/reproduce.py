"""`make reproduce`: the MNIST-1D reproduction table, 3 seeds per row, written to docs/results.md.

Table 1 is the MNIST-1D paper's baselines as published (logistic 32%, MLP 68%, CNN 94%; no
input noise). Table 2 is distillation at the demo pair (1-D CNN teacher, MLP student, input
noise 0.2): the MLP alone, KD, DKD, DIST and DML beside it; the 1-D CNN alone, Born-Again and
BYOT (self-distillation: the network is its own teacher). Each row is one
`kdlab-train -m experiments=... seed=0,1,2`; two rows run at a time (one per core, one thread
each) and the results are read back from their results.json files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kdlab.report.compare import find_results, fmt, mean_std

SEEDS = "0,1,2"
BASELINES = [  # (label, experiment, published test accuracy)
    ("logistic regression", "mnist1d/none_logistic", 0.32),
    ("MLP", "mnist1d/none_mlp", 0.68),
    ("1-D CNN", "mnist1d/none_cnn1d", 0.94),
]
MLP, CNN = "mnist1d/none_mlp_noisy", "mnist1d/none_cnn1d_noisy"
DISTILLATION = [  # (label, experiment, its baseline, the peer reported: None = the deployed student)
    ("MLP alone", MLP, None, None),
    ("KD (Hinton 2015), CNN -> MLP", "mnist1d/kd_cnn1d_mlp", MLP, None),
    ("DKD (Zhao 2022), CNN -> MLP", "mnist1d/dkd_cnn1d_mlp", MLP, None),
    ("DIST (Huang 2022), CNN -> MLP", "mnist1d/dist_cnn1d_mlp", MLP, None),
    ("DML (Zhang 2018), MLP + CNN peers: the MLP", "mnist1d/dml_mlp_cnn1d", MLP, 0),
    ("DML (Zhang 2018), two MLP peers: the one deployed (best validation)", "mnist1d/dml", MLP, None),
    ("1-D CNN alone", CNN, None, None),
    ("Born-Again (Furlanello 2018), 1-D CNN: the last of 3 generations", "mnist1d/born_again", CNN, None),
    ("BYOT (Zhang 2019), 1-D CNN", "mnist1d/byot", CNN, None),
]
#: slowest first, so that two workers finish together
ORDER = [
    "mnist1d/born_again",
    "mnist1d/dml_mlp_cnn1d",
    "mnist1d/byot",
    "mnist1d/dml",
    "mnist1d/kd_cnn1d_mlp",
    "mnist1d/dkd_cnn1d_mlp",
    "mnist1d/dist_cnn1d_mlp",
    "mnist1d/none_cnn1d",
    "mnist1d/none_cnn1d_noisy",
    "mnist1d/none_mlp",
    "mnist1d/none_mlp_noisy",
    "mnist1d/none_logistic",
]


def run_row(name: str, out: Path, env: dict) -> float:
    """`kdlab-train -m experiments=<name> seed=0,1,2` into out/<name>/; returns its wall time."""
    folder = name.replace("/", "_")
    cmd = [
        str(Path(sys.executable).with_name("kdlab-train")),
        "-m",
        f"experiments={name}",
        f"seed={SEEDS}",
        "logger=none",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={out / folder}",
    ]
    sys.stdout.write("$ kdlab-train " + " ".join(cmd[1:]) + "\n")  # one write: two rows run at once
    sys.stdout.flush()
    start = time.perf_counter()
    with open(out / f"{folder}.log", "w") as log:
        if subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
            raise SystemExit(f"reproduce: `kdlab-train {' '.join(cmd[1:])}` failed; see {log.name}")
    return time.perf_counter() - start


def pct(accuracies: list[float]) -> str:
    """Mean ± std in percent, as kdlab-compare prints an accuracy column."""
    return fmt("test_acc", *mean_std(accuracies))


def row_results(out: Path, name: str) -> list[dict]:
    return find_results([out / name.replace("/", "_")])[0]


def report(out: Path, wall_s: float, row_s: dict[str, float]) -> str:
    lines = [
        "# MNIST-1D reproduction",
        "",
        f"Written by `make reproduce` on {time.strftime('%Y-%m-%d')}: every row is the mean ± std of the test",
        f"accuracy over seeds {SEEDS} (n = 3), at the last of 100 epochs (Adam 1e-2, cosine, batch 100) and at the",
        "epoch of the best validation accuracy (400 held-out training samples).",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_implementation()} "
        f"{platform.python_version()}, one thread per run, two rows at a time. Wall time: {wall_s / 60:.1f} min.",
        "",
        "## The MNIST-1D paper's baselines (no input noise)",
        "",
        "| model | params | last epoch (%) | best-val epoch (%) | published (%) | last - published (points) "
        "| row wall time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, name, published in BASELINES:
        rs = row_results(out, name)
        accs = [r["student"]["test_acc"] for r in rs]
        mean = mean_std(accs)[0]
        best = pct([r["student"].get("test_acc_best_val") for r in rs])
        lines.append(
            f"| {label} | {rs[0]['student']['params']:,} | {pct(accs)} | {best} | {100 * published:.0f} | "
            f"{100 * (mean - published):+.1f} | {row_s[name]:.0f} |"
        )
    lines += [
        "",
        'Published: Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D" (ICML 2024).',
        "",
        "## Distillation at the demo pair (input noise 0.2 on training batches)",
        "",
        "| row | strategy / method | last epoch (%) | best-val epoch (%) | last vs alone (points) "
        "| teacher / peers / generations / exits (%) | row wall time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, name, baseline, peer in DISTILLATION:
        rs = row_results(out, name)
        models = [r["student"] if peer is None else r["peers"][peer] for r in rs]
        mean = mean_std([m["test_acc"] for m in models])[0]
        gain = (
            ""
            if baseline is None
            else f"{100 * (mean - mean_std([r['student']['test_acc'] for r in row_results(out, baseline)])[0]):+.1f}"
        )
        detail = ""
        if rs[0].get("teacher"):
            detail = f"teacher {rs[0]['teacher']['arch']} {pct([r['teacher']['test_acc'] for r in rs])}"
        if rs[0].get("peers"):
            detail = "peers " + " / ".join(
                pct([r["peers"][i]["test_acc"] for r in rs]) for i in range(len(rs[0]["peers"]))
            )
        if rs[0].get("generations"):
            gens = " / ".join(
                pct([r["generations"][g]["test_acc"] for r in rs]) for g in range(len(rs[0]["generations"]))
            )
            detail = f"generations {gens}; ensemble {pct([r['ensemble']['test_acc'] for r in rs])}"
        if rs[0].get("exits"):
            detail = "exits " + " / ".join(
                f"{e['tap']} {pct([r['exits'][i]['test_acc'] for r in rs])}" for i, e in enumerate(rs[0]["exits"])
            )
        lines.append(
            f"| {label} | {rs[0]['strategy']} / {rs[0]['method']} | "
            f"{pct([m['test_acc'] for m in models])} | {pct([m.get('test_acc_best_val') for m in models])} | "
            f"{gain} | {detail} | {row_s[name]:.0f} |"
        )
    lines += [
        "",
        "Commands: `kdlab-train -m experiments=<file> seed=0,1,2` for each file above, under "
        "`experiments/mnist1d/`; the run folders are in `outputs/reproduce/`.",
        "",
    ]
    return "\n".join(lines)


def main(out: str = "outputs/reproduce", doc: str = "docs/results.md", workers: int = 2) -> None:
    out_dir = Path(out)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        futures = {name: pool.submit(run_row, name, out_dir, env) for name in ORDER}
        row_s = {name: future.result() for name, future in futures.items()}
    timings = {"wall_s": time.perf_counter() - start, "rows_s": row_s}
    (out_dir / "timings.json").write_text(json.dumps(timings, indent=2))
    write_report(out_dir, Path(doc))


def write_report(out_dir: Path, doc: Path) -> None:
    timings = json.loads((out_dir / "timings.json").read_text())
    text = report(out_dir, timings["wall_s"], timings["rows_s"])
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    print(text)
    print(f"written: {doc}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m kdlab.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/reproduce", help="where the runs go")
    parser.add_argument("--doc", default="docs/results.md")
    parser.add_argument("--report-only", action="store_true", help="rewrite --doc from the runs already in --out")
    args = parser.parse_args()
    if args.report_only:
        write_report(Path(args.out), Path(args.doc))
    else:
        main(args.out, args.doc)
