"""timm's Vision Transformers (``vit_*``, ``deit_*``, ``deit3_*``, DeiT's ``deit_*_distilled_*``) on
small inputs, and what kdlab needs to know of their token sequences.

timm builds these models for their ImageNet input (224 x 224, 16 x 16 patches; ``img_size`` is
fixed at build time). On other data, ``vit_kwargs`` sets ``img_size`` to the data's image size and
a ``patch_size`` that fits it (``default_patch_size``): 2 up to 16 pixels a side (digits' 8 x 8: a
4 x 4 grid), 4 up to 64 (CIFAR's 32 x 32: an 8 x 8 grid, the usual CIFAR ViT), 8 up to 128, the
architecture's own (16) above; always a divisor of both sides when one exists (down from that
value). ``student.kwargs.img_size`` / ``student.kwargs.patch_size`` (or the teacher's) override
them. Data at the architecture's own input size (ImageNet) builds the model exactly as timm does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import timm
from timm.models import is_model_in_modules
from torch import Tensor, nn

#: timm's modules of the plain ViT family: ``vit_*`` (vision_transformer) and ``deit_*`` /
#: ``deit3_*`` / ``deit_*_distilled_*`` (deit), all ``VisionTransformer`` (or its distilled subclass)
VIT_MODULES = ("vision_transformer", "deit")


def is_vit(arch: str) -> bool:
    """Whether ``arch`` is a timm model of the plain ViT family (``VIT_MODULES``)."""
    return timm.is_model(arch) and is_model_in_modules(arch, VIT_MODULES)


def default_patch_size(image_size: Sequence[int]) -> int:
    """The patch size kdlab gives a ViT on ``image_size`` (h, w): 2 up to 16 pixels on the shorter
    side, 4 up to 64, 8 up to 128, else 16; lowered to the largest value that divides both sides
    (1 at worst)."""
    side = min(image_size)
    patch = 2 if side <= 16 else 4 if side <= 64 else 8 if side <= 128 else 16
    while patch > 1 and any(s % patch for s in image_size):
        patch -= 1
    return patch


def vit_kwargs(arch: str, input_shape: Sequence[int], given: Mapping[str, object]) -> dict:
    """The ``img_size`` / ``patch_size`` arguments a ViT-family ``arch`` needs for images of
    ``input_shape`` (c, h, w), leaving out those ``given`` (the config's kwargs) and nothing at all
    when the data has the architecture's own input size or is not 2-D (1-D data: the model is
    refused by ``check_model`` as before)."""
    size = tuple(int(s) for s in input_shape[1:])
    if len(size) != 2:
        return {}
    native = timm.get_pretrained_cfg_value(arch, "input_size")
    img_size = given.get("img_size")
    if img_size is None and native is not None and tuple(native[1:]) == size:
        return {}
    out: dict = {}
    if img_size is None:
        out["img_size"] = size
        if "patch_size" not in given:
            out["patch_size"] = default_patch_size(size)
    return out


def is_token_model(model: nn.Module) -> bool:
    """Whether ``model`` is a timm ViT-family model (a patch embedding, prefix tokens, a stack of
    ``blocks``): its 3-D intermediate outputs are token sequences (b, n, d), n = prefix tokens +
    patches, not 1-D feature maps (b, c, L)."""
    return (
        isinstance(getattr(model, "num_prefix_tokens", None), int)
        and isinstance(getattr(model, "patch_embed", None), nn.Module)
        and isinstance(getattr(model, "blocks", None), nn.Module)
    )


#: The attribute kdlab's feature taps set on a recorded token sequence (see ``mark_token_sequence``)
TOKEN_SEQUENCE = "kdlab_token_sequence"


def mark_token_sequence(feat: Tensor) -> Tensor:
    """Mark a tapped ViT output as a token sequence (b, n, d), so that a term built from it can
    tell it from a 1-D feature map (b, c, L) of the same rank. ``FeatureTaps`` marks every 3-D
    output of a ViT-family model (``is_token_model``)."""
    setattr(feat, TOKEN_SEQUENCE, True)
    return feat


def is_token_sequence(feat: Tensor) -> bool:
    """Whether ``feat`` was recorded from a ViT-family model as a token sequence (b, n, d)."""
    return feat.dim() == 3 and bool(getattr(feat, TOKEN_SEQUENCE, False))


class WarmupCosine:
    """The ViT recipes' learning-rate schedule as a ``torch.optim.lr_scheduler.LambdaLR`` factor of
    the base lr, stepped once per epoch: timm's ``CosineLRScheduler`` (DeiT main.py and the
    logit-standardization tiny-transformers recipe, both stepping it per epoch) with ``warmup``
    epochs of linear warm-up from ``warmup_factor`` x lr, then a cosine from lr to ``min_factor``
    x lr over ``total`` epochs counted from 0 (timm's default ``warmup_prefix=False``: the cosine
    starts at epoch ``warmup``, a little below lr), ``min_factor`` after. Config:

        scheduler: {_target_: torch.optim.lr_scheduler.LambdaLR, _partial_: true,
                    lr_lambda: {_target_: kdlab.models.vit.WarmupCosine, total: 300, warmup: 20, ...}}
    """

    def __init__(self, total: int, warmup: int = 0, warmup_factor: float = 0.0, min_factor: float = 0.0):
        self.total, self.warmup = int(total), int(warmup)
        self.warmup_factor, self.min_factor = float(warmup_factor), float(min_factor)

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup:
            return self.warmup_factor + epoch * (1.0 - self.warmup_factor) / self.warmup
        if epoch >= self.total:
            return self.min_factor
        return self.min_factor + 0.5 * (1.0 - self.min_factor) * (1.0 + math.cos(math.pi * epoch / self.total))
