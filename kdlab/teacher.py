"""Where an offline teacher comes from, the cache that lets every run reuse a trained one, and
``task=teacher`` (``TeacherTraining``: train the teacher of ``conf/teacher`` and cache it).

``get_teacher(run)`` is the entry point (``RunContext.teacher()`` calls it).

In order: ``teacher.checkpoint`` (a file you give), else the cached teacher whose key matches
this config, else kdlab trains it on demand with its own recipe and stores it under that
key. The key hashes what determines the trained weights: arch and its kwargs, pretrained
starting point, data (minus batch size, workers and paths), recipe (epochs, batch size,
optimizer, scheduler) and the teacher's seed. A file lock makes concurrent runs (sweep
workers) wait for the one that trains instead of training it twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import lightning.pytorch as pl
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdlab.config import instantiate
from kdlab.data.base import LOADING_KEYS
from kdlab.errors import KdlabError
from kdlab.methods import CrossEntropy
from kdlab.models.checkpoint import files_in, load_weights, non_finite, save_weights
from kdlab.models.ensemble import TeacherEnsemble
from kdlab.strategies.base import Fitted, Strategy, Trained
from kdlab.strategies.offline import OfflineDistillation, train_offline

if TYPE_CHECKING:
    from kdlab.context import RunContext

log = logging.getLogger(__name__)

#: Bump when a change to kdlab would make previously cached teachers differ from new ones.
CACHE_FORMAT = 1
#: Data keys that do not change what a model learns.
DATA_KEYS_IGNORED = LOADING_KEYS
WEIGHTS_FILE = "teacher.safetensors"


def teacher_recipe(teacher_cfg: DictConfig, data_cfg: DictConfig) -> dict:
    """Everything that determines the weights of a teacher kdlab trains (the key's contents)."""
    t = OmegaConf.to_container(teacher_cfg, resolve=True)
    data = OmegaConf.to_container(data_cfg, resolve=True)
    return {
        "format": CACHE_FORMAT,
        "arch": t["arch"],
        "kwargs": t.get("kwargs") or {},
        "pretrained": t.get("pretrained", False),
        "pretrained_path": t.get("pretrained_path"),
        "seed": t["seed"],
        "max_epochs": t["max_epochs"],
        "batch_size": t["batch_size"],
        "optimizer": t["optimizer"],
        "scheduler": t.get("scheduler"),
        "data": {k: v for k, v in data.items() if k not in DATA_KEYS_IGNORED},
    }


def teacher_key(recipe: dict, data_name: str) -> str:
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return f"{data_name}-{recipe['arch']}-{digest}"


def cache_entry(cache_dir: str | Path, key: str) -> Path:
    """The folder of one cached teacher: teacher.safetensors + recipe.json."""
    return Path(cache_dir) / "teachers" / key


def cache_lock(entry: Path) -> FileLock:
    """The lock of one cache entry; re-entrant within a process (the trainer holds it while it saves)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{entry}.lock", is_singleton=True)


def write_recipe(entry: Path, recipe: dict, metrics: dict) -> None:
    entry.mkdir(parents=True, exist_ok=True)
    (entry / "recipe.json").write_text(json.dumps({"recipe": recipe, "metrics": metrics}, indent=2) + "\n")


@dataclass
class TeacherTraining(Strategy):
    """``task=teacher``: train the teacher of ``conf/teacher`` with its own recipe, save it in the run
    directory (``teacher.safetensors``) and in the cache, where every later run finds it."""

    def labels(self, cfg: DictConfig) -> dict[str, str | None]:
        return {"strategy": None, "method": None, "teacher": cfg.teacher.arch}

    def fit(self, run: RunContext) -> Fitted:
        t = run.cfg.teacher
        if t.get("ensemble"):
            raise KdlabError("task=teacher trains one teacher; train the members one by one (teacher.seed=...)")
        module = train_teacher(run, t)
        if module.trainer.is_global_zero:
            metrics = {"val_acc_best": module.best_val_acc(), "run": str(run.output_dir)}
            cache_teacher(run, t, module.student, metrics, also_to=run.output_dir / WEIGHTS_FILE)
        teacher = Trained(module.student, t.arch, OmegaConf.to_container(t.kwargs))  # one model: no ensemble
        return Fitted(None, teacher, module.best_val_acc(), module.trainer)


def train_teacher(run: RunContext, t: DictConfig, **fit) -> OfflineDistillation:
    """Train teacher ``t`` with its own recipe (seed, epochs, batch size, optimizer) on cross-entropy;
    ``fit`` goes to ``RunContext.fit`` (no checkpoints, one device, ...)."""
    pl.seed_everything(t.seed, workers=True, verbose=False)
    data = instantiate(run.cfg.data, batch_size=t.batch_size, strong_view=False)
    run = run.child(data=data)
    return train_offline(run, run.model(t, "teacher"), t, {"ce": CrossEntropy()}, max_epochs=t.max_epochs, **fit)


def get_teacher(run: RunContext) -> nn.Module:
    """The offline teacher of ``cfg.teacher``: one model, or a ``TeacherEnsemble`` of its members."""
    cfg = run.cfg
    ens = cfg.teacher.get("ensemble")
    if not ens:
        return single_teacher(run, cfg.teacher)
    base = OmegaConf.to_container(cfg.teacher, resolve=True)
    base.pop("ensemble")
    members = [OmegaConf.create({**base, **member}) for member in OmegaConf.to_container(ens.members, resolve=True)]
    models = [single_teacher(run, m) for m in members]
    arch = f"ensemble[{','.join(m.arch for m in members)}]"
    log.info(f"teacher: {arch}, combining {ens.combine}")
    return TeacherEnsemble(models, ens.get("weights"), ens.combine, arch=arch)


def single_teacher(run: RunContext, t: DictConfig) -> nn.Module:
    """Teacher ``t``: its ``checkpoint``, else the cached one for its recipe, else trained now and cached."""
    cfg, data = run.cfg, run.data
    shape, classes = data.input_shape, data.num_classes
    if t.checkpoint:
        path = Path(t.checkpoint)
        if path.is_dir():
            raise KdlabError(f"teacher checkpoint {path} is a directory; give the checkpoint file{files_in(path)}")
        if not path.is_file():
            raise KdlabError(
                f"teacher checkpoint {path} not found; make one with `kdlab-train task=teacher teacher.arch={t.arch} "
                f"data=...` (it prints where it saved it), or set teacher.checkpoint=null to train it on demand"
            )
        log.info(f"teacher: loading {path}")
        return load_weights(path, t.arch, classes, shape, t.kwargs, role="teacher")
    if t.max_epochs == 0:  # pretrained weights used as they are
        return run.model(t, "teacher")
    key = teacher_key(teacher_recipe(t, cfg.data), data.name)
    entry = cache_entry(cfg.paths.cache_dir, key)
    with cache_lock(entry):  # concurrent runs wait for the one that trains
        if (entry / WEIGHTS_FILE).is_file():
            try:
                model = load_weights(entry / WEIGHTS_FILE, t.arch, classes, shape, t.kwargs, role="teacher")
                log.info(f"teacher: reusing cached {key} ({entry})")
                return model
            except KdlabError as e:  # unreadable, or non-finite weights: never reused, replaced
                log.warning(f"teacher: the cached {key} cannot be used ({e}); training it again")
        log.info(f"teacher: no cached {key}; training {t.arch} for {t.max_epochs} epochs (later runs reuse it)")
        start = time.perf_counter()
        # alone, in the cache, on one device whatever cfg.trainer says: a teacher trained inside a DDP job must not relaunch it
        on_demand = run.child(output_dir=entry / "run", loggers=[], callbacks=[])
        alone = dict(devices=1, num_nodes=1, strategy="auto", sync_batchnorm=False)  # not the run's nodes either
        module = train_teacher(on_demand, t, checkpoints=False, **alone)
        metrics = {"val_acc_best": module.best_val_acc(), "train_s": round(time.perf_counter() - start, 2)}
        cache_teacher(run, t, module.student, metrics)
        return module.student


def cache_teacher(run: RunContext, t: DictConfig, model: nn.Module, metrics: dict, also_to: Path | None = None) -> str:
    """Store ``model`` as the cached teacher of recipe ``t`` (and at ``also_to``); returns its key."""
    cfg, data = run.cfg, run.data
    recipe = teacher_recipe(t, cfg.data)
    key = teacher_key(recipe, data.name)
    entry = cache_entry(cfg.paths.cache_dir, key)
    kwargs = OmegaConf.to_container(t.kwargs)
    bad = non_finite(model)
    if bad is not None:  # a poisoned entry would be reused by every later run: write nothing
        raise KdlabError(
            f"the teacher {t.arch} trained by kdlab has non-finite weights ({bad}): its training diverged and "
            f"nothing was cached; lower teacher.optimizer.lr (now {t.optimizer.get('lr')}) and run again"
        )
    for path in [p for p in (also_to,) if p is not None]:
        save_weights(model, path, t.arch, data.num_classes, data.input_shape, kwargs, key=key)
    with cache_lock(entry):  # re-entrant: single_teacher may already hold it
        save_weights(model, entry / WEIGHTS_FILE, t.arch, data.num_classes, data.input_shape, kwargs, key=key)
        write_recipe(entry, recipe, metrics)
    log.info(f"teacher: cached {key} at {entry}")
    return key
