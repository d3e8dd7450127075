"""Where an offline teacher comes from, and the cache that lets every run reuse a trained one.

In order: ``teacher.checkpoint`` (a file you give), else the cached teacher whose key matches
this config, else kdlab trains it on demand (``kdlab/train.py``) and stores it under that
key. The key hashes what determines the trained weights: arch and its kwargs, pretrained
starting point, data (minus batch size, workers and paths), recipe (epochs, batch size,
optimizer, scheduler) and the teacher's seed. A file lock makes concurrent runs (sweep
workers) wait for the one that trains instead of training it twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

#: Bump when a change to kdlab would make previously cached teachers differ from new ones.
CACHE_FORMAT = 1
#: Data keys that do not change what a model learns.
DATA_KEYS_IGNORED = ("batch_size", "eval_batch_size", "num_workers", "root", "download")
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
