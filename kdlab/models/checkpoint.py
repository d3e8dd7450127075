"""Model weights on disk: safetensors with kdlab metadata (arch, classes, input shape, kwargs).

Loading never unpickles code: safetensors, or ``torch.load(weights_only=True)`` for
``.ckpt`` / ``.pt`` / ``.pth`` files (Lightning checkpoints included).

The published CIFAR-100 teachers of the CRD and DKD benchmarks load as users download them
(``docs/teachers.md``): RepDistiller's ``scripts/fetch_pretrained_teachers.sh`` files and
mdistiller's ``cifar_teachers.tar`` are ``save/models/<name>_vanilla/ckpt_epoch_240.pth``,
written by RepDistiller ``train_teacher.py`` as ``torch.save({"epoch", "model":
model.state_dict(), "accuracy", "optimizer": optimizer.state_dict()})`` and read by both
projects as ``torch.load(path)["model"]``. Their keys are kdlab's (``kdlab.models.cifar``
follows the reference module names) except the classifier, ``fc.`` / ``linear.`` /
``classifier.`` / ``classifier.0.`` there and ``head.`` here, which ``to_kdlab_head`` renames.
A checkpoint is checked key by key and shape by shape against the model before anything is
loaded; a mismatch is one ``KdlabError`` line that names it (and the zoo architecture the file
holds, when it is one).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model as load_safetensors_model
from safetensors.torch import save_model as save_safetensors_model
from torch import nn

from kdlab.errors import KdlabError
from kdlab.files import publish
from kdlab.models.factory import check_model, create_model
from kdlab.models.zoo import ZOO

log = logging.getLogger(__name__)

STATE_DICT_PREFIXES = ("student.", "model.", "module.")
#: The classifier of the reference CIFAR zoos (RepDistiller ``models/``, mdistiller
#: ``models/cifar/``), which kdlab calls ``head.``: ``fc`` (ResNets, WRNs), ``classifier``
#: (VGGs), ``classifier.0`` (MobileNetV2, a Sequential), ``linear`` (ResNet50, ShuffleNets).
#: Longest first, so that ``classifier.0.`` is not read as ``classifier.``.
REFERENCE_HEADS = ("classifier.0.", "classifier.", "fc.", "linear.")
#: Entries a RepDistiller / mdistiller checkpoint has besides its weights, logged, never required.
INFO_KEYS = ("epoch", "accuracy", "best_acc")
#: Types allowed besides tensors and plain values when unpickling: RepDistiller's
#: ``<model>_last.pth`` holds its argparse options (``'opt'``), a bag of attributes that cannot
#: run code. Everything else stays refused by ``torch.load(weights_only=True)``.
SAFE_GLOBALS = (argparse.Namespace,)
BN_COUNTER = "num_batches_tracked"  # absent from files written by PyTorch 0.4.0; BatchNorm then starts it at 0


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
        publish(tmp, path)  # the mode of any other output, not mkstemp's 0600
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def files_in(folder: Path, limit: int = 3) -> str:
    """' (e.g. a.safetensors, b.ckpt)': weights files found in ``folder``, for an error message."""
    found = sorted(p.name for p in folder.glob("**/*") if p.suffix in (".safetensors", ".ckpt", ".pth", ".pt"))
    return f" (in it: {', '.join(found[:limit])}{', ...' if len(found) > limit else ''})" if found else ""


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


@dataclass
class TorchCheckpoint:
    """The weights of a ``torch.save`` file and what it said about them."""

    state: dict[str, torch.Tensor]
    container: str  # where the weights sat: "a bare state_dict", "its 'model' entry", ...
    info: dict[str, float | int] = field(default_factory=dict)  # epoch / accuracy / best_acc, when saved


def _one_line(text: str, limit: int = 200) -> str:
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(text).splitlines()]
    first = next((line for line in lines if line), "")
    return first[:limit]


def _unsafe_reason(message: str) -> str:
    """The line of torch's weights-only refusal that names what the file wanted to build."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in message.splitlines()]
    for key in ("GLOBAL", "global", "Unsupported", "unsupported"):
        hit = next((line for line in lines if key in line), None)
        if hit:
            return hit[:200]
    return _one_line(message)


def _number(value) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:  # RepDistiller's accuracy: a (1,) tensor
        return round(value.item(), 4)
    return None


#: How a ``torch.save`` file starts: a zip archive (PyTorch >= 1.6) or a pickle (protocol 2+).
TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def check_readable(path: Path) -> None:
    """A file that cannot hold weights at all (empty; text or another format where a ``torch.save``
    file is expected) is refused before any reader sees it, in one line."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise KdlabError(f"cannot read {path} ({type(e).__name__}: {_one_line(e)})") from e
    if not head:
        raise KdlabError(f"cannot read {path}: truncated or corrupt (the file is empty, 0 bytes); copy it again")
    if path.suffix != ".safetensors" and not head.startswith(TORCH_MAGIC):
        text = head.decode("utf-8", errors="replace")
        shown = f" (it starts with {text[:24]!r})" if text.isprintable() or text.strip().isprintable() else ""
        raise KdlabError(
            f"cannot read {path}: not a PyTorch checkpoint{shown}; give a file written by torch.save "
            "(.pth, .pt, .ckpt) or a .safetensors file"
        )


def non_finite(model: nn.Module) -> str | None:
    """'<n> NaN in <name>' for the first parameter or buffer of ``model`` holding NaN or infinite
    values ('<n> infinite in ...' when there is no NaN), or None when every value is finite."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not torch.isfinite(t).all():
            nan = int(torch.isnan(t).sum())
            return f"{nan} NaN in {name}" if nan else f"{int(torch.isinf(t).sum())} infinite in {name}"
    return None


def read_torch_checkpoint(path: str | Path) -> TorchCheckpoint:
    """The state_dict of a ``torch.save`` file, read with ``weights_only=True``: a bare state_dict,
    or a dict holding one under ``model`` (RepDistiller / mdistiller) or ``state_dict``
    (Lightning). Prefixes of wrappers are stripped (``module.`` of DataParallel, ``model.``),
    and of a kdlab Lightning checkpoint or an mdistiller distiller only the student is kept."""
    path = Path(path)
    check_readable(path)
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)), warnings.catch_warnings():
            # a pickle of another protocol than torch.save's: refused below if it holds more than weights
            warnings.filterwarnings("ignore", message=".*pickle protocol.*", category=UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise KdlabError(
                f"cannot load {path} safely: unpickling it would build Python objects beyond tensors "
                f"({_unsafe_reason(str(e))}); kdlab reads weights only (torch.load weights_only=True): "
                "save the model's state_dict from a session you trust and give that file"
            ) from e
        raise KdlabError(
            f"cannot read {path}: truncated or corrupt ({type(e).__name__}: {_one_line(e)}); download or copy it again"
        ) from e
    except OSError as e:
        raise KdlabError(f"cannot read {path} ({type(e).__name__}: {_one_line(e)})") from e
    except Exception as e:  # EOFError, RuntimeError (zip), IndexError, ...: what a cut or damaged file raises
        raise KdlabError(
            f"cannot read {path}: truncated or corrupt ({type(e).__name__}: {_one_line(e) or 'unexpected end of file'}); "
            "download or copy it again"
        ) from e
    if not isinstance(obj, Mapping):
        raise KdlabError(
            f"{path} holds a {type(obj).__name__}, not a state_dict; give a state_dict or a dict with 'model' or 'state_dict'"
        )
    if isinstance(obj.get("model"), Mapping):
        state, container = obj["model"], "its 'model' entry"
    elif isinstance(obj.get("state_dict"), Mapping):
        state, container = obj["state_dict"], "its 'state_dict' entry"
    else:
        state, container = obj, "a bare state_dict"
    bad = next(((k, v) for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if not state or bad is not None:
        what = "nothing" if not state else f"{bad[0]!r}: a {type(bad[1]).__name__}"
        raise KdlabError(
            f"{path} holds no state_dict of tensors ({container} has {what}); "
            "give a state_dict or a dict with 'model' or 'state_dict'"
        )
    state = {str(k): v for k, v in state.items()}
    for prefix in STATE_DICT_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    if any(k.startswith("student.") for k in state):  # a kdlab Lightning checkpoint: keep the student
        state = {k[len("student.") :]: v for k, v in state.items() if k.startswith("student.")}
    info = {}
    if container != "a bare state_dict":
        info = {k: n for k in INFO_KEYS if k in obj and (n := _number(obj[k])) is not None}
    return TorchCheckpoint(state, container, info)


def to_kdlab_head(state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> tuple[dict, str | None]:
    """``state`` with the reference classifier (``REFERENCE_HEADS``) renamed ``head.`` when the model
    (``expected``) has a ``head.`` that ``state`` lacks and no module of the reference name; and
    the prefix it renamed (None when it renamed nothing)."""
    if "head.weight" not in expected or any(k.startswith("head.") for k in state):
        return state, None
    for ref in REFERENCE_HEADS:
        if f"{ref}weight" in state and f"{ref}weight" not in expected:
            renamed = {(f"head.{k[len(ref) :]}" if k.startswith(ref) else k): v for k, v in state.items()}
            return renamed, ref
    return state, None


def _shape(t) -> tuple[int, ...]:
    return tuple(t.shape)


def _differences(state: Mapping, expected: Mapping) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, other-shape) keys; a missing BatchNorm counter is no difference."""
    missing = [k for k in expected if k not in state and not k.endswith(BN_COUNTER)]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in state if k in expected and _shape(state[k]) != _shape(expected[k])]
    return missing, unexpected, shapes


@functools.lru_cache(maxsize=8)
def _zoo_signatures(in_chans: int, input_size: tuple[int, ...]) -> dict[str, dict[str, tuple[int, ...]]]:
    """Key -> shape of every kdlab zoo model that takes these inputs (built on the meta device),
    BatchNorm counters and the classifier's class count left out."""
    out = {}
    for arch in sorted(ZOO):
        for device in ("meta", "cpu"):
            try:
                with torch.device(device):
                    model = timm.create_model(arch, num_classes=1, in_chans=in_chans, input_size=input_size)
            except Exception:  # a model for other inputs (or one that cannot be built on meta)
                continue
            out[arch] = {k: _shape(v)[int(k.startswith("head.")) :] for k, v in model.state_dict().items()}
            out[arch] = {k: s for k, s in out[arch].items() if not k.endswith(BN_COUNTER)}
            break
    return out


def identify_arch(state: Mapping[str, torch.Tensor], input_shape: Sequence[int]) -> list[str]:
    """The kdlab zoo architectures whose weights have exactly the keys and shapes of ``state``
    (after the reference classifier is renamed ``head.``), whatever their class count."""
    sigs = _zoo_signatures(int(input_shape[0]), tuple(int(s) for s in input_shape[1:]))
    found = []
    for arch, sig in sigs.items():
        renamed, _ = to_kdlab_head(dict(state), sig)
        mine = {k: _shape(v)[int(k.startswith("head.")) :] for k, v in renamed.items() if not k.endswith(BN_COUNTER)}
        if mine == sig:
            found.append(arch)
    return found


def check_state_dict(
    state: dict[str, torch.Tensor],
    model: nn.Module,
    path: Path,
    arch: str,
    num_classes: int,
    input_shape: Sequence[int],
    role: str = "model",
) -> dict[str, torch.Tensor]:
    """``state`` in ``model``'s names (reference classifier -> ``head.``), checked key by key and
    shape by shape; a mismatch is one ``KdlabError`` line that names it."""
    expected = model.state_dict()
    renamed, head_from = to_kdlab_head(state, expected)
    missing, unexpected, shapes = _differences(renamed, expected)
    if not (missing or unexpected or shapes):
        return renamed

    def name(k: str) -> str:  # the key as the file spells it
        return f"{head_from}{k[len('head.') :]}" if head_from and k.startswith("head.") else k

    if not missing and not unexpected and all(k.startswith("head.") for k in shapes):
        w = renamed.get("head.weight")
        if w is not None and w.ndim == 2 and w.shape[1] == expected["head.weight"].shape[1]:
            raise KdlabError(
                f"{role} checkpoint {path} predicts {w.shape[0]} classes ({name('head.weight')} {_shape(w)}) "
                f"but the data has {num_classes}; use a {role} trained on this data"
            )
    # the first difference in the file's order (the network's), else the first missing key
    differ = set(unexpected) | set(shapes)
    first = next((k for k in renamed if k in differ), None)
    if first is None:
        k = missing[0]
        what = f"no {name(k)}, which {role}.arch={arch} has: {_shape(expected[k])})"
    elif first in expected:  # another shape
        what = f"{name(first)} {_shape(renamed[first])}) but {role}.arch={arch} expects {_shape(expected[first])}"
    else:
        what = f"{name(first)} {_shape(renamed[first])}) that {role}.arch={arch} does not have"
    found = [a for a in identify_arch(state, input_shape) if a != arch]
    if found:
        raise KdlabError(
            f"{role} checkpoint {path} holds a {' or '.join(found)}-shaped model ({what}; set {role}.arch={found[0]}"
        )
    counts = f"{len(missing)} keys missing, {len(unexpected)} unexpected, {len(shapes)} of another shape"
    raise KdlabError(
        f"{role} checkpoint {path} does not fit {role}.arch={arch} ({what}; {counts}; "
        f"set {role}.arch to the checkpoint's architecture"
    )


def load_weights(
    path: str | Path,
    arch: str,
    num_classes: int,
    input_shape: Sequence[int],
    kwargs: dict | None = None,
    role: str = "model",
) -> nn.Module:
    """Build ``arch`` and load the weights in ``path`` into it, checking that they fit.

    ``path`` is a kdlab ``.safetensors`` file, or a ``torch.save`` file (``read_torch_checkpoint``):
    a Lightning checkpoint, a bare state_dict, or a RepDistiller / mdistiller ``.pth``.
    Nothing is written, whatever happens."""
    path = Path(path)
    if path.is_dir():
        raise KdlabError(f"{role} checkpoint {path} is a directory; give the checkpoint file{files_in(path)}")
    if not path.is_file():
        raise KdlabError(f"{role} checkpoint {path} not found")
    kwargs = dict(kwargs or {})
    check_readable(path)
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
        ckpt = None
    else:
        ckpt = read_torch_checkpoint(path)  # before building the model: a bad file fails fast
    model = create_model(arch, num_classes=num_classes, input_shape=input_shape, **kwargs)
    try:
        if ckpt is None:
            load_safetensors_model(model, str(path), strict=True)
        else:
            state = check_state_dict(ckpt.state, model, path, arch, num_classes, input_shape, role)
            model.load_state_dict(state, strict=True)
    except KdlabError:
        raise
    except (RuntimeError, SafetensorError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0][:300]
        raise KdlabError(f"{role} checkpoint {path} does not fit {arch} ({first})") from e
    out = check_model(model, arch, num_classes, input_shape)
    bad = non_finite(model)
    if bad is not None or (out is not None and not torch.isfinite(out).all()):
        what = f"has non-finite weights ({bad})" if bad else "gives non-finite outputs (its weights overflow)"
        raise KdlabError(
            f"{role} checkpoint {path} {what}: its training diverged or the file is damaged; "
            "give another checkpoint, or retrain it with a lower learning rate"
        )
    if ckpt is not None:
        saved = ", ".join(f"{k} {v}" for k, v in ckpt.info.items())
        log.info(
            f"{role}: {path} loaded into {arch} from {ckpt.container}" + (f" (saved with {saved})" if saved else "")
        )
    return model
