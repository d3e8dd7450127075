"""`make bench`: training-step time of kdlab against a bare PyTorch loop, written to docs/benchmarks.md.

For each case (a recipe from experiments/), two measurements of one optimisation step (teacher
forward without gradients, student forward and backward, optimizer step):

- **bare**: a hand-written loop over tensors already in memory: the models, the loss
  function and the optimizer of the recipe, nothing else (the floor);
- **kdlab**: `kdlab-train experiments=<recipe>` itself, timed by a callback from one
  `on_train_batch_start` to the next: data loading, the device transfer and augmentation,
  the strategy, logging and Lightning all included.

The teacher is a randomly initialised checkpoint (`teacher.checkpoint=...`), so nothing is
trained first; CIFAR-100 recipes read fake CIFAR-100 written in the real on-disk format. Each
case runs in its own process, which also gives its peak memory (max RSS on the CPU, peak
allocated on a GPU).

    python -m kdlab.bench                 # every case on the CPU, writes docs/benchmarks.md
    python -m kdlab.bench --device cuda   # on a GPU: trainer=gpu (bf16 autocast, channels_last)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.nn import functional as F

#: (recipe, batch size, timed steps); the CIFAR batch is the recipes' 64
CASES = {
    "mnist1d/kd_cnn1d_mlp": (100, 60),
    "mnist1d/dkd_cnn1d_mlp": (100, 60),
    "cifar100/kd_resnet56_resnet20": (64, 8),
    "cifar100/dkd_resnet32x4_resnet8x4": (64, 8),
    "cifar100/at_resnet32x4_resnet8x4": (64, 8),
}
WARMUP = 3


def compose(recipe: str, overrides: list[str]):
    from kdlab.config import compose as compose_config

    return compose_config([f"experiments={recipe}", *overrides])[0]


def bare_step_s(cfg, batch: int, steps: int, device: str) -> float:
    """Median seconds of one hand-written training step for the recipe in ``cfg``."""
    from hydra.utils import instantiate

    from kdlab.losses import at_loss, dkd_loss, kd_loss
    from kdlab.models import FeatureTaps, create_model

    data = instantiate(cfg.data)
    shape, classes = tuple(data.input_shape), data.num_classes
    teacher = create_model(cfg.teacher.arch, classes, shape).to(device).eval().requires_grad_(False)
    student = create_model(cfg.student.arch, classes, shape).to(device).train()
    opt = instantiate(cfg.student.optimizer)(student.parameters())
    terms = cfg.method.terms
    taps = None
    if "at" in terms:  # the stage pairs kdlab's AT term picks; the loss itself is written out below
        at = instantiate(terms.at)
        at.select_taps(student, teacher)
        pairs = list(zip(at.student_taps, at.teacher_taps))
        taps = (FeatureTaps(student, at.student_taps), FeatureTaps(teacher, at.teacher_taps))
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    times = []
    for i in range(WARMUP + steps):
        start = time.perf_counter()
        with amp:
            with torch.no_grad():
                t_logits = teacher(x)
            s_logits = student(x)
            loss = terms.ce.weight * F.cross_entropy(s_logits, y)
            if "kd" in terms:
                loss = loss + terms.kd.weight * kd_loss(s_logits, t_logits, terms.kd.temperature)
            if "dkd" in terms:
                d = terms.dkd
                loss = loss + d.weight * dkd_loss(s_logits, t_logits, y, d.alpha, d.beta, d.temperature)
            if taps is not None:
                s_feats, t_feats = taps[0].pop(), taps[1].pop()
                loss = loss + terms.at.weight * sum(at_loss(s_feats[a], t_feats[b], terms.at.p) for a, b in pairs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


class StepTimer(pl.Callback):
    """Records when each training batch starts (the step time is the gap to the next)."""

    def __init__(self, cuda: bool):
        self.cuda, self.starts = cuda, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.cuda:
            torch.cuda.synchronize()
        self.starts.append(time.perf_counter())


def kdlab_step_s(recipe: str, overrides: list[str], steps: int, device: str, out: Path) -> tuple[float, dict]:
    """(median seconds between consecutive training steps, results.json) of one short kdlab-train
    run of ``recipe``."""
    from kdlab.train import run

    cfg = compose(
        recipe,
        [
            *overrides,
            "trainer.max_epochs=1",
            f"+trainer.limit_train_batches={WARMUP + steps + 1}",
            "+trainer.limit_val_batches=1",
            "logger=none",
            "trainer.enable_progress_bar=false",
        ],
    )
    timer = StepTimer(device == "cuda")
    results = run(cfg, out, summary=False, callbacks=[timer])
    return statistics.median(b - a for a, b in zip(timer.starts[WARMUP:], timer.starts[WARMUP + 1 :])), results


def one_case(recipe: str, device: str, work: Path, steps: int | None = None) -> dict:
    """Both measurements for one recipe (run in a fresh process by ``main``)."""
    from kdlab.models import create_model
    from kdlab.models.checkpoint import save_weights

    batch, steps = CASES[recipe][0], steps or CASES[recipe][1]
    overrides = [
        f"data.batch_size={batch}",
        "trainer=gpu" if device == "cuda" else "trainer=cpu",
        "measure_speed=false",
    ]
    if recipe.startswith("cifar100/"):
        from kdlab.data.cifar import write_fake_cifar

        root = work / "fake-cifar"
        if not (root / "cifar-100-python").exists():
            write_fake_cifar(root, classes=100, n_train=64 * (WARMUP + steps + 4), n_test=64)
        overrides.append(f"data.root={root}")
    cfg = compose(recipe, overrides)
    torch.manual_seed(0)
    from hydra.utils import instantiate

    data = instantiate(cfg.data)
    teacher = create_model(cfg.teacher.arch, data.num_classes, tuple(data.input_shape))
    ckpt = save_weights(
        teacher, work / f"{cfg.teacher.arch}.safetensors", cfg.teacher.arch, data.num_classes, tuple(data.input_shape)
    )
    overrides.append(f"teacher.checkpoint={ckpt}")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    bare = bare_step_s(compose(recipe, overrides), batch, steps, device)
    kdlab, _ = kdlab_step_s(recipe, overrides, steps, device, work / "run")
    peak = (
        torch.cuda.max_memory_allocated()
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "recipe": recipe,
        "teacher": cfg.teacher.arch,
        "student": cfg.student.arch,
        "batch": batch,
        "steps": steps,
        "bare_ms": 1e3 * bare,
        "kdlab_ms": 1e3 * kdlab,
        "peak_mib": peak / 2**20,
    }


def machine(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"


def report(rows: list[dict], device: str, wall_s: float) -> str:
    lines = [
        f"## Training step, {device.upper()} ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {machine(device)}. Written by `make bench` (`python -m kdlab.bench --device {device}`) in "
        f"{wall_s:.0f} s. Median of the timed steps after {WARMUP} warm-up steps; random teacher weights; "
        "CIFAR-100 recipes on fake CIFAR-100 files; peak memory is the process's "
        + ("peak CUDA allocation." if device == "cuda" else "max RSS (both measurements)."),
        "",
        "| recipe | teacher -> student | batch | timed steps | bare loop (ms/step) | kdlab-train (ms/step) "
        "| kdlab / bare | images/s (kdlab) | peak memory (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['teacher']} -> {r['student']} | {r['batch']} | {r['steps']} | "
            f"{r['bare_ms']:.1f} | {r['kdlab_ms']:.1f} | {r['kdlab_ms'] / r['bare_ms']:.2f} | "
            f"{1e3 * r['batch'] / r['kdlab_ms']:.0f} | {r['peak_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


HEADER = """# Benchmarks

`make bench` measures one training step of kdlab-train against a bare PyTorch loop doing the
same arithmetic (see `kdlab/bench.py`) and replaces the section for its device below.
The bare loop has no data loading, augmentation, metrics or logging: the gap between the
two columns is everything kdlab and Lightning add, data pipeline included.
"""


def write_section(doc: Path, device: str, section: str) -> None:
    """Replace this device's section of ``doc`` (keeping the others), or add it."""
    text = doc.read_text() if doc.exists() else HEADER
    head = f"## Training step, {device.upper()} "
    parts = text.split("\n## ")
    kept = [p for p in parts[1:] if not ("## " + p).startswith(head)]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n## ".join([parts[0].rstrip() + "\n", *[p.rstrip() + "\n" for p in kept], section[3:]]))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m kdlab.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--cases", nargs="*", default=list(CASES), help="recipes to time (default: all)")
    parser.add_argument("--steps", type=int, help="timed steps per case (default: each case's own)")
    parser.add_argument("--doc", default="docs/benchmarks.md")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case in this process, JSON out
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("kdlab.bench: --device cuda, but torch sees no GPU; run it on a GPU machine or drop --device")
    if args.case:
        with tempfile.TemporaryDirectory() as work:
            print("BENCH " + json.dumps(one_case(args.case, args.device, Path(work), args.steps)), flush=True)
        return
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        raise SystemExit(f"kdlab.bench: unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    start, rows = time.perf_counter(), []
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "WANDB_MODE": "disabled"}
    for recipe in args.cases:
        cmd = [sys.executable, "-m", "kdlab.bench", "--case", recipe, "--device", args.device]
        proc = subprocess.run(
            cmd + (["--steps", str(args.steps)] if args.steps else []), env=env, capture_output=True, text=True
        )
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")), None)
        if proc.returncode != 0 or line is None:
            raise SystemExit(f"kdlab.bench: {recipe} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(line[6:]))
        r = rows[-1]
        print(
            f"{recipe}: bare {r['bare_ms']:.1f} ms, kdlab {r['kdlab_ms']:.1f} ms, peak {r['peak_mib']:.0f} MiB",
            flush=True,
        )
    section = report(rows, args.device, time.perf_counter() - start)
    write_section(Path(args.doc), args.device, section)
    print(section + f"written: {args.doc}")


if __name__ == "__main__":
    main()
