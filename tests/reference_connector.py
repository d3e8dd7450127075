"""Independent float64 references of the connector losses (``kdlab.losses.connector``): AB, FT, OFD and
ReviewKD's HCL, written in numpy / plain Python from the papers and the reference code (RepDistiller
``distiller_zoo/AB.py`` and ``FT.py``, mdistiller ``OFD.py`` and ``ReviewKD.py``), element by element where
the formula is piecewise. Nothing here calls torch: adaptive average pooling and the normal CDF are written
out too. ``fd_grad`` gives central finite differences of a reference, to check the implementations'
autograd gradients against.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def a64(x) -> np.ndarray:
    return np.asarray(x.detach().numpy() if hasattr(x, "detach") else x, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# pooling (PyTorch's adaptive bins: [floor(i L / n), ceil((i + 1) L / n)) )
# ---------------------------------------------------------------------------------------------


def adaptive_bins(length: int, n: int) -> list[tuple[int, int]]:
    return [(math.floor(i * length / n), math.ceil((i + 1) * length / n)) for i in range(n)]


def adaptive_pool(x, size) -> np.ndarray:
    """(b, c, *spatial) -> (b, c, *size): the mean of each adaptive bin, 1-D or 2-D."""
    x = a64(x)
    size = tuple(size)
    out = np.zeros(x.shape[:2] + size)
    bins = [adaptive_bins(n_in, n_out) for n_in, n_out in zip(x.shape[2:], size)]
    for idx in itertools.product(*(range(n) for n in size)):
        window = tuple(slice(*bins[d][i]) for d, i in enumerate(idx))
        region = x[(slice(None), slice(None), *window)]
        out[(slice(None), slice(None), *idx)] = region.reshape(*x.shape[:2], -1).mean(-1)
    return out


# ---------------------------------------------------------------------------------------------
# AB
# ---------------------------------------------------------------------------------------------


def ab_stage(s, t, margin: float = 1.0) -> float:
    """Sum over elements of (s+m)^2 [s > -m, t <= 0] + (s-m)^2 [s <= m, t > 0]."""
    total = 0.0
    for sv, tv in zip(a64(s).ravel(), a64(t).ravel()):
        if tv <= 0 and sv > -margin:
            total += (sv + margin) ** 2
        elif tv > 0 and sv <= margin:
            total += (sv - margin) ** 2
    return total


def ab(student, teacher, margin: float = 1.0) -> float:
    n, b = len(student), a64(student[0]).shape[0]
    return sum(
        2.0 ** (i - n + 1) * ab_stage(s, t, margin) / b * 3 / 1000 for i, (s, t) in enumerate(zip(student, teacher))
    )


# ---------------------------------------------------------------------------------------------
# FT
# ---------------------------------------------------------------------------------------------


def ft_factor(f) -> np.ndarray:
    """(b, c, *spatial) -> (b, prod(spatial)): per sample, channel mean of squares over its L2 norm."""
    f = a64(f)
    rows = []
    for sample in f:
        a = (sample**2).mean(axis=0).ravel()
        rows.append(a / max(math.sqrt(float((a * a).sum())), 1e-12))
    return np.stack(rows)


def ft(s, t) -> float:
    s, t = a64(s), a64(t)
    if np.prod(s.shape[2:]) > np.prod(t.shape[2:]):
        s = adaptive_pool(s, t.shape[2:])
    elif np.prod(s.shape[2:]) < np.prod(t.shape[2:]):
        t = adaptive_pool(t, s.shape[2:])
    return float(np.abs(ft_factor(s) - ft_factor(t)).mean())


# ---------------------------------------------------------------------------------------------
# OFD
# ---------------------------------------------------------------------------------------------


def normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def ofd_margin(std, mean) -> np.ndarray:
    """Per channel: E[x | x < 0] of N(mean, std^2) where P(x < 0) > 0.001, else -3 |std|."""
    out = []
    for s, m in zip(a64(std).ravel(), a64(mean).ravel()):
        s = abs(s)
        p = normal_cdf(-m / s)
        out.append(-s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / p + m if p > 0.001 else -3 * s)
    return np.array(out)


def ofd_stage(s, t, margin) -> float:
    """Batch mean of the sum over channels and positions of mdistiller's three masked squares:
    (s - m)^2 [s > m, t <= m] + (s - t)^2 [s > t, m < t <= 0] + (s - t)^2 [t > 0]."""
    s, t, margin = a64(s), a64(t), a64(margin)
    total = 0.0
    for idx in itertools.product(*(range(n) for n in s.shape)):
        sv, tv, m = s[idx], t[idx], margin[idx[1]]
        if sv > m and tv <= m:
            total += (sv - m) ** 2
        if sv > tv and m < tv <= 0:
            total += (sv - tv) ** 2
        if tv > 0:
            total += (sv - tv) ** 2
    return total / s.shape[0]


def ofd(student, teacher, margins) -> float:
    n = len(student)
    total = 0.0
    for i, (s, t, m) in enumerate(zip(student, teacher, margins)):
        s, t = a64(s), a64(t)
        if t.shape[2:] != s.shape[2:]:
            t = adaptive_pool(t, s.shape[2:])
        total += ofd_stage(s, t, m) / 2 ** (n - i - 1)
    return total


# ---------------------------------------------------------------------------------------------
# ReviewKD's hierarchical context loss
# ---------------------------------------------------------------------------------------------


def hcl(student, teacher, levels=(4, 2, 1)) -> float:
    total = 0.0
    for s, t in zip(student, teacher):
        s, t = a64(s), a64(t)
        dims, size = s.ndim - 2, s.shape[2]
        terms = [(1.0, float(((s - t) ** 2).mean()))]
        w = 1.0
        for level in levels:
            if level < size:
                w /= 2
                ps, pt = adaptive_pool(s, (level,) * dims), adaptive_pool(t, (level,) * dims)
                terms.append((w, float(((ps - pt) ** 2).mean())))
        total += sum(w * v for w, v in terms) / sum(w for w, _ in terms)
    return total


# ---------------------------------------------------------------------------------------------
# finite differences
# ---------------------------------------------------------------------------------------------


def fd_grad(fn, x, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``fn(x)`` (x a float64 array) with respect to every element of x."""
    x = a64(x).copy()
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        old = x[idx]
        x[idx] = old + eps
        up = fn(x)
        x[idx] = old - eps
        down = fn(x)
        x[idx] = old
        grad[idx] = (up - down) / (2 * eps)
    return grad


# ---------------------------------------------------------------------------------------------
# ReviewKD's attention-based fusion (ABF), 1-D, BatchNorm in eval mode
# ---------------------------------------------------------------------------------------------


def nearest_1d(x: np.ndarray, length: int) -> np.ndarray:
    """(b, c, L_in) -> (b, c, length): element floor(i L_in / length) (nearest, as PyTorch's legacy mode)."""
    n = x.shape[-1]
    return x[..., [min(math.floor(i * n / length), n - 1) for i in range(length)]]


def bn_eval(x: np.ndarray, bn: dict) -> np.ndarray:
    shape = (1, -1, 1)
    return (x - bn["mean"].reshape(shape)) / np.sqrt(bn["var"].reshape(shape) + bn["eps"]) * bn["weight"].reshape(
        shape
    ) + bn["bias"].reshape(shape)


def conv1d(x: np.ndarray, w: np.ndarray, bias=None) -> np.ndarray:
    """Stride 1, padding (k - 1) / 2: out[b, o, l] = sum_c,j w[o, c, j] x[b, c, l + j - (k - 1) / 2]."""
    b, c, n = x.shape
    o, _, k = w.shape
    pad = (k - 1) // 2
    xp = np.zeros((b, c, n + 2 * pad))
    xp[..., pad : pad + n] = x
    out = np.zeros((b, o, n))
    for j in range(k):
        out += np.einsum("oc,bcl->bol", w[:, :, j], xp[..., j : j + n])
    return out + (0 if bias is None else bias.reshape(1, -1, 1))


def abf_1d(x, residual, out_len: int, p: dict):
    """One ABF level: 1x1 conv -> BN; fused with the nearest-upsampled residual by the two sigmoid
    attention maps of a 1x1 conv of both; resized to ``out_len``; 3x3 conv -> BN. Returns (output, fused)."""
    x = bn_eval(conv1d(a64(x), p["w1"]), p["bn1"])
    if residual is not None:
        r = nearest_1d(residual, x.shape[-1])
        z = 1 / (1 + np.exp(-conv1d(np.concatenate([x, r], 1), p["wa"], p["ba"])))
        x = x * z[:, 0:1] + r * z[:, 1:2]
    if x.shape[-1] != out_len:
        x = nearest_1d(x, out_len)
    return bn_eval(conv1d(x, p["w2"]), p["bn2"]), x


def review_1d(student, out_lens, params) -> list[np.ndarray]:
    """Deep to shallow through the levels' ABFs; the outputs, shallow to deep."""
    results, residual = [], None
    for i in reversed(range(len(student))):
        out, residual = abf_1d(student[i], residual, out_lens[i], params[i])
        results.insert(0, out)
    return results
