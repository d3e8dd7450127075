"""Model weights on disk: safetensors with kdlab metadata (arch, classes, input shape, kwargs).

Loading never unpickles code: safetensors, or ``torch.load(weights_only=True)`` for
``.ckpt`` / ``.pt`` / ``.pth`` files (Lightning checkpoints included).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model as load_safetensors_model
from safetensors.torch import save_model as save_safetensors_model
from torch import nn

from kdlab.errors import KdlabError
from kdlab.models.factory import check_model, create_model

STATE_DICT_PREFIXES = ("student.", "model.", "module.")


def save_weights(
    model: nn.Module,
    path: str | Path,
    arch: str,
    num_classes: int,
    input_shape: Sequence[int],
    kwargs: dict | None = None,
    **info,
) -> Path:
    """Write ``model`` to ``path`` (.safetensors) atomically, with what is needed to rebuild it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": "kdlab",
        "arch": arch,
        "num_classes": str(num_classes),
        "input_shape": json.dumps(list(input_shape)),
        "kwargs": json.dumps(kwargs or {}),
        **{k: json.dumps(v) for k, v in info.items()},
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".safetensors.tmp")
    os.close(fd)
    try:
        save_safetensors_model(model, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def read_metadata(path: str | Path) -> dict:
    """The kdlab metadata of a .safetensors file ({} for a file without it)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise KdlabError(
            f"cannot read {path} ({e}); the file is corrupt or not safetensors, delete it and retrain"
        ) from e
    out = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v) if k not in ("arch", "format") else v
        except json.JSONDecodeError:
            out[k] = v
    return out


def _torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise KdlabError(
            f"cannot load {path} safely ({type(e).__name__}: {str(e).splitlines()[0]}); "
            "give a safetensors file or a plain state_dict"
        ) from e
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise KdlabError(f"{path} holds no state_dict of tensors")
    for prefix in STATE_DICT_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    if any(k.startswith("student.") for k in state):  # a kdlab Lightning checkpoint: keep the student
        state = {k[len("student.") :]: v for k, v in state.items() if k.startswith("student.")}
    return state


def load_weights(
    path: str | Path,
    arch: str,
    num_classes: int,
    input_shape: Sequence[int],
    kwargs: dict | None = None,
    role: str = "model",
) -> nn.Module:
    """Build ``arch`` and load the weights in ``path`` into it, checking that they fit."""
    path = Path(path)
    if not path.is_file():
        raise KdlabError(f"{role} checkpoint {path} not found")
    kwargs = dict(kwargs or {})
    if path.suffix == ".safetensors":
        meta = read_metadata(path)
        if meta.get("arch") and meta["arch"] != arch:
            raise KdlabError(
                f"{role} checkpoint {path} holds a {meta['arch']}, but {role}.arch={arch}; set {role}.arch={meta['arch']}"
            )
        if "num_classes" in meta and int(meta["num_classes"]) != num_classes:
            raise KdlabError(
                f"{role} checkpoint {path} predicts {meta['num_classes']} classes but the data has {num_classes}; "
                f"use a {role} trained on this data"
            )
        kwargs = {**meta.get("kwargs", {}), **kwargs}
    model = create_model(arch, num_classes=num_classes, input_shape=input_shape, **kwargs)
    try:
        if path.suffix == ".safetensors":
            load_safetensors_model(model, str(path), strict=True)
        else:
            model.load_state_dict(_torch_state_dict(path), strict=True)
    except KdlabError:
        raise
    except (RuntimeError, SafetensorError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0][:300]
        raise KdlabError(f"{role} checkpoint {path} does not fit {arch} ({first})") from e
    check_model(model, arch, num_classes, input_shape)
    return model
