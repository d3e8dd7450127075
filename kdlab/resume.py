"""Resume: a run continues from its own checkpoints when it is started again.

``resume`` (conf/train.yaml) says what a run does with checkpoints already in its directory:

- ``auto`` (default): every fit of the run (a Born-Again generation, a term's initialisation
  phase, the student) continues from its ``checkpoints/last.ckpt`` when one is there, provided
  the checkpoint was written by a run of the same config; a fresh directory starts fresh.
- ``never``: start over; the directory's checkpoints are deleted first (said in one line).
- a path: a ``last.ckpt`` (the run's main fit continues from it) or a run directory (each fit
  from that directory's checkpoint of the same name).

Everything a fit needs to go on as if it had never stopped is in the checkpoint: Lightning's
model (the student, the terms' learnable parts and buffers: CRD's memory bank, regressors),
optimizer, scheduler, epoch and callbacks (the best checkpoint so far); kdlab adds the
validation best (a persistent metric of the module), the RNG states, the run's config and its
W&B run id (``ResumeState``). Checkpoints are written atomically (``AtomicCheckpointIO``), so a
kill or a full disk never leaves a truncated file that resume would trust.

A config that differs from the checkpoint's in anything but the run length (and the keys in
``FREE`` that cannot change what is trained) is refused in one line naming the keys.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from kdlab.errors import KdlabError

log = logging.getLogger("kdlab")

LAST = "last.ckpt"
#: Config keys a resumed run may change: the run length, and what cannot change the numbers trained.
FREE = (
    "trainer.max_epochs",
    "student.max_epochs",
    "resume",
    "paths",
    "logger",
    "torch_threads",
    "measure_speed",
    "export_onnx",
    "teacher_cache",  # the teacher's logits stored or computed: the same numbers (fp16: within its rounding)
    "published",
    "sweep",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
)


def flat_config(cfg: DictConfig) -> dict[str, object]:
    """The config as given, ``{dotted.key: value}`` without the ``FREE`` keys. Interpolations are
    kept unresolved: a scheduler whose ``T_max`` follows ``${trainer.max_epochs}`` is the same
    config when the run is lengthened."""
    out: dict[str, object] = {}

    def walk(node, prefix: str) -> None:
        if prefix and any(prefix == f or prefix.startswith(f + ".") for f in FREE):
            return
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out


def config_diff(saved: dict, current: dict) -> list[str]:
    """``key: old -> new`` for every key whose value differs (or exists on one side only)."""
    missing = object()
    keys = sorted(set(saved) | set(current))
    diff = []
    for k in keys:
        a, b = saved.get(k, missing), current.get(k, missing)
        if a != b:
            shown = ["(absent)" if v is missing else repr(v) for v in (a, b)]
            diff.append(f"{k}: {shown[0]} -> {shown[1]}")
    return diff


def read_header(path: Path) -> dict:
    """A kdlab checkpoint's ``kdlab`` section and epoch, read without running code (weights_only)
    and without reading the tensors into memory (mmap)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated, not a checkpoint, or a pickle that wants to run code
        raise KdlabError(
            f"cannot resume from {path}: not a readable checkpoint ({type(e).__name__}); "
            "resume=never starts over, or point resume= at another last.ckpt"
        ) from None
    if not isinstance(ckpt, dict) or "kdlab" not in ckpt or "epoch" not in ckpt:
        raise KdlabError(
            f"cannot resume from {path}: not a checkpoint written by kdlab-train; "
            "resume=never starts over, or point resume= at a kdlab run's checkpoints/last.ckpt"
        )
    return {**ckpt["kdlab"], "epoch": int(ckpt["epoch"])}


@dataclass
class Resume:
    """Where each fit of a run continues from: ``checkpoints`` maps a fit's checkpoint directory
    to the ``last.ckpt`` it resumes (empty for a fresh start). ``latest`` is the one written last
    (its epoch is results.json's ``resumed_from``), ``wandb_id`` the W&B run to continue."""

    checkpoints: dict[Path, Path] = field(default_factory=dict)
    latest: Path | None = None
    epoch: int | None = None
    wandb_id: str | None = None

    def checkpoint_for(self, checkpoint_dir: Path) -> Path | None:
        return self.checkpoints.get(checkpoint_dir.resolve())

    def results(self) -> dict:
        return {"resumed_from": self.epoch, "resumed_checkpoint": str(self.latest) if self.latest else None}


def last_checkpoints(run_dir: Path) -> list[Path]:
    """Every fit's ``last.ckpt`` below ``run_dir`` (the main fit's and its sub-fits' directories)."""
    return sorted(p for p in run_dir.glob(f"**/checkpoints/{LAST}") if p.is_file())


def remove_partial_writes(run_dir: Path) -> None:
    """Temporary files of checkpoint writes a kill interrupted (``.<name>.<pid>.tmp``)."""
    for tmp in run_dir.glob("**/checkpoints/.*.tmp"):
        tmp.unlink(missing_ok=True)


def plan(cfg: DictConfig, run_dir: Path) -> Resume:
    """What ``cfg.resume`` means for ``run_dir``; refuses (one line) a checkpoint of another config."""
    mode = str(cfg.get("resume", "auto"))
    remove_partial_writes(run_dir)
    if mode == "never":
        found = last_checkpoints(run_dir)
        if found:
            log.warning(f"resume=never: starting over in {run_dir}, overwriting the checkpoints of the run there")
            for ckpt_dir in {p.parent for p in found}:
                for f in ckpt_dir.glob("*.ckpt"):
                    f.unlink()
        return Resume()
    if mode == "auto":
        source, found = run_dir, last_checkpoints(run_dir)
    else:
        source = Path(mode).expanduser()
        if source.is_file():
            found = [source]
        elif source.is_dir():
            found = last_checkpoints(source)
            if not found:
                raise KdlabError(f"resume={mode}: no checkpoints/{LAST} below this directory; resume=auto or never")
        else:
            raise KdlabError(f"resume={mode}: no such checkpoint or run directory; give a last.ckpt, auto or never")
    if not found:
        return Resume()
    current = flat_config(cfg)
    headers = {p: read_header(p) for p in found}
    for p, h in headers.items():
        diff = config_diff(h.get("config", {}), current)
        if diff:
            shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
            raise KdlabError(
                f"{p} was written by a run of another config ({shown}); run with the same config to resume, "
                "resume=never to start over in this directory, or give this run another hydra.run.dir"
            )
    latest = max(found, key=lambda p: p.stat().st_mtime)
    if source.is_file():  # one checkpoint: the run's main fit continues from it
        checkpoints = {(run_dir / "checkpoints").resolve(): source}
    else:  # a run directory: each fit from its own
        checkpoints = {(run_dir / p.parent.relative_to(source)).resolve(): p for p in found}
    resume = Resume(checkpoints, latest, headers[latest]["epoch"], headers[latest].get("wandb_id"))
    log.info(f"resuming from {latest} (epoch {resume.epoch})")
    return resume


def unfinished_run(cfg: DictConfig, root: Path, fresh: Path) -> Path | None:
    """The newest run directory ``root/*/*`` (kdlab-train's default ``outputs/<task>/<date>/<time>``)
    other than ``fresh`` that holds checkpoints of ``cfg``'s config, no results.json (it did not
    finish) and no live process: where the same command, started again, continues."""
    if str(cfg.get("resume", "auto")) != "auto" or last_checkpoints(fresh):
        return None
    current = flat_config(cfg)
    candidates = sorted(root.glob(f"*/*/checkpoints/{LAST}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for ckpt in candidates:
        run_dir = ckpt.parent.parent
        if run_dir.resolve() == fresh.resolve() or (run_dir / "results.json").exists() or in_use(run_dir):
            continue
        try:
            header = read_header(ckpt)
        except KdlabError:
            continue
        if not config_diff(header.get("config", {}), current):
            return run_dir
    return None


def in_use(run_dir: Path) -> bool:
    """Whether a live kdlab run holds ``run_dir`` (its ``.kdlab.lock``, see kdlab.context.run_directory)."""
    import fcntl

    lock = run_dir / ".kdlab.lock"
    if not lock.exists():
        return False
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


class ResumeState(pl.Callback):
    """Adds to every checkpoint what Lightning does not keep: the run's config (``flat_config``),
    its W&B run id and the RNG states; puts the RNG states back when a fit resumes."""

    def __init__(self, config: dict):
        self.config = config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        wandb = sys.modules.get("wandb")  # only when a W&B logger imported it
        run_id = wandb.run.id if wandb is not None and wandb.run is not None else None
        checkpoint["kdlab"] = {"config": self.config, "wandb_id": run_id, "rng": rng_states()}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        rng = checkpoint.get("kdlab", {}).get("rng")
        if rng is not None:
            set_rng_states(rng)


def rng_states() -> dict:
    """torch (CPU and CUDA), numpy and Python RNG states, as tensors and plain values (weights_only-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file in the same directory, synced, then renamed over
    the target: a reader (or a resume) sees the old file or the new one, never half of one. A
    full disk stops the run in one line, the previous checkpoints intact. Loads are weights_only."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise KdlabError(
                    f"disk full while writing {path}; the checkpoints saved before are intact: free space and run the "
                    "same command again to resume"
                ) from None
            raise KdlabError(f"cannot write checkpoint {path}: {e.strerror or e}") from None

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)
