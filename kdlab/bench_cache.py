"""The teacher-output cache's benchmark: one training step of kdlab-train with the cache warm, cold
and off, against student-only training, side by side in one run; the fill cost and the disk size.

For each case (a recipe from experiments/; random teacher weights from a checkpoint; CIFAR-100 on
fake files in the real on-disk format), ``rounds`` times, in this order, each a kdlab-train run of
one epoch timed as in ``kdlab.bench`` (the gap between consecutive ``on_train_batch_start``):

- **student only**: ``method=none`` (no teacher at all: the floor the cache aims at);
- **live teacher**: ``teacher_cache.mode=off``;
- **cache cold**: a new, empty cache: every row is computed by the teacher and written;
- **cache warm**: the same seed again on that cache: every row the run reads is there.

Then the eager fill (``kdlab-cache-teacher``) of the case's training set, every view of every
sample (CIFAR: a subset of the images, 162 views each): rows per second and the store's size.

    python -m kdlab.bench_cache            # the CPU, prints the section for docs/benchmarks.md
    python -m kdlab.bench --only cache     # the same, written into docs/benchmarks.md (part of make bench)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kdlab.bench import WARMUP, compose, kdlab_step_s, machine

#: recipe -> (batch, timed steps, extra overrides, training images of the fake CIFAR for the eager fill,
#: rounds: MNIST-1D's 1-2 ms steps vary more from run to run than CIFAR's half seconds)
CASES = {
    "mnist1d/kd_cnn1d_mlp": (100, 30, ["data.noise_std=0"], None, 9),
    "cifar100/kd_resnet32x4_resnet8x4": (64, 6, [], 4, 3),
}
MODES = {
    "student": ["method=none"],
    "live": ["teacher_cache.mode=off"],
    "cold": [],
    "warm": [],
}


def one_case(recipe: str, work: Path, rounds: int | None = None) -> dict:
    from hydra.utils import instantiate

    from kdlab.models import create_model
    from kdlab.models.checkpoint import save_weights
    from kdlab.teacher_outputs import fill_config

    batch, steps, extra, eager_images, default_rounds = CASES[recipe]
    rounds = rounds or default_rounds
    overrides = [f"data.batch_size={batch}", "trainer=cpu", *extra]
    fake = None
    if recipe.startswith("cifar100/"):
        from kdlab.data.cifar import write_fake_cifar

        fake = work / "fake-cifar"
        write_fake_cifar(fake, classes=100, n_train=batch * (WARMUP + steps + 2), n_test=64)
        overrides.append(f"data.root={fake}")
    cfg = compose(recipe, overrides)
    data = instantiate(cfg.data)
    torch.manual_seed(0)
    teacher = create_model(cfg.teacher.arch, data.num_classes, tuple(data.input_shape))
    ckpt = save_weights(
        teacher, work / f"{cfg.teacher.arch}.safetensors", cfg.teacher.arch, data.num_classes, tuple(data.input_shape)
    )
    overrides.append(f"teacher.checkpoint={ckpt}")
    step_ms: dict[str, list[float]] = {m: [] for m in MODES}
    cold, warm = [], []
    for r in range(rounds):
        os.environ["KDLAB_CACHE_DIR"] = str(work / f"cache{r}")  # a new, empty cache each round
        for mode, more in MODES.items():
            s, res = kdlab_step_s(
                recipe, [*overrides, *more, "measure_speed=false"], steps, "cpu", work / f"run-{r}-{mode}"
            )
            step_ms[mode].append(1e3 * s)
            if mode in ("cold", "warm"):
                (cold if mode == "cold" else warm).append(res["teacher_cache"])
    assert all(w["hit_rate"] == 1.0 for w in warm), "the warm runs read rows the cold runs did not fill"
    # the eager fill of the whole training set (CIFAR: of a few images, in all 162 views)
    os.environ["KDLAB_CACHE_DIR"] = str(work / "cache-eager")
    eager = list(overrides)
    if eager_images is not None:
        small = work / "fake-cifar-small"
        from kdlab.data.cifar import write_fake_cifar

        write_fake_cifar(small, classes=100, n_train=eager_images, n_test=8)
        eager = [o for o in eager if not o.startswith("data.root=")] + [f"data.root={small}"]
    start = time.perf_counter()
    cache = fill_config([f"experiments={recipe}", *eager])
    eager_s = time.perf_counter() - start
    report = cache.report()
    from kdlab.bench import peak_memory

    return {
        "peak_mib": peak_memory("cpu")["peak_mib"],
        "recipe": recipe,
        "teacher": cfg.teacher.arch,
        "student": cfg.student.arch,
        "batch": batch,
        "steps": steps,
        "rounds": rounds,
        "step_ms": {m: statistics.median(v) for m, v in step_ms.items()},
        "step_ms_all": step_ms,
        "cold_fill_s": statistics.median(c["fill_s"] for c in cold),
        "cold_rows_written": cold[0]["rows_written"],
        "train_samples": cold[0]["rows"] // cold[0]["views"],
        "views": cold[0]["views"],
        "classes": data.num_classes,
        "eager": {
            "rows": report["rows_written"],
            "teacher_s": report["fill_s"],
            "wall_s": eager_s,
            "size_bytes": report["size_bytes"],
            "size_full_bytes": report["size_full_bytes"],
        },
    }


def report(rows: list[dict], wall_s: float) -> str:
    lines = [
        f"## Teacher-output cache, CPU ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {machine('cpu')}. Written by `make bench` (`python -m kdlab.bench --only cache`) in "
        f"{wall_s:.0f} s: rounds of four kdlab-train runs (one epoch each, the same seed; "
        f"{' / '.join(str(r['rounds']) for r in rows)} rounds for the rows in order), the median step (gap between "
        f"consecutive training batches after {WARMUP} warm-up steps) of each run, then the median over rounds "
        "(in brackets: the range over rounds). Random teacher weights; CIFAR-100 on fake files in the real "
        "on-disk format (162 views per image); MNIST-1D without input noise (`data.noise_std=0`: with noise no "
        "input repeats and the cache is off). Cold: a new, empty cache (every row computed and written); warm: "
        "the same seed again on it (hit rate 100%).",
        "",
        "| recipe | teacher -> student | batch | student only (ms/step) | KD, live teacher | KD, cache cold "
        "| KD, cache warm | warm / student only | live / student only | peak MiB (the case's process) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["step_ms"]

        def cell(mode: str, r=r, m=m) -> str:
            every = r["step_ms_all"][mode]
            return f"{m[mode]:.{1 if m[mode] < 100 else 0}f} ({min(every):.{2 if m[mode] < 100 else 0}f}-{max(every):.{2 if m[mode] < 100 else 0}f})"

        lines.append(
            f"| {r['recipe']} | {r['teacher']} -> {r['student']} | {r['batch']} | {cell('student')} | "
            f"{cell('live')} | {cell('cold')} | {cell('warm')} | {m['warm'] / m['student']:.2f} | "
            f"{m['live'] / m['student']:.2f} | {r['peak_mib']:.0f} |"
        )
    lines += [
        "",
        "Fill cost and size (fp16 rows, the default `teacher_cache.dtype`). Lazy: the teacher's forward "
        "passes and the writes of the cold run, per row written. Eager: `kdlab-cache-teacher` on the case's "
        "whole training set (CIFAR: a fake set of a few images, each in its 162 views), the teacher in "
        "training-size batches; the store's files are sparse and take disk space as they fill.",
        "",
        "| recipe | lazy fill (cold run) | eager fill | eager-filled store: rows, size on disk (full size) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        e = r["eager"]
        lazy = 1e3 * r["cold_fill_s"] / max(r["cold_rows_written"], 1)
        lines.append(
            f"| {r['recipe']} | {lazy:.3f} ms/row ({r['cold_rows_written']} rows in {r['cold_fill_s']:.2f} s) | "
            f"{e['rows'] / e['teacher_s']:.0f} rows/s ({e['rows']} rows in {e['teacher_s']:.2f} s) | "
            f"{e['rows']:,} rows, {e['size_bytes']:,} bytes ({e['size_full_bytes']:,}) |"
        )
    return "\n".join(lines) + "\n"


def run_all(env: dict, cases: list[str] | None = None, rounds: int | None = None, json_out: str | None = None) -> str:
    """Every case, each in a process of its own; returns the section for docs/benchmarks.md."""
    from kdlab.bench import in_process

    start, rows = time.perf_counter(), []
    for recipe in cases or list(CASES):
        rows.append(
            in_process("kdlab.bench_cache", ["--case", recipe, *(["--rounds", str(rounds)] if rounds else [])], env)
        )
        print(f"{recipe}: {rows[-1]['step_ms']}", flush=True)
    if json_out:
        Path(json_out).write_text(json.dumps(rows, indent=1) + "\n")
    return report(rows, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m kdlab.bench_cache", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--rounds", type=int, help="rounds per case (default: each case's own)")
    parser.add_argument("--json", help="also write the measurements here")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case in this process, JSON out
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.case:
        with tempfile.TemporaryDirectory() as work:
            print("BENCH " + json.dumps(one_case(args.case, Path(work), args.rounds)), flush=True)
        return
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "WANDB_MODE": "disabled"}
    print(run_all(env, args.cases, args.rounds, args.json))


if __name__ == "__main__":
    main()
