"""The data pipelines' benchmark: augmented training batches per second, kdlab's in-memory
pipeline on the device against torch DataLoaders, each pipeline in a process of its own (its peak
memory is that process's), no model at all.

- **kdlab**: the data module as kdlab-train uses it: the split in memory on the device, batches
  sliced out of it (``InMemoryBatches``), augmented as a batch (``preprocess``: CIFAR's crop + flip
  drawn per image, MNIST-1D's noise);
- **DataLoader, 2 workers**: the CRD / DKD reference code's pipeline (``kdlab.bench.peer_loader``):
  torchvision's CIFAR100 over the same files, RandomCrop(32, padding=4) + RandomHorizontalFlip +
  ToTensor + Normalize per image in 2 worker processes (persistent); MNIST-1D: noise per sample;
- **DataLoader, 0 workers**: the same in the main process.

Timed from the first batch to the last of ``epochs`` epochs (worker start-up excluded: it is
reported on its own); CIFAR-100 on fake files in the real on-disk format.

    python -m kdlab.bench --only data
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

#: dataset -> (recipe whose data it is, batch, training images of the fake CIFAR, epochs)
CASES = {
    "cifar100": ("cifar100/kd_resnet32x4_resnet8x4", 64, 5000, 2),
    "mnist1d": ("mnist1d/kd_cnn1d_mlp", 100, None, 10),
}
PIPELINES = ("kdlab", "workers2", "workers0")


def batches_per_s(batches, epochs: int, device: str, transform=None) -> tuple[float, float, int]:
    """(batches per second after the first batch, seconds to the first batch, batches) over ``epochs``
    passes of the iterable ``batches``; ``transform`` runs on each batch (kdlab's on-device step)."""
    start = time.perf_counter()
    first, n = None, 0
    for _ in range(epochs):
        for batch in batches:
            if transform is not None:
                batch = transform(batch)
            else:
                batch = [t.to(device, non_blocking=True) for t in batch]
            if device == "cuda":
                torch.cuda.synchronize()
            n += 1
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    return (n - 1) / (end - first), first - start, n


def one(dataset: str, pipeline: str, device: str, work: Path) -> dict:
    from hydra.utils import instantiate

    from kdlab.bench import compose, peak_memory, peer_loader

    recipe, batch, images, epochs = CASES[dataset]
    overrides = [f"data.batch_size={batch}"]
    if images is not None:
        from kdlab.data.cifar import write_fake_cifar

        write_fake_cifar(work / "fake", classes=100, n_train=images, n_test=64)
        overrides.append(f"data.root={work / 'fake'}")
    cfg = compose(recipe, overrides)
    torch.manual_seed(0)
    if pipeline == "kdlab":
        dm = instantiate(cfg.data)
        dm.setup()
        from kdlab.data.base import InMemoryBatches

        loader = InMemoryBatches(dm.train_set, batch, True, device)
        rate, first_s, n = batches_per_s(loader, epochs, device, lambda b: dm.preprocess(b, train=True))
    else:
        loader = peer_loader(cfg, batch, workers=2 if pipeline == "workers2" else 0, device=device)
        rate, first_s, n = batches_per_s(loader, epochs, device)
    memory = peak_memory(device, loader)
    return {
        "dataset": dataset,
        "pipeline": pipeline,
        "batch": batch,
        "batches": n,
        "batches_per_s": rate,
        "first_batch_s": first_s,
        **memory,
    }


def report(rows: list[dict], device: str, wall_s: float) -> str:
    from kdlab.bench import machine, memory_cell

    names = {
        "kdlab": "kdlab (in memory on the device, batch augmentation)",
        "workers2": "DataLoader, 2 workers",
        "workers0": "DataLoader, 0 workers",
    }
    lines = [
        f"## Data pipeline, {device.upper()} ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {machine(device)}. Written by `make bench` (`python -m kdlab.bench --only data`) in {wall_s:.0f} s. "
        "Augmented training batches per second, no model: each pipeline in a process of its own, timed from the "
        "first batch to the last (CIFAR-100: 2 epochs of 5,000 fake images in the real on-disk format; MNIST-1D: "
        "10 epochs of its 3,600 training samples); the time to the first batch (worker start-up) apart. That "
        "kdlab's batch augmentation draws what torchvision's draws is tested in tests/test_augmentation.py.",
        "",
        "| data | batch | pipeline | batches/s | images/s | x DataLoader (2 workers) | first batch (s) "
        "| peak MiB (+ workers) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = next(q for q in rows if q["dataset"] == r["dataset"] and q["pipeline"] == "workers2")
        lines.append(
            f"| {r['dataset']} | {r['batch']} | {names[r['pipeline']]} | {r['batches_per_s']:.0f} | "
            f"{r['batches_per_s'] * r['batch']:.0f} | {r['batches_per_s'] / ref['batches_per_s']:.1f} | "
            f"{r['first_batch_s']:.2f} | {memory_cell(r)} |"
        )
    return "\n".join(lines) + "\n"


def run_all(device: str, env: dict) -> str:
    from kdlab.bench import in_process

    start, rows = time.perf_counter(), []
    for dataset in CASES:
        for pipeline in PIPELINES:
            rows.append(in_process("kdlab.bench_data", ["--one", dataset, pipeline, "--device", device], env))
            print(f"{dataset} {pipeline}: {rows[-1]['batches_per_s']:.0f} batches/s", flush=True)
    return report(rows, device, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m kdlab.bench_data", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--one", nargs=2, metavar=("DATASET", "PIPELINE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.one:
        with tempfile.TemporaryDirectory() as work:
            print("BENCH " + json.dumps(one(*args.one, args.device, Path(work))), flush=True)
        return
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "WANDB_MODE": "disabled"}
    print(run_all(args.device, env))


if __name__ == "__main__":
    main()
