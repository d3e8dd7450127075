"""One factory for every model kdlab trains: timm names and the kdlab zoo alike."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from torch import nn

from kdlab.errors import KdlabError, did_you_mean
from kdlab.models.vit import is_vit, vit_kwargs
from kdlab.models.zoo import ZOO


def create_model(
    arch: str,
    num_classes: int,
    input_shape: Sequence[int],
    pretrained: bool = False,
    pretrained_path: str | None = None,
    role: str = "model",
    **kwargs,
) -> nn.Module:
    """Build ``arch`` for inputs of ``input_shape`` (channels first, no batch) and ``num_classes``.

    ``pretrained_path`` loads local weights: into a kdlab zoo model through
    ``kdlab.models.checkpoint.load_weights`` (every key and shape checked, one-line errors naming
    ``role``), into a timm model through timm (safetensors or ``weights_only`` torch files; the
    classifier is re-initialised when the class count differs).
    ``pretrained=True`` without a path fetches hub weights and fails clearly when offline.
    timm's ViT family (``vit_*``, ``deit_*``, ``deit_*_distilled_*``) is built for the data's image
    size, with a patch size that fits it unless ``kwargs`` give them (``kdlab.models.vit``).
    """
    if arch not in ZOO and not timm.is_model(arch):
        raise KdlabError(
            f"unknown model '{arch}'{did_you_mean(arch, sorted(ZOO) + timm.list_models())}; "
            f"kdlab models: {', '.join(sorted(ZOO))}, or any name from timm.list_models()"
        )
    model_kwargs = dict(kwargs)  # the architecture's own arguments (channels, widths, ...)
    if arch not in ZOO and is_vit(arch):  # img_size / patch_size from the data unless given
        kwargs = {**vit_kwargs(arch, input_shape, kwargs), **kwargs}
    kwargs = dict(kwargs, num_classes=num_classes, in_chans=input_shape[0])
    if arch in ZOO:
        kwargs["input_size"] = tuple(input_shape[1:])
    if pretrained_path is not None:
        if not Path(pretrained_path).is_file():
            raise KdlabError(f"pretrained_path {pretrained_path} does not exist; give a local weights file")
        if arch in ZOO:  # kdlab's own models have no timm weights: kdlab's loader, every key and shape checked
            from kdlab.models.checkpoint import load_weights

            return load_weights(pretrained_path, arch, num_classes, input_shape, model_kwargs, role=role)
        kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained_path)}
        pretrained = True
    try:
        model = timm.create_model(arch, pretrained=pretrained, **kwargs)
    except KdlabError:
        raise
    except Exception as e:
        if pretrained and pretrained_path is None:
            raise KdlabError(
                f"could not get pretrained weights for {arch} ({type(e).__name__}: {e}); "
                "offline? download them once and set pretrained_path=<file>"
            ) from e
        raise KdlabError(f"cannot build {arch} with {kwargs} ({type(e).__name__}: {e})") from e
    check_model(model, arch, num_classes, input_shape)
    # what rebuilds it (SimKD's deployable model records them)
    model.kdlab_arch, model.kdlab_kwargs = arch, model_kwargs
    return model


@torch.no_grad()
def check_model(model: nn.Module, arch: str, num_classes: int, input_shape: Sequence[int]) -> torch.Tensor:
    """Run one small batch through ``model``: it must accept the data's inputs and predict ``num_classes``.
    Returns its outputs (callers check more, e.g. that a loaded teacher's are finite)."""
    was_training = model.training
    model.eval()
    try:
        out = model(torch.zeros(2, *input_shape))
    except Exception as e:
        kind = "1-D sequences" if len(input_shape) == 2 else "images"
        raise KdlabError(
            f"{arch} cannot take inputs of shape {tuple(input_shape)} ({type(e).__name__}: {e}); "
            f"pick a model for {kind} (kdlab zoo: {', '.join(sorted(ZOO))})"
        ) from e
    finally:
        model.train(was_training)
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise KdlabError(
            f"{arch} predicts {tuple(out.shape[1:])} outputs but the data has {num_classes} classes; "
            "use a checkpoint trained on this data or drop its classifier"
        )
    return out


def count_params(model: nn.Module | None) -> int | None:
    return None if model is None else sum(p.numel() for p in model.parameters())
