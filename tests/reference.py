"""Shared helpers for the loss tests (``tests/test_losses_*.py``): float64 tensors, seeded random inputs
and the plain-Python / numpy float64 building blocks (softmax, KL divergence) of the hand references.

Nothing here calls the torch functions the implementations in ``kdlab.losses`` use: the references built
from these helpers are independent computations of the papers' formulas.
"""

from __future__ import annotations

import math

import numpy as np
import torch

F64 = torch.float64


def t64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed: int = 0, dtype=F64) -> torch.Tensor:
    return torch.randn(*shape, generator=seeded(seed), dtype=dtype)


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def np_softmax(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def kl(q, p) -> float:
    """KL(q || p) = sum_i q_i log(q_i / p_i), with 0 log 0 = 0."""
    return sum(qi * math.log(qi / pi) for qi, pi in zip(q, p) if qi > 0)


def np_adaptive_avg_pool(x, out_size) -> np.ndarray:
    """torch's adaptive average pooling over the trailing spatial dims of (b, c, *spatial), in
    float64 loops: output cell i of a dim of size n -> o averages the input cells
    floor(i n / o) .. ceil((i + 1) n / o) - 1 (windows may overlap when o does not divide n)."""
    x = np.asarray(x, np.float64)
    out_size = tuple(out_size)
    spatial = x.shape[2:]

    def window(i: int, n: int, o: int) -> range:
        return range((i * n) // o, -((-(i + 1) * n) // o))

    out = np.zeros(x.shape[:2] + out_size)
    for idx in np.ndindex(*out_size):
        cells = [window(i, n, o) for i, n, o in zip(idx, spatial, out_size)]
        block = x[(slice(None), slice(None), *(slice(r.start, r.stop) for r in cells))]
        out[(slice(None), slice(None), *idx)] = block.reshape(*x.shape[:2], -1).mean(-1)
    return out


def np_match_spatial(a, b) -> tuple[np.ndarray, np.ndarray]:
    """RepDistiller's size matching: the map with the larger first spatial size (then more positions)
    is pooled to the other's spatial size."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sa, sb = a.shape[2:], b.shape[2:]
    if sa == sb:
        return a, b
    if (sa[0], math.prod(sa)) > (sb[0], math.prod(sb)):
        return np_adaptive_avg_pool(a, sb), b
    return a, np_adaptive_avg_pool(b, sa)


def numeric_grad(f, x, h: float = 1e-6) -> np.ndarray:
    """Central finite differences of the scalar function f at the float64 array x."""
    x = np.array(x, np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        g[idx] = (f(up) - f(down)) / (2 * h)
    return g
