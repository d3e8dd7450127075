"""MLKD's strong view on the device: the authors' ``RandAugment(2, 10)`` and its Cutout, per sample, on
uint8 batches of RGB images (b, 3, H, W), bit-exact to their PIL ops.

Jin, Wang & Lin, "Multi-Level Logit Distillation" (CVPR 2023), code: Jin-Ying/Multi-Level-Logit-Distillation
``mdistiller/dataset/cifar100.py`` (``augment_list``, ``RandAugment``, ``Cutout``/``CutoutAbs``,
``get_cifar100_train_transform_strong``; LS-KD's copy, sunshangquan/logit-standardization-KD, is the same
file). Their strong view is ``RandomCrop(32, 4)`` + ``RandomHorizontalFlip`` (drawn apart from the weak
view's, ``MultipleApply``), then ``RandAugment(2, 10)`` on the PIL image, then ``ToTensor`` + ``Normalize``;
the crop and flip are ``kdlab.data.cifar``'s, this module is the RandAugment. What the authors' code does,
quirks included:

- two ops per image, ``random.choices`` of the 14 ops of ``OPS``: uniform, independent, with replacement
  (the same op can come twice), applied in the order drawn;
- each op's magnitude is uniform on its range (``RANGES``: ``min + (max - min) * random()``). The ``m=10``
  of ``RandAugment(2, 10)`` is not used ("deprecated" in their comment), and no sign is drawn (the
  sign flips are commented out): the symmetric ranges of Rotate / Shear / Translate give both signs;
  Brightness / Color / Contrast / Sharpness factors are in [0.05, 0.95), so they only ever weaken;
  Posterize keeps ``int(v)`` = 4..7 bits; Solarize's threshold is uniform on [0, 256);
- after the two ops, always Cutout (FixMatch's): a size fraction ``v`` uniform on [0, 0.5) of the
  width, a square of side ``32 v`` filled with (125, 123, 114). Its corner comes from
  ``np.random.uniform(w)``, which is numpy's ``uniform(low=w, high=1.0)``: uniform on (1, w], not on
  [0, w); the square's corner is ``int(max(0, c - 32 v / 2))`` and PIL's ``rectangle`` fills both
  end rows and columns (coordinates truncated), so a square is ``int(32 v) + 1`` pixels wide or one
  less where it is clipped. The authors draw it with numpy's global generator, the ops with Python's.

Each op is the authors' PIL call re-implemented on tensors to PIL's own arithmetic (Pillow 13.0's
``libImaging``): Brightness / Color / Contrast / Sharpness are ``Image.blend(degenerate, image, f)``,
computed in float32 and truncated as ``ImagingBlend`` does; Color's grey is PIL's fixed-point
``RGB -> L`` (``(19595 R + 38470 G + 7471 B + 0x8000) >> 16``); Contrast's degenerate is the rounded
mean of that grey; Sharpness's is ``ImageFilter.SMOOTH`` (3x3, float32 kernel / 13, border pixels
kept, +0.5 and truncated); AutoContrast / Equalize / Posterize / Solarize are PIL's 256-entry tables
(Equalize's values clipped to 255 as ``Image.point`` does). The geometric ops use PIL's nearest-
neighbour ``transform(AFFINE)`` with black fill: Rotate (``img.rotate(v)``, about the centre), ShearX
``(1, v, 0, 0, 1, 0)`` and ShearY ``(1, 0, 0, v, 1, 0)`` take libImaging's 16.16 fixed-point path
(``affine_fixed``, reproduced in int64), TranslateX / TranslateY (``32 v`` pixels) its scaling path
(``ImagingScaleAffine``, its double coordinates accumulated column by column as in C).

Measured pixel differences against PIL 13.0 (CPU): none, on 2000 random uint8 32x32 images per op (a
quarter of them of four levels only; magnitudes over each op's whole range) and on 20000 whole
RandAugment + Cutout draws (a half of them of few levels); ``tests/test_strong_view.py`` checks fewer.
They can differ in one place only: a rotation matrix is computed as PIL does (angle mod 360, entries
rounded to 15 decimals) but with torch's ``sin`` / ``cos`` and rounding, so its entries may be an ulp
away from PIL's (in 8% of 200000 random angles), which changes the map only if the 16.16 fixed-point
value moves (none of those 200000 did). Not measured on a GPU; there every step is the same
elementwise arithmetic (divisions are by tensors: CUDA turns a division by a scalar into a product
with its reciprocal).

For comparison, torchvision's tensor ops called as its own RandAugment calls them
(``v2.functional.rotate`` nearest; ``affine`` with the shear angle atan(v) about (0, 0), or the
translation) gave, on 500 images each: shears and translations identical to PIL's, rotations
different in 90 of 512000 pixels (52 of 500 images; mean abs diff 0.015 of 255), as they map
coordinates in floating point, not 16.16 fixed point. They are not used: they take one magnitude per
call, and the fixed point here is exact.

Batched without grouping: an image has exactly one op per round, and every op is one of three kinds,
each an exact identity for the images whose op is of another kind, so a round is three passes over the
whole batch (one 256-entry table per image and channel; one source pixel per output pixel, from a
fixed-point affine map or a translation; one blend with a degenerate image), with no host
synchronisation and the same work whichever ops were drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

#: The authors' ``augment_list()``, in their order (the op ids of ``RandAugmentDraw.ops``).
OPS = (
    "AutoContrast",
    "Brightness",
    "Color",
    "Contrast",
    "Equalize",
    "Identity",
    "Posterize",
    "Rotate",
    "Sharpness",
    "ShearX",
    "ShearY",
    "Solarize",
    "TranslateX",
    "TranslateY",
)
#: Each op's magnitude range (``min_val``, ``max_val``): a magnitude is uniform on [min, max).
RANGES = (
    (0.0, 1.0),
    (0.05, 0.95),
    (0.05, 0.95),
    (0.05, 0.95),
    (0.0, 1.0),
    (0.0, 1.0),
    (4.0, 8.0),
    (-30.0, 30.0),
    (0.05, 0.95),
    (-0.3, 0.3),
    (-0.3, 0.3),
    (0.0, 256.0),
    (-0.3, 0.3),
    (-0.3, 0.3),
)
OP = {name: i for i, name in enumerate(OPS)}
#: ``RandAugment(2, 10)``: two ops per image.
OPS_PER_IMAGE = 2
#: Cutout's size fraction is uniform on [0, CUTOUT_MAX) of the width; its fill colour.
CUTOUT_MAX = 0.5
CUTOUT_FILL = (125, 123, 114)


@dataclass(frozen=True)
class RandAugmentDraw:
    """The random choices of ``RandAugment(2, 10)`` + Cutout for a batch of ``b`` images.

    ``ops`` (b, n) int64: op ids (``OPS``), applied in column order; ``values`` (b, n) float64: each
    op's magnitude (the ``val`` the authors pass to it); ``cutout`` (b,) float64: Cutout's size
    fraction in [0, 0.5); ``cutout_x`` / ``cutout_y`` (b,) float64: its centre as numpy draws it,
    in (1, W] and (1, H]."""

    ops: Tensor
    values: Tensor
    cutout: Tensor
    cutout_x: Tensor
    cutout_y: Tensor


def draw_rand_augment(
    b: int,
    height: int = 32,
    width: int = 32,
    n: int = OPS_PER_IMAGE,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> RandAugmentDraw:
    """The authors' random choices for ``b`` images, from ``generator`` (default: torch's on
    ``device``): the ops (b x n uniform ids), then their magnitudes (b x n uniforms mapped to each op's
    range), then Cutout's size and centre (b x 3 uniforms)."""
    ops = torch.randint(0, len(OPS), (b, n), device=device, generator=generator)  # (b, n)
    u = torch.rand(b, n, dtype=torch.float64, device=device, generator=generator)  # (b, n)
    ranges = torch.tensor(RANGES, dtype=torch.float64, device=ops.device)  # (14, 2)
    lo, hi = ranges[ops, 0], ranges[ops, 1]  # (b, n)
    values = lo + (hi - lo) * u
    c = torch.rand(b, 3, dtype=torch.float64, device=device, generator=generator)  # (b, 3)
    return RandAugmentDraw(
        ops=ops,
        values=values,
        cutout=c[:, 0] * CUTOUT_MAX,
        cutout_x=width + (1.0 - width) * c[:, 1],  # np.random.uniform(low=width, high=1.0)
        cutout_y=height + (1.0 - height) * c[:, 2],
    )


def rand_augment(x: Tensor, draw: RandAugmentDraw) -> Tensor:
    """The authors' ``RandAugment(2, 10)`` with the choices ``draw`` (``draw_rand_augment``): each
    image's ops in order, then its Cutout.  x: (b, 3, H, W) uint8 -> (b, 3, H, W) uint8"""
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"rand_augment takes uint8 RGB batches (b, 3, H, W), got {x.dtype} {tuple(x.shape)}")
    for k in range(draw.ops.shape[1]):
        x = apply_ops(x, draw.ops[:, k], draw.values[:, k])
    return cutout(x, draw.cutout, draw.cutout_x, draw.cutout_y)


def apply_ops(x: Tensor, ops: Tensor, values: Tensor) -> Tensor:
    """Op ``OPS[ops[i]]`` of magnitude ``values[i]`` on image i, for every image of the batch at once.
    x: (b, 3, H, W) uint8; ops: (b,) int64; values: (b,) float64 -> (b, 3, H, W) uint8"""
    x = _table_pass(x, ops, values)
    x = _geometric_pass(x, ops, values)
    return _blend_pass(x, ops, values)


# ---------------------------------------------------------------------------------------------
# the three passes of a round
# ---------------------------------------------------------------------------------------------


def _table_pass(x: Tensor, ops: Tensor, values: Tensor) -> Tensor:
    """The ops that are a 256-entry table per image and channel (PIL's ``point``): AutoContrast,
    Equalize, Posterize, Solarize, and the blends with a constant image, Brightness (with black) and
    Contrast (with the grey of the image's mean grey level); the identity table for other images."""
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w).long()  # (b, c, n)
    levels = torch.arange(256, device=x.device)  # (256,)
    table = levels.expand(b, c, 256)  # (b, c, 256)
    makers = {
        "AutoContrast": lambda v: autocontrast_table(flat),
        "Brightness": lambda v: blend_table(torch.zeros(b, device=x.device, dtype=torch.long), v),
        "Contrast": lambda v: blend_table(contrast_grey(x), v),
        "Equalize": lambda v: equalize_table(flat),
        "Posterize": posterize_table,
        "Solarize": solarize_table,
    }
    for name, make in makers.items():
        chosen = ops == OP[name]  # (b,)
        lo = RANGES[OP[name]][0]
        v = torch.where(chosen, values, torch.full_like(values, lo))  # others: a harmless magnitude
        made = make(v)  # (b, c, 256) or (b, 1, 256)
        table = torch.where(chosen[:, None, None], made.expand(b, c, 256), table)
    return table.gather(2, flat).to(torch.uint8).reshape(b, c, h, w)


def _geometric_pass(x: Tensor, ops: Tensor, values: Tensor) -> Tensor:
    """Rotate, ShearX, ShearY (libImaging's fixed-point affine map) and TranslateX, TranslateY (its
    scaling map): each output pixel is one source pixel of its image, or black outside it; the
    identity map for other images."""
    b, c, h, w = x.shape
    v = values
    matrix = torch.zeros(b, 6, dtype=torch.float64, device=x.device)  # (b, 6): PIL's (a, b, c, d, e, f)
    matrix[:, 0] = matrix[:, 4] = 1.0
    rot = rotation_matrix(torch.where(ops == OP["Rotate"], v, torch.zeros_like(v)), w, h)  # (b, 6)
    matrix = torch.where((ops == OP["Rotate"])[:, None], rot, matrix)
    matrix[:, 1] = torch.where(ops == OP["ShearX"], v, matrix[:, 1])
    matrix[:, 3] = torch.where(ops == OP["ShearY"], v, matrix[:, 3])
    rows, cols = affine_fixed_sources(matrix, h, w)  # (b, h, w) each
    shift_x = torch.where(ops == OP["TranslateX"], v * w, torch.zeros_like(v))  # the authors: v * img.size[0]
    shift_y = torch.where(ops == OP["TranslateY"], v * h, torch.zeros_like(v))  # v * img.size[1]
    t_rows, t_cols = translate_sources(shift_x, shift_y, h, w)  # (b, h, w) each
    translating = ((ops == OP["TranslateX"]) | (ops == OP["TranslateY"]))[:, None, None]
    rows, cols = torch.where(translating, t_rows, rows), torch.where(translating, t_cols, cols)
    return gather_pixels(x, rows, cols)


def _blend_pass(x: Tensor, ops: Tensor, values: Tensor) -> Tensor:
    """Color (blend with the image's grey) and Sharpness (blend with its SMOOTH-filtered copy); for
    other images the blend of the image with itself, which is exactly the image."""
    color, sharp = ops == OP["Color"], ops == OP["Sharpness"]
    degenerate = torch.where(color[:, None, None, None], grey(x).expand_as(x), x)
    degenerate = torch.where(sharp[:, None, None, None], smooth(x), degenerate)
    factor = torch.where(color | sharp, values, torch.zeros_like(values))
    return blend(degenerate, x, factor)


# ---------------------------------------------------------------------------------------------
# PIL's arithmetic
# ---------------------------------------------------------------------------------------------


def blend(degenerate: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    """``Image.blend(degenerate, x, factor)`` for factors in [0, 1] (``ImagingBlend``): ``(uint8)(d +
    f (x - d))`` in float32, f the factor as a C float.  degenerate, x: (b, c, H, W) uint8; factor: (b,)"""
    f = factor.to(torch.float32).view(-1, 1, 1, 1)
    d = degenerate.to(torch.float32)
    diff = (x.to(torch.int32) - degenerate.to(torch.int32)).to(torch.float32)
    return (d + f * diff).to(torch.uint8)  # truncation, as the C cast (the value is in [0, 255])


def blend_table(level: Tensor, factor: Tensor) -> Tensor:
    """The blend of a constant image of grey ``level`` (b,) with an image, as a table of the image's
    level: ``(uint8)(level + f (v - level))`` for v in 0..255.  -> (b, 1, 256) int64"""
    v = torch.arange(256, device=level.device)
    d = level.view(-1, 1, 1)
    f = factor.to(torch.float32).view(-1, 1, 1)
    return (d.to(torch.float32) + f * (v - d).to(torch.float32)).to(torch.uint8).long()


def grey(x: Tensor) -> Tensor:
    """PIL's ``convert("L")`` of RGB (ITU-R 601-2 in 16.16 fixed point, rounded).  (b, 3, H, W) uint8 ->
    (b, 1, H, W) uint8"""
    r, g, bl = x.to(torch.int32).unbind(1)
    return ((r * 19595 + g * 38470 + bl * 7471 + 0x8000) >> 16).to(torch.uint8).unsqueeze(1)


def contrast_grey(x: Tensor) -> Tensor:
    """ImageEnhance.Contrast's degenerate level: ``int(mean of the L image + 0.5)``.  -> (b,) int64"""
    total = grey(x).flatten(1).long().sum(1).to(torch.float64)  # (b,) exact
    mean = total / torch.full_like(total, x.shape[-2] * x.shape[-1])  # a true division on any device
    return torch.floor(mean + 0.5).long()


def smooth(x: Tensor) -> Tensor:
    """``ImageFilter.SMOOTH`` of RGB images as ``ImagingFilter3x3`` computes it: the kernel (1 1 1 / 1 5 1
    / 1 1 1) / 13 in float32, each row of three summed left to right onto 0.5 (rows y+1, y, y-1), the
    sum clipped to [0, 255] and truncated; the border pixels are kept.  (b, 3, H, W) uint8 -> same"""
    xf = x.to(torch.float32)
    one = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(13.0, dtype=torch.float32)
    five = torch.tensor(5.0, dtype=torch.float32) / torch.tensor(13.0, dtype=torch.float32)
    one, five = one.to(x.device), five.to(x.device)

    def row(r: Tensor, middle: Tensor) -> Tensor:  # r: (b, 3, H-2, W) -> (b, 3, H-2, W-2)
        return (r[..., :-2] * one + r[..., 1:-1] * middle) + r[..., 2:] * one

    ss = torch.full_like(xf[..., 1:-1, 1:-1], 0.5)
    ss = ss + row(xf[..., 2:, :], one)  # row y + 1: kernel[0:3]
    ss = ss + row(xf[..., 1:-1, :], five)  # row y: kernel[3:6]
    ss = ss + row(xf[..., :-2, :], one)  # row y - 1: kernel[6:9]
    out = x.clone()
    out[..., 1:-1, 1:-1] = ss.clamp(0, 255).to(torch.uint8)
    return out


def autocontrast_table(flat: Tensor) -> Tensor:
    """``ImageOps.autocontrast`` (no cutoff): per channel, lowest level lo and highest hi, then
    ``int(v * scale + offset)`` clipped to [0, 255], scale = 255 / (hi - lo), offset = -lo scale (in
    double); the identity where hi <= lo.  flat: (b, c, n) int64 -> (b, c, 256) int64"""
    lo, hi = flat.amin(2, keepdim=True), flat.amax(2, keepdim=True)  # (b, c, 1)
    span = (hi - lo).clamp(min=1).to(torch.float64)
    scale = torch.full_like(span, 255.0) / span  # a true division (255.0 / span multiplies by 1 / span)
    offset = -lo.to(torch.float64) * scale
    v = torch.arange(256, device=flat.device, dtype=torch.float64)
    table = torch.trunc(v * scale + offset).clamp(0, 255).long()  # (b, c, 256)
    return torch.where(hi > lo, table, torch.arange(256, device=flat.device))


def equalize_table(flat: Tensor) -> Tensor:
    """``ImageOps.equalize``: per channel, step = (pixels - count of the highest level present) // 255,
    table[i] = (step // 2 + pixels below level i) // step, clipped to 255 by ``point``; the identity
    when one level or none is present, or step is 0.  flat: (b, c, n) int64 -> (b, c, 256) int64"""
    hist = torch.zeros(*flat.shape[:2], 256, dtype=torch.long, device=flat.device)
    hist.scatter_add_(2, flat, torch.ones_like(flat))  # (b, c, 256)
    present = hist > 0
    last = 255 - present.flip(2).to(torch.uint8).argmax(2, keepdim=True)  # (b, c, 1): the highest level present
    step = (flat.shape[2] - hist.gather(2, last)) // 255  # (b, c, 1)
    below = hist.cumsum(2) - hist  # (b, c, 256): pixels of lower levels
    table = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)
    flat_ok = (present.sum(2, keepdim=True) > 1) & (step > 0)
    return torch.where(flat_ok, table, torch.arange(256, device=flat.device))


def posterize_table(v: Tensor) -> Tensor:
    """``ImageOps.posterize(img, max(1, int(v)))``: level & ~(2^(8 - bits) - 1).  v: (b,) -> (b, 1, 256)"""
    bits = torch.trunc(v).long().clamp(1, 8)
    mask = 255 - ((1 << (8 - bits)) - 1)  # (b,)
    return (torch.arange(256, device=v.device) & mask[:, None]).unsqueeze(1)


def solarize_table(v: Tensor) -> Tensor:
    """``ImageOps.solarize(img, v)``: levels below the threshold kept, the others inverted.  v: (b,)
    -> (b, 1, 256)"""
    levels = torch.arange(256, device=v.device)
    return torch.where(levels.to(torch.float64) < v[:, None], levels, 255 - levels).unsqueeze(1)


def rotation_matrix(degrees: Tensor, width: int, height: int) -> Tensor:
    """``Image.rotate(degrees)``'s inverse affine matrix (a, b, c, d, e, f), computed as PIL does:
    the angle mod 360, its cos / sin rounded to 15 decimals, centre (W / 2, H / 2).  (b,) -> (b, 6)"""
    angle = -(torch.remainder(degrees, 360.0) * (math.pi / 180.0))  # -math.radians(angle % 360.0)
    cos, sin = _round15(torch.cos(angle)), _round15(torch.sin(angle))
    cx, cy = width / 2, height / 2
    c = (cos * -cx + sin * -cy + 0.0) + cx
    f = (-sin * -cx + cos * -cy + 0.0) + cy
    return torch.stack([cos, sin, c, -sin, cos, f], dim=1)


def _round15(t: Tensor) -> Tensor:
    """Python's ``round(t, 15)`` for |t| <= 1, to within an ulp (dividing by a tensor: a division by a
    scalar is a product with its reciprocal on CUDA)."""
    return torch.round(t * 1e15) / torch.full_like(t, 1e15)


def affine_fixed_sources(matrix: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """The source (row, column) of each output pixel under PIL's nearest-neighbour affine transform in
    16.16 fixed point (libImaging ``affine_fixed``): FIX(v) = floor(65536 v + 0.5), the origin term
    taken at the first pixel's centre, source = (fixed coordinate) >> 16; -1 outside.
    matrix: (b, 6) float64 -> rows, cols: (b, H, W) int64"""

    def fix(t: Tensor) -> Tensor:
        return torch.floor(t * 65536.0 + 0.5).long()

    a, bb, c, d, e, f = matrix.unbind(1)  # (b,) each
    a0, a1, a3, a4 = fix(a), fix(bb), fix(d), fix(e)
    a2 = fix(c + a * 0.5 + bb * 0.5)
    a5 = fix(f + d * 0.5 + e * 0.5)
    y = torch.arange(height, device=matrix.device).view(1, -1, 1)
    x = torch.arange(width, device=matrix.device).view(1, 1, -1)
    xx = a2.view(-1, 1, 1) + y * a1.view(-1, 1, 1) + x * a0.view(-1, 1, 1)  # (b, H, W)
    yy = a5.view(-1, 1, 1) + y * a4.view(-1, 1, 1) + x * a3.view(-1, 1, 1)
    return torch.div(yy, 65536, rounding_mode="floor"), torch.div(xx, 65536, rounding_mode="floor")


def translate_sources(shift_x: Tensor, shift_y: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """The source (row, column) of each output pixel under PIL's transform (1, 0, shift_x, 0, 1, shift_y)
    (libImaging ``ImagingScaleAffine``): the column coordinate starts at shift_x + 0.5 and grows by 1.0
    per column in double (accumulated, as in C), the source column is its integer part (-1 when
    negative); rows alike.  shift_x, shift_y: (b,) float64 -> rows, cols: (b, H, W) int64"""

    def coords(start: Tensor, n: int) -> Tensor:  # (b,) -> (b, n)
        out = [start]
        for _ in range(n - 1):
            out.append(out[-1] + 1.0)
        t = torch.stack(out, dim=1)
        return torch.where(t < 0, torch.full_like(t, -1.0), torch.trunc(t)).long()

    cols = coords(shift_x + 1.0 * 0.5, width)  # (b, W)
    rows = coords(shift_y + 1.0 * 0.5, height)  # (b, H)
    return rows[:, :, None].expand(-1, height, width), cols[:, None, :].expand(-1, height, width)


def gather_pixels(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Pixel (rows, cols) of each image, black where the source is outside it.  x: (b, c, H, W);
    rows, cols: (b, H, W) int64 -> (b, c, H, W)"""
    b, c, h, w = x.shape
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)  # (b, H, W)
    src = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).reshape(b, 1, h * w).expand(b, c, h * w)
    out = x.reshape(b, c, h * w).gather(2, src).reshape(b, c, h, w)
    return torch.where(inside[:, None], out, torch.zeros_like(out))


def cutout(x: Tensor, size: Tensor, centre_x: Tensor, centre_y: Tensor) -> Tensor:
    """The authors' ``Cutout(img, size)``: nothing when size is 0; else v = size W, corner
    (int(max(0, cx - v / 2)), int(max(0, cy - v / 2))), far corner min(W, corner + v) (truncated by
    PIL), filled inclusively with ``CUTOUT_FILL`` within the image.  x: (b, 3, H, W) uint8; size,
    centre_x, centre_y: (b,) float64 -> (b, 3, H, W) uint8"""
    b, _, h, w = x.shape
    v = size * w  # the authors: v * img.size[0]
    x0 = torch.trunc(torch.clamp(centre_x - v / 2.0, min=0.0))
    y0 = torch.trunc(torch.clamp(centre_y - v / 2.0, min=0.0))
    x1 = torch.trunc(torch.clamp(x0 + v, max=float(w)))
    y1 = torch.trunc(torch.clamp(y0 + v, max=float(h)))
    cols = torch.arange(w, device=x.device, dtype=torch.float64)
    rows = torch.arange(h, device=x.device, dtype=torch.float64)
    in_cols = (cols >= x0[:, None]) & (cols <= x1[:, None])  # (b, W)
    in_rows = (rows >= y0[:, None]) & (rows <= y1[:, None])  # (b, H)
    hole = in_rows[:, :, None] & in_cols[:, None, :] & (size > 0)[:, None, None]  # (b, H, W)
    fill = torch.tensor(CUTOUT_FILL, dtype=torch.uint8, device=x.device).view(1, 3, 1, 1)
    return torch.where(hole[:, None], fill, x)
