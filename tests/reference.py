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
