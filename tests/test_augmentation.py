"""kdlab's on-device batched augmentations against torchvision's per-image ones.

CIFAR: every one of the 162 views of ``crop_flip`` is exactly torchvision's pad + crop + hflip, the
``CIFAR`` module's training batches are exactly torchvision's ``RandomCrop(32, padding=4)`` +
``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize`` at the views the batch reports, and
``draw_crop_flip`` draws the views with torchvision's distribution (uniform offsets, fair flip, all
independent). MNIST-1D: ``preprocess`` shifts uniformly over -s..s with edge padding and adds
N(0, noise_std) noise to training batches only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from scipy.stats import chi2_contingency, chisquare, kstest

from kdlab.data.cifar import CIFAR, CROP_FLIP_VIEWS, MEAN, PAD, STD, crop_flip, draw_crop_flip, write_fake_cifar
from kdlab.data.mnist1d import MNIST1D

ALPHA = 1e-3  # a statistical check passes when its p-value (at the fixed seed) is above this
N_KDLAB, N_TORCHVISION = 200_000, 20_000  # parameter draws of each sampler
SIDE = 9  # offsets per axis: 2 PAD + 1


def torchvision_view(img, top: int, left: int, flip: bool, pad: int = PAD):
    """torchvision's own ops for one view of one image (a (c, h, w) tensor or a PIL image):
    zero-pad by ``pad``, crop the original size at (top, left), mirror when ``flip``."""
    h, w = (img.shape[-2:]) if isinstance(img, torch.Tensor) else (img.height, img.width)
    out = TF.crop(TF.pad(img, pad, fill=0), top, left, h, w)
    return TF.hflip(out) if flip else out


def decode(views: torch.Tensor, pad: int = PAD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top, left, flip) of view ids, view = (top (2 pad + 1) + left) 2 + flip."""
    n = 2 * pad + 1
    v = views.cpu().numpy()
    return v // (2 * n), (v // 2) % n, v % 2


# ---------------------------------------------------------------------------------------------
# 1. Exactness per view
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pad", [PAD, 2])
def test_crop_flip_equals_torchvision_for_every_view(pad):
    """Proves that ``crop_flip`` is torchvision's ``pad(img, pad, fill=0)`` -> ``crop(top, left, 32,
    32)`` -> ``hflip`` (if flip) bit for bit, for every one of the (2 pad + 1)^2 2 view ids (162 for
    pad 4), on float and uint8 batches, with the views in any order and repeated within a batch."""
    n_views = (2 * pad + 1) ** 2 * 2
    g = torch.Generator().manual_seed(0)
    # each view id three times, shuffled, so neighbours in the batch have unrelated views
    views = torch.arange(n_views).repeat(3)[torch.randperm(3 * n_views, generator=g)]  # (b,)
    x = torch.randint(0, 256, (len(views), 3, 32, 32), generator=g).float()  # (b, 3, 32, 32), uint8-like
    for batch in (x, x.to(torch.uint8)):
        got = crop_flip(batch, views, pad)  # (b, 3, 32, 32)
        assert got.shape == batch.shape and got.dtype == batch.dtype
        for i, (top, left, flip) in enumerate(zip(*decode(views, pad))):
            want = torchvision_view(batch[i], int(top), int(left), bool(flip), pad)
            assert torch.equal(got[i], want), f"view {int(views[i])} (top={top}, left={left}, flip={flip})"
    # every view id was covered, and the 162 views of one image are 162 distinct images
    assert set(views.tolist()) == set(range(n_views))
    one = crop_flip(x[:1].expand(n_views, -1, -1, -1), torch.arange(n_views), pad)  # (n_views, 3, 32, 32)
    assert len(torch.unique(one.flatten(1), dim=0)) == n_views


def test_crop_flip_equals_torchvision_pil_pipeline():
    """Proves the same exactness against torchvision's PIL path (what the reference CIFAR loaders
    run: uint8 HWC PIL images through ``pad`` / ``crop`` / ``hflip`` then ``to_tensor``), for all
    162 views: kdlab's scaled-then-cropped floats equal torchvision's cropped-then-scaled ones."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (CROP_FLIP_VIEWS, 3, 32, 32), generator=g, dtype=torch.uint8)  # (162, 3, 32, 32)
    views = torch.arange(CROP_FLIP_VIEWS)
    got = crop_flip(x.float() / 255, views)  # (162, 3, 32, 32)
    for i, (top, left, flip) in enumerate(zip(*decode(views))):
        pil = Image.fromarray(x[i].permute(1, 2, 0).numpy())  # (32, 32, 3) uint8
        want = TF.to_tensor(torchvision_view(pil, int(top), int(left), bool(flip)))
        assert torch.equal(got[i], want), f"view {i} (top={top}, left={left}, flip={flip})"


@pytest.fixture
def fake_cifar(tmp_path):
    """A CIFAR data module over random images in CIFAR's on-disk format (train 300, test 50)."""

    def make(classes: int) -> CIFAR:
        write_fake_cifar(tmp_path, classes=classes, n_train=300, n_test=50)
        dm = CIFAR(classes=classes, root=str(tmp_path), val_fraction=0, batch_size=128)
        dm.setup()
        return dm

    return make


@pytest.mark.parametrize("classes", [100, 10])
def test_cifar_preprocess_equals_torchvision_compose(fake_cifar, monkeypatch, classes):
    """Proves that ``CIFAR.preprocess(batch, train=True)`` gives, for every image of every training
    batch, what torchvision's ``Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(),
    ToTensor(), Normalize(mean, std)])`` gives on the PIL image when its crop sampler returns the
    offsets, and its flip the decision, of the view the batch reports (atol 1e-6); that the
    reported views decode to the images kdlab produced; and that the batch's index names the
    stored image it was made from."""
    dm = fake_cifar(classes)
    chosen: list[tuple[int, int]] = []  # the (top, left) that torchvision's RandomCrop will "draw" next

    def get_params(img, output_size):  # torchvision's RandomCrop.get_params, fed kdlab's offsets
        assert TF.get_dimensions(img)[1:] == [32 + 2 * PAD, 32 + 2 * PAD] and tuple(output_size) == (32, 32)
        return (*chosen.pop(), 32, 32)

    monkeypatch.setattr(T.RandomCrop, "get_params", staticmethod(get_params))
    flip_step = T.RandomHorizontalFlip()
    reference = T.Compose(
        [T.RandomCrop(32, padding=4), flip_step, T.ToTensor(), T.Normalize(MEAN[classes], STD[classes])]
    )
    torch.manual_seed(0)
    seen, flips = 0, 0
    for batch in dm.train_dataloader():
        x_raw, _, index = batch  # (b, 3, 32, 32) uint8, (b,), (b,)
        assert torch.equal(x_raw, dm.train_set.x[index])
        x, y, index2, views = dm.preprocess(batch, train=True)  # (b, 3, 32, 32) float
        assert torch.equal(index2, index) and torch.equal(y, batch[1]) and views.shape == (len(x_raw),)
        assert torch.equal(x, dm.view_inputs(x_raw, views))  # the reported views are the ones applied
        for i, (top, left, flip) in enumerate(zip(*decode(views))):
            chosen.append((int(top), int(left)))
            flip_step.p = 1.0 if flip else 0.0  # torch.rand(1) < p: always / never
            want = reference(Image.fromarray(x_raw[i].permute(1, 2, 0).numpy()))
            torch.testing.assert_close(x[i], want, rtol=0, atol=1e-6, msg=f"view {int(views[i])}")
        seen, flips = seen + len(x), flips + int((views % 2).sum())
    assert seen == 300 and not chosen and 0 < flips < seen


@pytest.mark.parametrize("classes", [100, 10])
def test_cifar_eval_batches_are_torchvision_to_tensor_normalize(fake_cifar, classes):
    """Proves that evaluation batches (``train=False``) get no augmentation: each image is exactly
    torchvision's ``ToTensor`` + ``Normalize(mean, std)`` of the stored image (atol 1e-6), and the
    batch keeps its (x, y, index) layout with no view."""
    dm = fake_cifar(classes)
    reference = T.Compose([T.ToTensor(), T.Normalize(MEAN[classes], STD[classes])])
    for batch in dm.test_dataloader():
        out = dm.preprocess(batch, train=False)
        assert len(out) == 3 and torch.equal(out[1], batch[1]) and torch.equal(out[2], batch[2])
        want = torch.stack([reference(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in batch[0]])
        torch.testing.assert_close(out[0], want, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# 2. Distribution of the views
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kdlab_draws():
    """(top, left, flip) of N_KDLAB views from ``draw_crop_flip`` at torch seed 0 (global RNG restored)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return decode(draw_crop_flip(N_KDLAB))


@pytest.fixture(scope="module")
def torchvision_draws():
    """(top, left, flip) of N_TORCHVISION draws of torchvision's own samplers at torch seed 1, in the
    order its CIFAR pipeline draws them per image: ``RandomCrop.get_params`` on the 40x40 padded
    image, then ``RandomHorizontalFlip``'s ``torch.rand(1) < 0.5``."""
    padded = torch.zeros(3, 32 + 2 * PAD, 32 + 2 * PAD)
    rows = []
    with torch.random.fork_rng():
        torch.manual_seed(1)
        for _ in range(N_TORCHVISION):
            top, left, h, w = T.RandomCrop.get_params(padded, (32, 32))
            rows.append((top, left, int(torch.rand(1) < 0.5)))
    assert (h, w) == (32, 32)
    return tuple(np.array(rows).T)


def uniformity_pvalues(top, left, flip) -> dict[str, float]:
    """Chi-square goodness-of-fit p-values of the three marginals and the 162-cell joint against uniform."""
    joint = (top * SIDE + left) * 2 + flip
    return {
        "top": chisquare(np.bincount(top, minlength=SIDE)).pvalue,
        "left": chisquare(np.bincount(left, minlength=SIDE)).pvalue,
        "flip": chisquare(np.bincount(flip, minlength=2)).pvalue,
        "joint": chisquare(np.bincount(joint, minlength=CROP_FLIP_VIEWS)).pvalue,
    }


def independence_pvalues(top, left, flip) -> dict[str, float]:
    """Chi-square contingency p-values of pairwise and mutual independence of top, left and flip."""
    table = np.zeros((SIDE, SIDE, 2), dtype=np.int64)
    np.add.at(table, (top, left, flip), 1)
    return {
        "top-left": chi2_contingency(table.sum(2)).pvalue,
        "top-flip": chi2_contingency(table.sum(1)).pvalue,
        "left-flip": chi2_contingency(table.sum(0)).pvalue,
        "mutual": chi2_contingency(table).pvalue,
    }


def test_kdlab_views_are_uniform(kdlab_draws):
    """Proves that ``draw_crop_flip``'s top offset, left offset and flip are each uniform (0..8,
    0..8, 0..1) and that the 162 view ids are uniform jointly (chi-square, p > 1e-3 at seed 0 over
    200k draws): every view is equally likely, as under torchvision."""
    top, left, flip = kdlab_draws
    assert top.min() == 0 and top.max() == SIDE - 1 and left.min() == 0 and left.max() == SIDE - 1
    p = uniformity_pvalues(top, left, flip)
    assert min(p.values()) > ALPHA, p


def test_kdlab_views_match_torchvision_samplers(kdlab_draws, torchvision_draws):
    """Proves that kdlab's and torchvision's samplers draw from the same distribution: two-sample
    chi-square (contingency of sampler x value) on the 9 top values, the 9 left values, the 2 flips
    and the 162 joint views, p > 1e-3 (200k kdlab draws vs 20k torchvision draws)."""
    joint = [(t * SIDE + le) * 2 + f for t, le, f in (kdlab_draws, torchvision_draws)]
    p = {}
    for name, k, tv, bins in (
        ("top", kdlab_draws[0], torchvision_draws[0], SIDE),
        ("left", kdlab_draws[1], torchvision_draws[1], SIDE),
        ("flip", kdlab_draws[2], torchvision_draws[2], 2),
        ("joint", joint[0], joint[1], CROP_FLIP_VIEWS),
    ):
        counts = np.stack([np.bincount(k, minlength=bins), np.bincount(tv, minlength=bins)])  # (2, bins)
        assert (counts > 0).all(), f"{name}: a value never drawn {counts}"
        p[name] = chi2_contingency(counts).pvalue
    assert min(p.values()) > ALPHA, p
    # torchvision's own draws pass the same uniformity checks (the reference is what we think it is)
    p_tv = uniformity_pvalues(*torchvision_draws)
    assert min(p_tv.values()) > ALPHA, p_tv


def test_kdlab_view_parameters_are_independent(kdlab_draws):
    """Proves that within kdlab's draws the top offset, left offset and flip are independent
    (chi-square contingency pairwise and on the 9x9x2 table, p > 1e-3), as torchvision's separate
    draws are: no coupling between the per-sample crop and flip of a batch."""
    p = independence_pvalues(*kdlab_draws)
    assert min(p.values()) > ALPHA, p


def test_distribution_checks_catch_plausible_sampler_bugs():
    """Proves that the checks above have teeth at these sample sizes: an off-by-one offset range
    (0..7), a flip drawn with probability 0.49, and a left offset that copies the top offset 5% of
    the time are each rejected (p < 1e-3)."""
    g = torch.Generator().manual_seed(2)
    top = torch.randint(0, SIDE, (N_KDLAB,), generator=g).numpy()
    left = torch.randint(0, SIDE, (N_KDLAB,), generator=g).numpy()
    flip = (torch.rand(N_KDLAB, generator=g) < 0.5).long().numpy()
    assert min(uniformity_pvalues(top, left, flip).values()) > ALPHA  # the unbiased control passes
    short = torch.randint(0, SIDE - 1, (N_KDLAB,), generator=g).numpy()
    assert uniformity_pvalues(short, left, flip)["top"] < ALPHA
    unfair = (torch.rand(N_KDLAB, generator=g) < 0.49).long().numpy()
    assert uniformity_pvalues(top, left, unfair)["flip"] < ALPHA
    coupled = np.where(torch.rand(N_KDLAB, generator=g).numpy() < 0.05, top, left)
    assert independence_pvalues(top, coupled, flip)["top-left"] < ALPHA


# ---------------------------------------------------------------------------------------------
# 3. MNIST-1D shift and noise
# ---------------------------------------------------------------------------------------------


def shifted_copies(x: torch.Tensor, s: int) -> torch.Tensor:
    """Each signal of ``x`` (b, 1, L) shifted by every k in -s..s, edge-padded: (2s + 1, b, 1, L),
    copy k + s holding x moved k steps right (its first value repeated on the left) for k > 0 and
    -k steps left (its last value repeated on the right) for k < 0."""
    n = x.shape[-1]
    out = []
    for k in range(-s, s + 1):
        if k >= 0:
            out.append(torch.cat([x[..., :1].expand(-1, -1, k), x[..., : n - k]], dim=-1))
        else:
            out.append(torch.cat([x[..., -k:], x[..., -1:].expand(-1, -1, -k)], dim=-1))
    return torch.stack(out)


def distinct_signals(b: int, seed: int) -> torch.Tensor:
    """(b, 1, 40) signals whose 40 values are distinct within each signal (a permutation of 0..39),
    so that different shifts of a signal differ."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(40, generator=g) for _ in range(b)]).float().unsqueeze(1)


def recover_shifts(x: torch.Tensor, out: torch.Tensor, s: int) -> tuple[np.ndarray, torch.Tensor]:
    """The shift of each output signal (the edge-padded copy of its input nearest to it, in -s..s)
    and the residual output - that copy (b, 1, L)."""
    copies = shifted_copies(x, s)  # (2s + 1, b, 1, L)
    dist = ((copies - out) ** 2).sum((-1, -2))  # (2s + 1, b)
    k = dist.argmin(0)  # (b,)
    return (k - s).numpy(), out - copies[k, torch.arange(len(x))]


@pytest.mark.parametrize("s", [1, 3, 5])
def test_mnist1d_shift_is_uniform_and_edge_padded(tmp_path, s):
    """Proves that ``MNIST1D.preprocess(train=True)`` with ``max_shift=s`` (no noise) outputs, for
    every signal, exactly one of its edge-padded shifts by -s..s, and that the shift is uniform
    over those 2s + 1 values (chi-square p > 1e-3 over 3000 (2s + 1) signals, seed 0)."""
    dm = MNIST1D(root=str(tmp_path), max_shift=s)
    b = 3000 * (2 * s + 1)
    x = distinct_signals(b, seed=s)
    y, idx = torch.zeros(b, dtype=torch.long), torch.arange(b)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        out, y2, idx2 = dm.preprocess((x, y, idx), train=True)
    assert out.shape == x.shape and y2 is y and idx2 is idx
    exact = (shifted_copies(x, s) == out).all(-1).all(-1)  # (2s + 1, b): which shifts reproduce each output
    assert (exact.sum(0) == 1).all(), "an output is not exactly one edge-padded shift of its input"
    shift = exact.float().argmax(0).numpy() - s
    counts = np.bincount(shift + s, minlength=2 * s + 1)
    assert len(counts) == 2 * s + 1 and (counts > 0).all(), counts
    assert chisquare(counts).pvalue > ALPHA, counts


@pytest.mark.parametrize("noise_std", [0.05, 0.3])
def test_mnist1d_noise_is_gaussian_with_noise_std(tmp_path, noise_std):
    """Proves that ``MNIST1D.preprocess(train=True)`` with ``noise_std`` (no shift) adds independent
    Gaussian noise of mean 0 and std ``noise_std``: over 4000 x 40 values the mean is within 5
    standard errors of 0, the std within 5 of ``noise_std``, neighbouring values are uncorrelated,
    and a Kolmogorov-Smirnov test against N(0, noise_std) gives p > 1e-3."""
    dm = MNIST1D(root=str(tmp_path), noise_std=noise_std)
    x = torch.randn(4000, 1, 40, generator=torch.Generator().manual_seed(3))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        out = dm.preprocess((x, torch.zeros(4000, dtype=torch.long)), train=True)[0]
    noise = (out - x).double()  # (4000, 1, 40)
    check_noise(noise, noise_std)


def check_noise(noise: torch.Tensor, noise_std: float) -> None:
    """Mean 0, std ``noise_std``, lag-1 uncorrelated and normal, at tolerances from the sample size."""
    n = noise.numel()
    assert abs(noise.mean().item()) < 5 * noise_std / n**0.5, noise.mean()
    assert abs(noise.std().item() / noise_std - 1) < 5 / (2 * n) ** 0.5, noise.std()
    lag1 = torch.corrcoef(torch.stack([noise[..., 1:].flatten(), noise[..., :-1].flatten()]))[0, 1]
    assert abs(lag1.item()) < 5 / n**0.5, lag1
    assert kstest(noise.flatten().numpy() / noise_std, "norm").pvalue > ALPHA


def test_mnist1d_shift_and_noise_together(tmp_path):
    """Proves that with both ``max_shift=2`` and ``noise_std=0.05`` each training signal is an
    edge-padded shift of its input (uniform over -2..2, chi-square p > 1e-3) plus N(0, 0.05) noise:
    the shift is recovered as the nearest shifted copy and the residual passes the noise checks."""
    s, noise_std, b = 2, 0.05, 10_000
    dm = MNIST1D(root=str(tmp_path), max_shift=s, noise_std=noise_std)
    x = distinct_signals(b, seed=4)  # values 1 apart, far beyond the noise
    with torch.random.fork_rng():
        torch.manual_seed(0)
        out = dm.preprocess((x, torch.zeros(b, dtype=torch.long)), train=True)[0]
    shift, residual = recover_shifts(x, out, s)
    assert chisquare(np.bincount(shift + s, minlength=2 * s + 1)).pvalue > ALPHA
    check_noise(residual.double(), noise_std)


def test_mnist1d_eval_and_unaugmented_batches_are_unchanged(tmp_path):
    """Proves that evaluation batches (``train=False``) are returned as they are even with shift and
    noise configured, with no random draw, and that training batches are unchanged when
    ``max_shift=0`` and ``noise_std=0``."""
    x = torch.randn(64, 1, 40, generator=torch.Generator().manual_seed(5))
    y, idx = torch.arange(64) % 10, torch.arange(64)
    augmenting = MNIST1D(root=str(tmp_path), max_shift=3, noise_std=0.5)
    state = torch.random.get_rng_state()
    out = augmenting.preprocess((x, y, idx), train=False)
    assert torch.equal(torch.random.get_rng_state(), state), "evaluation drew random numbers"
    assert out[0] is x and out[1] is y and out[2] is idx
    plain = MNIST1D(root=str(tmp_path))
    out = plain.preprocess((x, y, idx), train=True)
    assert torch.equal(out[0], x) and out[1] is y and out[2] is idx
    # and with augmentation on, training batches do change (the checks above test a live path)
    assert not torch.equal(augmenting.preprocess((x, y, idx), train=True)[0], x)
