"""`make bench`: training-step time of kdlab against a bare loop and a peer-style loop, the
teacher-output cache, the data pipeline and the MNIST-1D paper protocol end to end, written to
docs/benchmarks.md.

For each case (a recipe from experiments/), three measurements of one optimisation step (teacher
forward without gradients, student forward and backward, optimizer step), each in a process of its
own (its peak memory is that process's):

- **bare**: a hand-written loop over one batch already in memory and already augmented (MNIST-1D's
  input noise is added in the loop, as a hand-written loop would): the models, the loss and the
  optimizer of the recipe, nothing else (the floor);
- **kdlab**: `kdlab-train experiments=<recipe>` itself, timed by a callback from one
  `on_train_batch_start` to the next: the data module, augmentation, the strategy, logging and
  Lightning all included;
- **peer**: the loop the CRD / DKD reference code runs (RepDistiller train_distill, mdistiller's
  trainer): a torch DataLoader with 2 worker processes doing the augmentation per sample
  (torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize over
  torchvision's CIFAR100 reading the same files; MNIST-1D: noise per sample), fp32, the live
  teacher; timed from one batch to the next (waiting for the workers included).

The teacher is a randomly initialised checkpoint (`teacher.checkpoint=...`), so nothing is
trained first; CIFAR-100 recipes read fake CIFAR-100 written in the real on-disk format.
`kdlab.bench_cache` (the cache warm / cold / off against student-only), `kdlab.bench_data` (the
pipelines) and `kdlab.bench_paper` (the MNIST-1D paper protocol, whole processes) add their
sections in the same run.

    python -m kdlab.bench                 # everything on the CPU, writes docs/benchmarks.md
    python -m kdlab.bench --only step     # one section: step | cache | data | paper
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

#: recipe -> (batch size, timed steps); the CIFAR batch is the recipes' 64
CASES = {
    "mnist1d/kd_cnn1d_mlp": (100, 300),
    "mnist1d/dkd_cnn1d_mlp": (100, 300),
    "cifar100/kd_resnet56_resnet20": (64, 8),
    "cifar100/dkd_resnet32x4_resnet8x4": (64, 8),
    "cifar100/at_resnet32x4_resnet8x4": (64, 8),
}
WARMUP = 3


def compose(recipe: str, overrides: list[str]):
    from kdlab.config import compose as compose_config

    return compose_config([f"experiments={recipe}", *overrides])[0]


def hand_step(cfg, device: str):
    """(step(x, y), data module) of the recipe in ``cfg`` written out by hand: the recipe's teacher,
    student, optimizer and loss terms (CE, KD, DKD, AT), one update per call."""
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
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)

    def step(x, y) -> None:
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

    return step, data


def bare_step_s(cfg, batch: int, steps: int, device: str) -> float:
    """Median seconds of one hand-written training step for the recipe in ``cfg`` on one batch in memory."""
    step, data = hand_step(cfg, device)
    x = torch.randn(batch, *data.input_shape, device=device)
    y = torch.randint(0, data.num_classes, (batch,), device=device)
    noise = float(cfg.data.get("noise_std") or 0.0)  # MNIST-1D's augmentation, as a hand-written loop adds it
    times = []
    for i in range(WARMUP + steps):
        start = time.perf_counter()
        step(x + noise * torch.randn_like(x) if noise else x, y)
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


class NoisySamples(torch.utils.data.Dataset):
    """MNIST-1D samples with Gaussian noise added per sample in the worker (the peer-style pipeline)."""

    def __init__(self, x, y, noise_std: float):
        self.x, self.y, self.noise_std = x, y, noise_std

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        x = self.x[i]
        return (x + self.noise_std * torch.randn_like(x) if self.noise_std else x), self.y[i]


def peer_loader(cfg, batch: int, workers: int = 2, device: str = "cpu", data=None):
    """The training DataLoader of the CRD / DKD reference code for the recipe's data: torchvision's
    CIFAR100 over the same files with per-sample RandomCrop(32, padding=4), RandomHorizontalFlip,
    ToTensor, Normalize (RepDistiller dataset/cifar100.py); MNIST-1D: its tensors, noise per sample.
    ``workers`` processes, shuffled, pinned memory on a GPU. ``data``: the recipe's data module, if
    built already."""
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    data = data if data is not None else instantiate(cfg.data)
    if cfg.data._target_.endswith("CIFAR"):
        from torchvision import datasets
        from torchvision import transforms as T

        from kdlab.data.cifar import MEAN, STD

        transform = T.Compose(
            [
                T.RandomCrop(32, padding=4),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(MEAN[data.classes], STD[data.classes]),
            ]
        )

        class Unverified(datasets.CIFAR100 if data.classes == 100 else datasets.CIFAR10):
            def _check_integrity(self) -> bool:  # the real files' md5 sums: not those of fake files
                return True

            def _load_meta(self) -> None:  # class names only (md5-checked by torchvision); not needed here
                self.classes = [str(i) for i in range(data.classes)]

        dataset = Unverified(str(data.root), train=True, transform=transform, download=False)
    else:
        data.setup()
        dataset = NoisySamples(data.train_set.x, data.train_set.y, float(cfg.data.get("noise_std") or 0.0))
    return DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=device == "cuda",
        persistent_workers=workers > 0,
    )


def peer_step_s(cfg, batch: int, steps: int, device: str) -> tuple[float, dict]:
    """Median seconds from one training batch to the next of the peer-style loop (``peer_loader``,
    fp32, the live teacher), epochs chained until ``steps`` are timed; and the peak memory."""
    step, data = hand_step(cfg, device)
    loader = peer_loader(cfg, batch, device=device, data=data)
    starts = []
    while len(starts) < WARMUP + steps + 1:
        for x, y in loader:
            starts.append(time.perf_counter())
            if len(starts) > WARMUP + steps:
                break
            step(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
    memory = peak_memory(device, loader)
    return statistics.median(b - a for a, b in zip(starts[WARMUP:], starts[WARMUP + 1 :])), memory


class StepTimer(pl.Callback):
    """Records when each training batch starts (the step time is the gap to the next)."""

    def __init__(self, cuda: bool):
        self.cuda, self.starts = cuda, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.cuda:
            torch.cuda.synchronize()
        self.starts.append(time.perf_counter())


def kdlab_step_s(
    recipe: str, overrides: list[str], steps: int, device: str, out: Path, epochs: bool = False
) -> tuple[float, dict]:
    """(median seconds between consecutive training steps, results.json) of one short kdlab-train
    run of ``recipe``: one epoch of at most ``steps`` timed steps, or with ``epochs`` as many epochs
    as it takes (the gaps across an epoch's end, validation included, are a few among many)."""
    from kdlab.train import run

    length = (
        ["trainer.max_epochs=100000", f"+trainer.max_steps={WARMUP + steps + 1}"]
        if epochs
        else ["trainer.max_epochs=1", f"+trainer.limit_train_batches={WARMUP + steps + 1}"]
    )
    cfg = compose(
        recipe,
        [
            *overrides,
            *length,
            "+trainer.limit_val_batches=1",
            "logger=none",
            "trainer.enable_progress_bar=false",
        ],
    )
    timer = StepTimer(device == "cuda")
    results = run(cfg, out, summary=False, callbacks=[timer])
    return statistics.median(b - a for a, b in zip(timer.starts[WARMUP:], timer.starts[WARMUP + 1 :])), results


MODES = ("bare", "kdlab", "peer")


def peak_memory(device: str, loader=None) -> dict:
    """Peak memory so far in MiB: CUDA's peak allocation on a GPU, else this process's max RSS; and
    the sum of the peak RSS of ``loader``'s live worker processes (pages they share with this
    process, which forked them, counted in each), None without workers."""
    if device == "cuda":
        own = torch.cuda.max_memory_allocated() / 2**20
    else:
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**20
    peaks = []
    for worker in getattr(getattr(loader, "_iterator", None), "_workers", None) or []:
        try:
            status = Path(f"/proc/{worker.pid}/status").read_text().splitlines()
        except OSError:
            continue
        peaks += [int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:")]
    return {"peak_mib": own, "worker_mib": sum(peaks) or None}


def one_case(recipe: str, mode: str, device: str, work: Path, steps: int | None = None) -> dict:
    """One measurement (``mode``: bare | kdlab | peer) of one recipe, in a fresh process (``main``)."""
    from hydra.utils import instantiate

    from kdlab.models import create_model
    from kdlab.models.checkpoint import save_weights

    batch, steps = CASES[recipe][0], steps or CASES[recipe][1]
    overrides = [
        f"data.batch_size={batch}",
        "trainer=gpu" if device == "cuda" else "trainer=cpu",
        "measure_speed=false",
        "teacher_cache.mode=off",  # the live teacher in all three (the cache has its own section)
    ]
    if recipe.startswith("cifar100/"):
        from kdlab.data.cifar import write_fake_cifar

        root = work / "fake-cifar"
        if not (root / "cifar-100-python").exists():
            write_fake_cifar(root, classes=100, n_train=64 * (WARMUP + steps + 4), n_test=64)
        overrides.append(f"data.root={root}")
    cfg = compose(recipe, overrides)
    torch.manual_seed(0)
    data = instantiate(cfg.data)
    teacher = create_model(cfg.teacher.arch, data.num_classes, tuple(data.input_shape))
    ckpt = save_weights(
        teacher, work / f"{cfg.teacher.arch}.safetensors", cfg.teacher.arch, data.num_classes, tuple(data.input_shape)
    )
    overrides.append(f"teacher.checkpoint={ckpt}")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    memory = None
    if mode == "bare":
        seconds = bare_step_s(compose(recipe, overrides), batch, steps, device)
    elif mode == "peer":
        seconds, memory = peer_step_s(compose(recipe, overrides), batch, steps, device)
    else:
        seconds, _ = kdlab_step_s(recipe, overrides, steps, device, work / "run", epochs=True)
    return {
        "recipe": recipe,
        "mode": mode,
        "teacher": cfg.teacher.arch,
        "student": cfg.student.arch,
        "batch": batch,
        "steps": steps,
        "ms": 1e3 * seconds,
        **(memory or peak_memory(device)),
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


def memory_cell(m: dict) -> str:
    """A measurement's peak MiB, and its workers' (``peak_memory``) in brackets when it had any."""
    return f"{m['peak_mib']:.0f}" + (f" (+{m['worker_mib']:.0f})" if m.get("worker_mib") else "")


def report(rows: list[dict], device: str, wall_s: float) -> str:
    """The step table from ``rows`` (one per recipe: ``{mode: measurement}``)."""
    lines = [
        f"## Training step, {device.upper()} ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {machine(device)}. Written by `make bench` (`python -m kdlab.bench --device {device}`) in "
        f"{wall_s:.0f} s. Each measurement in a process of its own; median step after {WARMUP} warm-up steps; "
        "random teacher weights, the live teacher (no teacher-output cache) in all three; CIFAR-100 recipes on "
        "fake CIFAR-100 files. Bare: one batch in memory, the step written by hand; kdlab: `kdlab-train`; peer: "
        "the CRD / DKD reference code's loop (DataLoader with 2 workers augmenting per sample). Peak memory: "
        + (
            "peak CUDA allocation."
            if device == "cuda"
            else "the process's max RSS (peer: + the sum of its 2 workers' peak RSS, pages shared with the main "
            "process counted in each)."
        ),
        "",
        "| recipe | teacher -> student | batch | timed steps | bare (ms/step) | kdlab-train (ms/step) | peer-style "
        "(ms/step) | kdlab / bare | peer / kdlab | peak MiB: bare / kdlab / peer (+ workers) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b, k, p = r["bare"], r["kdlab"], r["peer"]
        lines.append(
            f"| {k['recipe']} | {k['teacher']} -> {k['student']} | {k['batch']} | {k['steps']} | "
            f"{b['ms']:.1f} | {k['ms']:.1f} | {p['ms']:.1f} | {k['ms'] / b['ms']:.2f} | {p['ms'] / k['ms']:.2f} | "
            f"{b['peak_mib']:.0f} / {k['peak_mib']:.0f} / {memory_cell(p)} |"
        )
    return "\n".join(lines) + "\n"


HEADER = """# Benchmarks

`make bench` measures, side by side in one run (see `kdlab/bench.py`): one training step of
kdlab-train against a bare PyTorch loop doing the same arithmetic and against the loop of the
CRD / DKD reference code; the teacher-output cache warm, cold and off against student-only
training; the data pipelines; and the MNIST-1D paper protocol end to end. It replaces its own
sections below (one per device).
"""


def write_section(doc: Path, device: str, section: str) -> None:
    """Replace the section of ``doc`` that has ``section``'s title up to its device (keeping the
    others), or add it."""
    text = doc.read_text() if doc.exists() else HEADER
    title = section.splitlines()[0]
    head = title[: title.index(device.upper()) + len(device)] + " " if device.upper() in title else title
    parts = text.split("\n## ")
    kept = [p for p in parts[1:] if not ("## " + p).startswith(head)]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n## ".join([parts[0].rstrip() + "\n", *[p.rstrip() + "\n" for p in kept], section[3:]]))


def in_process(module: str, args: list[str], env: dict) -> dict:
    """Run ``python -m <module> <args>`` and return the JSON it prints after ``BENCH``; one line if it fails."""
    proc = subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"kdlab.bench: {module} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[6:])


SECTIONS = ("step", "cache", "data", "paper")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m kdlab.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--only", nargs="*", choices=SECTIONS, default=list(SECTIONS), help="sections to measure")
    parser.add_argument("--cases", nargs="*", default=list(CASES), help="recipes to time (default: all)")
    parser.add_argument("--steps", type=int, help="timed steps per case (default: each case's own)")
    parser.add_argument("--doc", default="docs/benchmarks.md")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one measurement in this process, JSON out
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("kdlab.bench: --device cuda, but torch sees no GPU; run it on a GPU machine or drop --device")
    if args.case:
        with tempfile.TemporaryDirectory() as work:
            print(
                "BENCH " + json.dumps(one_case(args.case, args.mode, args.device, Path(work), args.steps)), flush=True
            )
        return
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        raise SystemExit(f"kdlab.bench: unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "WANDB_MODE": "disabled"}
    doc = Path(args.doc)
    if "step" in args.only:
        start, rows = time.perf_counter(), []
        for recipe in args.cases:
            row = {}
            for mode in MODES:
                more = ["--steps", str(args.steps)] if args.steps else []
                row[mode] = in_process(
                    "kdlab.bench", ["--case", recipe, "--mode", mode, "--device", args.device, *more], env
                )
            rows.append(row)
            print(f"{recipe}: " + ", ".join(f"{m} {row[m]['ms']:.1f} ms" for m in MODES), flush=True)
        write_section(doc, args.device, report(rows, args.device, time.perf_counter() - start))
    if "cache" in args.only and args.device == "cpu":
        from kdlab import bench_cache

        write_section(doc, "cpu", bench_cache.run_all(env))
    if "data" in args.only:
        from kdlab import bench_data

        write_section(doc, args.device, bench_data.run_all(args.device, env))
    if "paper" in args.only and args.device == "cpu":
        from kdlab import bench_paper

        write_section(doc, "cpu", bench_paper.run_all(env))
    print(f"written: {doc}")


if __name__ == "__main__":
    main()
