"""The teacher-output cache: a frozen teacher's logits, computed once per (training sample, view)
and read back by every later step, run, seed, method and sweep trial that uses the same teacher
on the same data.

When every term of an offline run reads only the teacher's eval-mode logits (KD, DKD, DIST,
MSE on logits: ``Term.teacher_logits_only``), the teacher is a pure function of its input, and
its input is a pure function of (training sample, view): the sample's ``index`` in the training
split, which kdlab's loaders put in every batch, and the view the augmentation drew
(``KDDataModule.train_views``): one view without augmentation, 162 for CIFAR's padded crop +
flip, whose batches carry the view id. Augmentations that cannot be enumerated (Gaussian noise,
random resized crops) keep the live teacher, and the run says why in one line.

**Storage**: ``<paths.cache_dir>/teacher_outputs/<data>-<teacher arch>-<digest>/``:

- ``logits.bin``: rows x classes (fp16 by default, fp32 with ``teacher_cache.dtype=fp32``), row
  ``index * views + view``; a sparse file read through a memory map, so it takes disk space as it fills;
- ``filled.bin``: one byte per row, 1 once the row is written;
- ``header.json``: the key, the shape and a checksum of both.

The **key** (the digest) covers the teacher's weights, buffers and module structure (whatever it
was loaded from: a checkpoint, the teacher cache, trained now), the data (its name and config,
the bytes of the training inputs in index order, the view enumeration), the class count, the
numerics the teacher ran in (device type and autocast dtype) and the storage dtype. A different
teacher or data gets another directory and never reads this one. A directory whose header or
file sizes do not match is rebuilt (one log line).

**Filling**: lazily, a training step reads the rows it needs, runs the teacher on the missing
samples only and writes their rows (``teacher_cache.mode=auto``, the default); or eagerly for a
whole config with ``kdlab-cache-teacher <overrides>`` (every sample in every view). Writes go
through ``pwrite`` under a file lock, rows before their filled bytes, so concurrent runs filling
one cache never corrupt it and a full disk is an error of the write (the run goes on with the
live teacher for what is missing, one log line), never a crash of the memory map. A cache
directory that cannot be created (read-only, full) leaves the run on the live teacher, one line.

**Equality**: an fp32 row holds, bit for bit, the teacher's output for that sample as computed
in the batch that first met it. The teacher's output for a sample computed inside another batch
can differ from it in the last bits (convolution and matrix kernels round differently for other
batch shapes); within that, a cached run gives the live-teacher run's losses: bit-identical when
every row is read in the batch that filled it (the first epoch; every epoch with
``data.shuffle=false``; a rerun of the run that filled it), within fp16 rounding of the logits
for fp16.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from filelock import FileLock
from omegaconf import OmegaConf
from torch import Tensor, nn

from kdlab.data.base import LOADING_KEYS
from kdlab.errors import KdlabError

if TYPE_CHECKING:
    from kdlab.context import RunContext
    from kdlab.data.base import KDDataModule
    from kdlab.methods import Term

log = logging.getLogger("kdlab")

#: Bump when a change to kdlab changes what the teacher is given for a (sample, view) or how rows are stored.
FORMAT = 1
SUBDIR = "teacher_outputs"
DTYPES = {"fp16": np.dtype("<f2"), "fp32": np.dtype("<f4")}
#: a filled store up to this size is read from a copy on the training device (MNIST-1D: 72 kB;
#: CIFAR-100 in 162 views: 1.6 GB in fp16)
RESIDENT_BYTES = 2 * 2**30
#: Data config keys that do not change which input a (sample, view) is.
DATA_KEYS_IGNORED = (*LOADING_KEYS, "shuffle", "pin_memory", "persistent_workers", "prefetch_factor")


def weights_digest(model: nn.Module) -> str:
    """sha256 of what makes ``model`` the function it is: its class, structure (``repr``), ensemble
    combination, and every tensor of its state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}\n{model!r}\n".encode())
    h.update(f"combine={getattr(model, 'combine', None)}\n".encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{t.numel()}\n".encode())
        h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()


def tensor_digest(t: Tensor) -> str:
    t = t.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(t.view(torch.uint8).numpy()).hexdigest()


def logits_only_reason(terms: Mapping[str, Term]) -> str | None:
    """Why ``terms`` (their taps selected) cannot read cached teacher logits, or None when they can."""
    other = [name for name, t in terms.items() if t.needs_teacher and not t.teacher_logits_only]
    if other:
        return f"method.terms {', '.join(other)} read more of the teacher than its logits (feature taps or train mode)"
    return None


def numerics(x: Tensor, teacher: nn.Module) -> str:
    """The arithmetic the teacher runs in for input ``x`` here: device type and autocast dtype (or
    its parameters' dtype); part of the key, so a bf16 GPU run never reads a CPU fp32 run's rows."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
    else:
        dtype = next((p.dtype for p in teacher.parameters()), x.dtype)
    return f"{device}/{str(dtype).removeprefix('torch.')}"


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def scatter(fd: int, current: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """Write ``values`` (bytes, a row each) at the sorted, unique ``rows`` of file ``fd``, whose rows
    of ``current.shape[1]`` bytes ``current`` maps: one write of the span they lie in, the rows between
    copied as they are, when that span is small (the writer holds the store's lock: no other writer
    changes them meanwhile); else one write per run of consecutive rows."""
    width = current.shape[1]
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    if (hi - lo) * width <= max(1 << 18, 4 * len(rows) * width):
        block = np.array(current[lo:hi])
        block[rows - lo] = values
        os.pwrite(fd, block.tobytes(), lo * width)
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
        os.pwrite(fd, values[a:b].tobytes(), int(rows[a]) * width)


class Store:
    """One cache directory (``header.json``, ``logits.bin``, ``filled.bin``), open for reading
    through memory maps and for writing through ``pwrite`` under a file lock."""

    HEADER, LOGITS, FILLED = "header.json", "logits.bin", "filled.bin"

    def __init__(self, path: Path, rows: int, classes: int, dtype: np.dtype):
        self.path, self.rows, self.classes, self.dtype = path, rows, classes, dtype
        self.row_bytes = classes * dtype.itemsize
        # plain arrays over read-only memory maps (numpy's memmap subclass adds to every indexing)
        self.logits = np.asarray(np.memmap(path / self.LOGITS, dtype=dtype, mode="r", shape=(rows, classes)))
        self.filled = np.asarray(np.memmap(path / self.FILLED, dtype=np.uint8, mode="r", shape=(rows,)))
        self.lock = FileLock(str(path.parent / f"{path.name}.lock"))
        self.fds: tuple[int, int] | None = None
        self.writable, self.write_error = True, ""

    # opening, checking, building
    @staticmethod
    def header(key: dict, rows: int, classes: int, dtype: np.dtype) -> dict:
        body = {"format": FORMAT, "key": key, "rows": rows, "classes": classes, "dtype": dtype.str}
        return {**body, "checksum": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()}

    @classmethod
    def fault(cls, path: Path, expected: dict) -> str | None:
        """What is wrong with the directory at ``path`` for header ``expected`` ("missing" when there
        is none), or None when it is a complete store of that key."""
        if not (path / cls.HEADER).is_file():
            return "missing"
        try:
            found = json.loads((path / cls.HEADER).read_text())
            body = {k: v for k, v in found.items() if k != "checksum"}
            checksum = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        except (OSError, ValueError, AttributeError) as e:
            return f"its header is unreadable ({type(e).__name__})"
        if found.get("checksum") != checksum:
            return "its header fails its checksum"
        if found != expected:
            return "it was written for another teacher, data or layout (its key differs)"
        sizes = {cls.LOGITS: expected["rows"] * expected["classes"] * np.dtype(expected["dtype"]).itemsize}
        sizes[cls.FILLED] = expected["rows"]
        for name, size in sizes.items():
            try:
                actual = (path / name).stat().st_size
            except OSError:
                return f"{name} is missing"
            if actual != size:
                return f"{name} has {actual} bytes, not {size} (truncated or damaged)"
        return None

    @classmethod
    def open(cls, root: Path, name: str, key: dict, rows: int, classes: int, dtype: np.dtype) -> Store:
        """The store ``root/name`` of ``key``: opened when complete, else built (rebuilt, with one log
        line, when damaged or of another key). Raises ``OSError`` when it can be neither read nor made."""
        path, expected = root / name, cls.header(key, rows, classes, dtype)
        if cls.fault(path, expected) is None:
            return cls(path, rows, classes, dtype)
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / f"{name}.lock")):  # one process builds; the others wait and open it
            fault = cls.fault(path, expected)
            if fault is not None:
                if fault != "missing":
                    log.warning(f"teacher-output cache {path}: {fault}; rebuilding it empty")
                cls.build(path, expected)
        return cls(path, rows, classes, dtype)

    @classmethod
    def build(cls, path: Path, header: dict) -> None:
        """An empty store (sparse files of the full size) made beside ``path`` and renamed into place:
        readers see the old directory or the complete new one, and a process that still maps the
        old files keeps them until it closes them."""
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        try:
            sizes = {cls.LOGITS: header["rows"] * header["classes"] * np.dtype(header["dtype"]).itemsize}
            sizes[cls.FILLED] = header["rows"]
            for name, size in sizes.items():
                with open(tmp / name, "wb") as f:
                    f.truncate(size)
            (tmp / cls.HEADER).write_text(json.dumps(header, indent=1, sort_keys=True) + "\n")
            if path.exists():
                trash = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.trash"
                os.rename(path, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.rename(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # reading and writing
    def lookup(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(which of ``rows`` are filled, their values): filled bytes first, then the rows (written in
        the other order), so a row read as filled is complete."""
        hit = self.filled[rows] != 0
        return hit, self.logits[rows if hit.all() else rows[hit]]

    def write(self, rows: np.ndarray, values: np.ndarray) -> int:
        """Store ``values`` (one per row) and mark the rows filled; returns how many were written.
        The first refusal of the disk (full, read-only) stops this store's writes, with one line."""
        if not self.writable or len(rows) == 0:
            return 0
        rows, first = np.unique(rows, return_index=True)
        values = np.ascontiguousarray(values[first], dtype=self.dtype).view(np.uint8)
        try:
            with self.lock:
                if self.fds is None:
                    self.fds = (
                        os.open(self.path / self.LOGITS, os.O_RDWR),
                        os.open(self.path / self.FILLED, os.O_RDWR),
                    )
                logits_fd, filled_fd = self.fds
                scatter(logits_fd, self.logits.view(np.uint8), rows, values)  # the rows first,
                scatter(filled_fd, self.filled[:, None], rows, np.ones((len(rows), 1), np.uint8))  # then their flags
        except OSError as e:
            self.writable, self.write_error = False, f"{type(e).__name__}: {e.strerror or e}"
            log.warning(
                f"teacher-output cache: cannot write under {self.path} ({self.write_error}); "
                "the live teacher computes the missing rows for the rest of this run"
            )
            return 0
        return len(rows)

    def filled_rows(self) -> int:
        return int(np.count_nonzero(self.filled))

    def disk_bytes(self) -> int:
        """Bytes the store takes on disk (its sparse files grow as they fill)."""
        total = 0
        for name in (self.HEADER, self.LOGITS, self.FILLED):
            try:
                total += os.stat(self.path / name).st_blocks * 512
            except OSError:
                pass
        return total

    def full_bytes(self) -> int:
        return self.rows * (self.row_bytes + 1)

    def close(self) -> None:
        if self.fds is not None:
            for fd in self.fds:
                os.close(fd)
            self.fds = None


class TeacherOutputs:
    """The cache as one run uses it: ``logits(teacher, x, index, views)`` for each training batch,
    and ``report()`` for results.json. Built by ``plan``; off (``reason`` says why) when the run
    cannot use it. The store opens at the first batch, when the numerics it runs in are known."""

    def __init__(
        self,
        root: Path | None = None,
        key: dict | None = None,
        samples: int = 0,
        views: int = 1,
        classes: int = 0,
        dtype: str = "fp16",
        mode: str = "auto",
        reason: str | None = None,
        label: str = "",
    ):
        self.root, self.key, self.samples, self.views, self.classes = root, key or {}, samples, views, classes
        self.dtype, self.mode, self.reason, self.label = dtype, mode, reason, label
        self.store: Store | None = None
        self.out_dtype: torch.dtype | None = None
        self.rows_read = self.rows_hit = self.rows_written = self.rows_unstorable = 0
        self.fill_s = 0.0
        # once every row is filled, a store of at most RESIDENT_BYTES is copied to the training device
        # and read by indexing there: no host round trip, no numpy, per step
        self.resident: Tensor | None = None
        self.filled_known = 0  # rows known to be filled (at opening, plus those written since)

    @classmethod
    def off(cls, reason: str, mode: str = "auto", dtype: str = "fp16", announce: bool = True) -> TeacherOutputs:
        if announce:
            log.info(f"teacher-output cache off: {reason}; the live teacher runs every step")
        return cls(mode=mode, dtype=dtype, reason=reason)

    @property
    def active(self) -> bool:
        return self.reason is None

    def disable(self, reason: str) -> None:
        log.info(f"teacher-output cache off: {reason}; the live teacher runs every step")
        self.reason = reason
        if self.store is not None:
            self.store.close()

    def __getstate__(self):  # pickled with its module (DDP spawn): the store opens again where it lands
        return {**self.__dict__, "store": None, "resident": None}

    def make_resident(self, store: Store, device: torch.device) -> None:
        """Copy the store to ``device`` when every row is filled and it is small enough."""
        if self.filled_known < store.rows or store.rows * store.row_bytes > RESIDENT_BYTES:
            return
        self.filled_known = store.filled_rows()  # the flags themselves: another process may have filled rows too
        if self.filled_known == store.rows:
            self.resident = torch.from_numpy(np.array(store.logits)).to(device)  # (rows, classes), storage dtype

    # the store
    def full_key(self, numerics_: str) -> dict:
        return {**self.key, "numerics": numerics_, "dtype": self.dtype}

    def open(self, x: Tensor, teacher: nn.Module) -> Store | None:
        """The store for the numerics of this input; None (and off, one line) when it cannot be opened."""
        if self.store is None and self.active:
            key = self.full_key(numerics(x, teacher))
            digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
            name = f"{self.label}-{digest}"
            try:
                self.store = Store.open(
                    self.root, name, key, self.samples * self.views, self.classes, DTYPES[self.dtype]
                )
                self.filled_known = self.store.filled_rows()
            except OSError as e:
                self.disable(f"cannot use {self.root} ({type(e).__name__}: {e.strerror or e})")
        return self.store

    def rows(self, index: Tensor, views: Tensor | None) -> np.ndarray:
        index = np.asarray(index.detach().cpu().numpy(), dtype=np.int64)
        if self.views == 1:
            return index
        if views is None:
            raise KdlabError(
                f"the teacher-output cache needs each training batch's view ids ({self.views} views), but the "
                "batches carry none; set teacher_cache.mode=off"
            )
        return index * self.views + views.detach().cpu().numpy().astype(np.int64)

    def store_rows(self, store: Store, rows: np.ndarray, logits: Tensor) -> None:
        """Write the teacher's ``logits`` for ``rows``, but not rows the storage dtype cannot hold."""
        with np.errstate(over="ignore"):  # logits beyond fp16's range become inf, and are not stored
            values = logits.detach().float().cpu().numpy().astype(store.dtype)
        ok = np.isfinite(values).all(axis=1)
        if not ok.all():
            if self.rows_unstorable == 0:
                log.warning(
                    f"teacher-output cache: {int((~ok).sum())} rows not stored: the teacher's logits are not finite "
                    f"in {self.dtype}"
                    + (" (|z| > 65504); teacher_cache.dtype=fp32 stores them" if self.dtype == "fp16" else "")
                )
            self.rows_unstorable += int((~ok).sum())
        written = store.write(rows[ok], values[ok])
        self.rows_written += written
        self.filled_known += written

    # what a training step asks
    @torch.no_grad()
    def logits(self, teacher: nn.Module, x: Tensor, index: Tensor, views: Tensor | None = None) -> Tensor:
        """The teacher's logits for the training batch ``x`` (samples ``index`` in ``views``): cached
        rows as stored, the others computed by the teacher on the missing samples only and stored."""
        if self.resident is not None and self.resident.device == x.device:
            rows_t = index if self.views == 1 else index * self.views + views.to(index.device)
            self.rows_read += len(index)
            self.rows_hit += len(index)
            return self.resident[rows_t.to(x.device)].to(self.out_dtype)
        store = self.open(x, teacher)
        if store is None:
            return teacher(x)
        rows = self.rows(index, views)
        hit, cached = store.lookup(rows)
        n_hit = int(hit.sum())
        self.rows_read += len(rows)
        self.rows_hit += n_hit
        if n_hit == len(rows):
            if self.out_dtype is None:  # the dtype the live teacher gives here (autocast, an ensemble's fp32)
                self.out_dtype = teacher(x[:1]).dtype
            self.make_resident(store, x.device)
            return torch.from_numpy(cached).to(x.device, self.out_dtype)
        start = time.perf_counter()
        if n_hit == 0:
            fresh = teacher(x)
            out = fresh
        else:
            hit_t = torch.from_numpy(hit).to(x.device)
            fresh = teacher(x[~hit_t])
            out = torch.empty((len(rows), fresh.shape[1]), dtype=fresh.dtype, device=x.device)
            out[~hit_t] = fresh
            out[hit_t] = torch.from_numpy(cached).to(x.device, fresh.dtype)
        self.out_dtype = fresh.dtype
        self.store_rows(store, rows[~hit], fresh)
        self.fill_s += time.perf_counter() - start
        return out

    # eager filling (kdlab-cache-teacher)
    @torch.no_grad()
    def fill(self, teacher: nn.Module, data: KDDataModule, device: torch.device, batch_size: int) -> None:
        """Every missing row: each training sample in each view, the teacher in batches of ``batch_size``."""
        train_x = data.train_set.x
        probe = data.view_inputs(train_x[:1].to(device), None if self.views == 1 else torch.zeros(1, dtype=torch.long))
        store = self.open(probe, teacher)
        if store is None:
            raise KdlabError(f"the teacher-output cache cannot be used: {self.reason}")
        start, total, done, shown = time.perf_counter(), len(train_x), 0, 0.0
        per_block = max(1, 8 * batch_size // self.views)  # samples whose rows (all views) are filled at once
        for s in range(0, total, per_block):
            e = min(s + per_block, total)
            rows = (np.arange(s, e)[:, None] * self.views + np.arange(self.views)).reshape(-1)
            missing = rows[store.filled[rows] == 0]
            for a in range(0, len(missing), batch_size):
                chunk = missing[a : a + batch_size]
                xs = train_x[torch.from_numpy(chunk // self.views)].to(device)
                v = None if self.views == 1 else torch.from_numpy(chunk % self.views).to(device)
                t0 = time.perf_counter()
                self.store_rows(store, chunk, teacher(data.view_inputs(xs, v)))
                self.fill_s += time.perf_counter() - t0
            done = e
            if time.perf_counter() - shown > 10 or done == total:
                shown = time.perf_counter()
                rate = self.rows_written / max(shown - start, 1e-9)
                print(f"  {done}/{total} samples ({rate:.0f} rows/s)", file=sys.stderr, flush=True)
        if not store.writable:
            raise KdlabError(f"cannot write the teacher-output cache under {store.path} ({store.write_error})")

    # what the run reports
    def report(self) -> dict:
        base = {"used": self.active, "mode": self.mode, "dtype": self.dtype}
        if not self.active:
            return {**base, "reason": self.reason}
        store = self.store
        out = {
            **base,
            "dir": str(store.path) if store else None,
            "views": self.views,
            "rows": self.samples * self.views,
            "rows_read": self.rows_read,
            "rows_hit": self.rows_hit,
            "hit_rate": round(self.rows_hit / self.rows_read, 6) if self.rows_read else None,
            "rows_written": self.rows_written,
            "fill_s": round(self.fill_s, 3),
        }
        if store is not None:
            out.update(
                filled=round(store.filled_rows() / store.rows, 6),
                size_bytes=store.disk_bytes(),
                size_full_bytes=store.full_bytes(),
                writable=store.writable,
            )
        return out

    def summary(self) -> str:
        r = self.report()
        if not r["used"]:
            return f"teacher-output cache off: {r['reason']}"
        if r.get("dir") is None:
            return "teacher-output cache: not opened (no training step ran)"
        read = f"{100 * r['hit_rate']:.1f}% of {r['rows_read']:,} rows read from it, " if r["rows_read"] else ""
        return (
            f"teacher-output cache: {read}{r['rows_written']:,} written ({r['fill_s']:.1f} s); "
            f"{100 * r['filled']:.1f}% of {r['rows']:,} rows filled, {human_bytes(r['size_bytes'])} on disk "
            f"({self.dtype}) at {r['dir']}"
        )


def plan(run: RunContext, teacher: nn.Module, announce: bool = True) -> TeacherOutputs:
    """The teacher-output cache of an offline run whose teacher is ``teacher`` (``teacher_cache``:
    ``mode`` auto | off, ``dtype`` fp16 | fp32): on, or off with one line saying why. The terms are
    checked later, once their taps are chosen (``TeacherOutputs.disable``). ``announce``: log the line."""
    from kdlab.data.base import TensorBatches

    opts = run.cfg.get("teacher_cache") or {}
    mode, dtype = opts.get("mode", "auto"), opts.get("dtype", "fp16")
    if mode == "off":
        return TeacherOutputs.off("teacher_cache.mode=off", mode, dtype, announce)
    data = run.data
    data.setup()
    views = data.train_views()
    if views.count is None:
        return TeacherOutputs.off(views.reason, mode, dtype, announce)
    if not isinstance(data.train_set, TensorBatches):
        reason = f"{data.name}'s training samples are not in-memory tensors"
        return TeacherOutputs.off(reason, mode, dtype, announce)
    config = OmegaConf.to_container(run.cfg.data, resolve=True)
    arch = getattr(teacher, "kdlab_arch", None) or run.cfg.teacher.arch
    key = {
        "format": FORMAT,
        "teacher": {"arch": arch, "weights": weights_digest(teacher)},
        "data": {
            "name": data.name,
            "config": {k: v for k, v in config.items() if k not in DATA_KEYS_IGNORED},
            "train_inputs": tensor_digest(data.train_set.x),
            "samples": len(data.train_set),
            "views": views.count,
            "view_scheme": views.scheme,
        },
        "classes": data.num_classes,
    }
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{data.name}-{arch}").strip("_")
    root = Path(run.cfg.paths.cache_dir) / SUBDIR
    return TeacherOutputs(root, key, len(data.train_set), views.count, data.num_classes, dtype, mode, label=label)


USAGE = """usage: kdlab-cache-teacher [overrides ...]

Fill the teacher-output cache of the offline run `kdlab-train <overrides>` would make: the teacher's
logits for every training sample in every view (CIFAR: 162 per image), in the numerics of that
config's trainer (trainer=gpu: on the GPU, bf16). Later runs, seeds, methods and sweep trials on the
same teacher and data read them instead of running the teacher. Needs teacher_cache.mode=auto."""


def fill_config(overrides: list[str]) -> TeacherOutputs:
    """Fill the teacher-output cache of the offline run ``kdlab-train <overrides>`` would make (every
    training sample in every view, in that config's trainer's device and precision); returns it."""
    from lightning.fabric import Fabric

    from kdlab.config import compose, instantiate, upgrade_overrides, validate
    from kdlab.context import RunContext
    from kdlab.strategies.offline import Offline

    cfg, _ = compose(upgrade_overrides(overrides))
    cfg.paths.output_dir = str(Path(cfg.paths.cache_dir) / SUBDIR)
    validate(cfg)
    torch.set_num_threads(cfg.torch_threads)
    if cfg.task != "distill" or not isinstance(instantiate(cfg.strategy), Offline):
        raise KdlabError("kdlab-cache-teacher fills the cache of offline runs: use task=distill strategy=offline")
    data = instantiate(cfg.data)
    data.setup()
    views = data.train_views()
    if views.count is None or cfg.teacher_cache.mode == "off":  # said before a teacher is trained for nothing
        reason = views.reason or "teacher_cache.mode=off"
        raise KdlabError(f"this run cannot use the teacher-output cache: {reason}")
    run = RunContext(cfg, data, Path(cfg.paths.output_dir))
    terms = run.terms()
    if not any(t.needs_teacher for t in terms.values()):
        raise KdlabError(f"method={cfg.method.name} reads no teacher: there is nothing to cache")
    student = run.model(cfg.student)
    teacher = run.teacher().requires_grad_(False).eval()
    for term in terms.values():
        term.select_taps(student, teacher)
    cache = plan(run, teacher, announce=False)
    reason = cache.reason or logits_only_reason(terms)
    if reason:
        raise KdlabError(f"this run cannot use the teacher-output cache: {reason}")
    try:
        fabric = Fabric(accelerator=cfg.trainer.accelerator, devices=1, precision=cfg.trainer.precision)
    except Exception as e:  # no GPU for trainer=gpu, an unknown precision
        raise KdlabError(f"trainer: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    teacher = teacher.to(fabric.device)
    channels_last = any("ChannelsLast" in str(c.get("_target_", "")) for c in cfg.trainer.get("callbacks") or [])
    if channels_last and any(p.dim() == 4 for p in teacher.parameters()):
        teacher = teacher.to(memory_format=torch.channels_last)
    print(f"kdlab-cache-teacher: {len(data.train_set)} samples x {cache.views} views", file=sys.stderr)
    # a CPU runs these convolutions fastest in the training batch (resnet32x4: 81 images/s at 64, 49 at 256)
    batch = data.batch_size if fabric.device.type == "cpu" else data.eval_batch_size
    with fabric.autocast():
        cache.fill(teacher, data, fabric.device, batch)
    return cache


def cli() -> None:
    """kdlab-cache-teacher: the eager fill, for a config given as kdlab-train overrides."""
    from kdlab.context import quiet_third_party
    from kdlab.errors import one_line_errors

    argv = sys.argv[1:]
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    quiet_third_party()
    with one_line_errors("kdlab-cache-teacher"):
        cache = fill_config(argv)
        print(f"kdlab-cache-teacher: {cache.summary()}")


if __name__ == "__main__":
    cli()
