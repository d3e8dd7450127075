"""``data.strong_view``: MLKD's strong view (Jin et al., CVPR 2023) in the training batches.

The on-device RandAugment (``kdlab.data.strong``) against the authors' PIL ops, re-stated here from
Jin-Ying/Multi-Level-Logit-Distillation ``mdistiller/dataset/cifar100.py`` (``augment_list``,
``RandAugment``, ``Cutout``), op by op and as a whole, pixel for pixel; its random choices against the
authors' distributions; the training batch ``(x, y, index, view, x_strong)`` of CIFAR and MNIST-1D,
whose ``x`` and ``view`` are those drawn without the strong view; and the data that refuse one.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from omegaconf import OmegaConf
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from scipy.stats import chi2_contingency, chisquare, ks_2samp, kstest

from kdlab.data.cifar import CIFAR, MEAN, PAD, STD, draw_crop_flip, write_fake_cifar
from kdlab.data.digits import Digits
from kdlab.data.imagefolder import ImageFolderData
from kdlab.data.imagenet import ImageNet
from kdlab.data.mnist1d import MNIST1D
from kdlab.data.strong import OPS, RANGES, apply_ops, draw_rand_augment, rand_augment
from kdlab.errors import KdlabError

ALPHA = 1e-3  # a statistical check passes when its p-value (at the fixed seed) is above this
CONF = Path(__file__).resolve().parents[1] / "conf" / "data"


# ---------------------------------------------------------------------------------------------
# the authors' ops, as their code calls PIL
# ---------------------------------------------------------------------------------------------


def authors_op(name: str, img: Image.Image, v: float) -> Image.Image:
    """One op of the authors' ``augment_list()`` on a PIL image, as their functions call PIL."""
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Brightness":
        return ImageEnhance.Brightness(img).enhance(v)
    if name == "Color":
        return ImageEnhance.Color(img).enhance(v)
    if name == "Contrast":
        return ImageEnhance.Contrast(img).enhance(v)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Identity":
        return img
    if name == "Posterize":
        return ImageOps.posterize(img, max(1, int(v)))
    if name == "Rotate":
        return img.rotate(v)
    if name == "Sharpness":
        return ImageEnhance.Sharpness(img).enhance(v)
    if name == "ShearX":
        return img.transform(img.size, Image.AFFINE, (1, v, 0, 0, 1, 0))
    if name == "ShearY":
        return img.transform(img.size, Image.AFFINE, (1, 0, 0, v, 1, 0))
    if name == "Solarize":
        return ImageOps.solarize(img, v)
    if name == "TranslateX":
        return img.transform(img.size, Image.AFFINE, (1, 0, v * img.size[0], 0, 1, 0))
    if name == "TranslateY":
        return img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, v * img.size[1]))
    raise AssertionError(name)


def authors_cutout(img: Image.Image, v: float, x_draw: float, y_draw: float) -> Image.Image:
    """The authors' ``Cutout(img, v)`` with ``np.random.uniform(w)`` / ``(h)`` replaced by the draws."""
    if v <= 0.0:
        return img
    v = v * img.size[0]
    w, h = img.size
    x0 = int(max(0, x_draw - v / 2.0))
    y0 = int(max(0, y_draw - v / 2.0))
    x1 = min(w, x0 + v)
    y1 = min(h, y0 + v)
    img = img.copy()
    ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), (125, 123, 114))
    return img


def to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(x.permute(1, 2, 0).numpy())  # (3, H, W) uint8 -> RGB


def from_pil(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)  # -> (3, H, W) uint8


def sample_images(n: int, seed: int) -> torch.Tensor:
    """Random uint8 images (n, 3, 32, 32), the histogram edge cases among them: a quarter with four
    levels only, one of a single level, one of two levels, one black, one of levels 0..200 (where
    AutoContrast's 200 * (255 / 200) rounds below 255)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    x[: n // 4] = (x[: n // 4] // 64) * 60 + 20
    x[0] = 77
    x[1] = torch.where(torch.rand(3, 32, 32, generator=g) < 0.5, 10, 250).to(torch.uint8)
    x[2] = 0
    x[n - 1] = (x[n - 1] // 64) * 50 + (x[n - 1] // 192) * 50  # levels 0, 50, 100, 200
    return x


# ---------------------------------------------------------------------------------------------
# 1. the ops, pixel for pixel
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPS)
def test_each_op_equals_the_authors_pil_op(name):
    """Proves that each op, applied to a batch of 48 images with per-image magnitudes over its whole
    range (both ends included), gives exactly the authors' PIL op's pixels (Pillow 13.0) on every
    image: the colour / point ops (blends, tables), and the geometric ones (fixed-point affine,
    translation) alike; the measured difference is 0 pixels, so the tolerance is exact equality."""
    x = sample_images(48, seed=OPS.index(name))
    lo, hi = RANGES[OPS.index(name)]
    g = torch.Generator().manual_seed(100 + OPS.index(name))
    v = lo + (hi - lo) * torch.rand(len(x), generator=g, dtype=torch.float64)
    v[3], v[4] = lo, hi - 1e-9  # the ends of the range
    got = apply_ops(x, torch.full((len(x),), OPS.index(name)), v)  # (48, 3, 32, 32)
    assert got.dtype == torch.uint8 and got.shape == x.shape
    for i in range(len(x)):
        want = from_pil(authors_op(name, to_pil(x[i]), float(v[i])))
        diff = (got[i].int() - want.int()).abs()
        assert torch.equal(got[i], want), f"{name}(v={float(v[i])}), image {i}: {int((diff > 0).sum())} pixels differ"
    if name != "Identity":  # the op does something on these images
        assert not torch.equal(got[3:], x[3:])


def test_rand_augment_equals_the_authors_pipeline():
    """Proves that ``rand_augment`` with the choices ``draw_rand_augment`` made is, image by image,
    exactly the authors' ``RandAugment(2, 10).__call__`` given those choices: op 1 then op 2 with their
    magnitudes, then Cutout with its size and centre; every op occurs in the batch, in both positions."""
    x = sample_images(160, seed=20)
    torch.manual_seed(0)
    draw = draw_rand_augment(len(x))
    got = rand_augment(x, draw)
    for k in range(2):
        assert set(draw.ops[:, k].tolist()) == set(range(len(OPS)))
    for i in range(len(x)):
        img = to_pil(x[i])
        for k in range(2):
            img = authors_op(OPS[int(draw.ops[i, k])], img, float(draw.values[i, k]))
        img = authors_cutout(img, float(draw.cutout[i]), float(draw.cutout_x[i]), float(draw.cutout_y[i]))
        assert torch.equal(got[i], from_pil(img)), f"image {i}: ops {draw.ops[i].tolist()}"


@pytest.mark.parametrize(
    "v, cx, cy",
    [
        (0.0, 10.0, 10.0),  # no cutout
        (0.001, 5.5, 7.2),  # under a pixel: one pixel filled
        (0.25, 32.0, 32.0),  # centre at the far corner: clipped
        (0.49999, 1.0000001, 1.0000001),  # the largest, at the near corner
        (0.3, 16.7, 3.9),
    ],
)
def test_cutout_edge_cases_equal_the_authors(v, cx, cy):
    """Proves that the Cutout matches the authors' (PIL's inclusive, truncated rectangle) on hand-built
    sizes and centres: none, sub-pixel, clipped at either corner."""
    x = sample_images(4, seed=30)[3:]
    draw = draw_rand_augment(1)
    draw = type(draw)(
        ops=torch.full((1, 2), OPS.index("Identity")),
        values=torch.zeros(1, 2, dtype=torch.float64),
        cutout=torch.tensor([v], dtype=torch.float64),
        cutout_x=torch.tensor([cx], dtype=torch.float64),
        cutout_y=torch.tensor([cy], dtype=torch.float64),
    )
    got = rand_augment(x, draw)[0]
    assert torch.equal(got, from_pil(authors_cutout(to_pil(x[0]), v, cx, cy)))
    assert torch.equal(got, x[0]) == (v == 0.0)


def test_rand_augment_refuses_other_images():
    with pytest.raises(ValueError, match="uint8 RGB"):
        rand_augment(torch.zeros(2, 3, 32, 32), draw_rand_augment(2))


# ---------------------------------------------------------------------------------------------
# 2. the random choices
# ---------------------------------------------------------------------------------------------


def test_choices_follow_the_authors_distributions():
    """Proves, over 100000 draws at seed 0 (p > 1e-3 each), that the ops are uniform over the 14
    (chi-square), the two ops of an image independent (chi-square of the 14 x 14 table: with
    replacement, as ``random.choices``), each op's magnitude uniform on its range (Kolmogorov-Smirnov,
    all inside [min, max)), Cutout's size uniform on [0, 0.5), and its centre distributed as the
    authors' ``np.random.uniform(32)`` (two-sample KS against numpy's own draws: uniform on (1, 32])."""
    n = 100_000
    torch.manual_seed(0)
    d = draw_rand_augment(n)
    ops, values = d.ops.numpy(), d.values.numpy()
    assert ops.shape == (n, 2) and values.dtype == np.float64
    counts = np.bincount(ops.ravel(), minlength=len(OPS))
    assert chisquare(counts).pvalue > ALPHA, counts
    table = np.zeros((len(OPS), len(OPS)))
    np.add.at(table, (ops[:, 0], ops[:, 1]), 1)
    assert chi2_contingency(table).pvalue > ALPHA
    assert (np.diag(table) > 0).all()  # the same op twice happens
    for j, (lo, hi) in enumerate(RANGES):
        v = values[ops == j]
        assert ((v >= lo) & (v < hi)).all(), OPS[j]
        assert kstest((v - lo) / (hi - lo), "uniform").pvalue > ALPHA, OPS[j]
    size = d.cutout.numpy()
    assert (size >= 0).all() and (size < 0.5).all() and kstest(size / 0.5, "uniform").pvalue > ALPHA
    numpy_draws = np.random.RandomState(0).uniform(32, size=20_000)  # the authors' call: low=32, high=1.0
    for centre in (d.cutout_x.numpy(), d.cutout_y.numpy()):
        assert centre.min() > 1.0 and centre.max() <= 32.0
        assert ks_2samp(centre, numpy_draws).pvalue > ALPHA
    # and the check has power: a centre uniform on [0, 32) (the evident reading) is told apart
    assert ks_2samp(np.random.RandomState(1).uniform(0, 32, 20_000), numpy_draws).pvalue < ALPHA


# ---------------------------------------------------------------------------------------------
# 3. the CIFAR training batch
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def cifar_root(tmp_path):
    write_fake_cifar(tmp_path, classes=100, n_train=96, n_test=20)
    return str(tmp_path)


def cifar(root: str, **kwargs) -> CIFAR:
    dm = CIFAR(classes=100, root=root, val_fraction=0, batch_size=32, **kwargs)
    dm.setup()
    return dm


def epochs(dm: CIFAR, n: int, seed: int = 0) -> tuple[list, torch.Tensor]:
    """The preprocessed training batches of ``n`` epochs from ``seed``, and torch's RNG state after."""
    torch.manual_seed(seed)
    out = [dm.preprocess(batch, train=True) for _ in range(n) for batch in dm.train_dataloader()]
    return out, torch.get_rng_state()


def test_cifar_strong_view_batches(cifar_root):
    """Proves that with ``strong_view`` a CIFAR training batch is ``(x, y, index, view, x_strong)``:
    x_strong float32 of x's shape, normalised (per-channel mean/std in a plausible range), other than
    x; the crop + flip of the strong view drawn apart from the weak one; validation batches unchanged
    (x, y, index); ``train_views`` and the 162-view scheme unchanged; ``describe`` says so."""
    dm = cifar(cifar_root, strong_view=True)
    plain = cifar(cifar_root)
    batches, _ = epochs(dm, 1)
    assert len(batches) == 3
    for x, y, index, view, x_strong in batches:
        assert x.shape == x_strong.shape == (32, 3, 32, 32) and x_strong.dtype == torch.float32
        assert y.shape == index.shape == view.shape == (32,)
        assert not torch.equal(x, x_strong)
        assert (x_strong != x).flatten(1).any(1).all()  # every image differs from its weak view
    stacked = torch.cat([b[4] for b in batches])
    assert abs(stacked.mean().item()) < 1.0 and 0.5 < stacked.std().item() < 1.5
    val = next(iter(dm.val_dataloader()))
    assert len(dm.preprocess(val, train=False)) == 3
    assert dm.train_views() == plain.train_views() and dm.train_views().count == 162
    assert "strong view" in dm.describe() and "RandAugment(2, 10)" in dm.describe()
    assert "strong view" not in plain.describe()
    # without the weak augmentation: view None, the strong view still drawn
    bare = cifar(cifar_root, strong_view=True, augment=False)
    x, y, index, view, x_strong = bare.preprocess(next(iter(bare.train_dataloader())), train=True)
    assert view is None and torch.equal(x, bare.view_inputs(bare.train_set.x[index], None))
    assert not torch.equal(x, x_strong)


def test_cifar_weak_batches_are_unchanged_by_the_strong_view(cifar_root):
    """Proves that for the same seed, over two epochs, every batch's x, y, index and view are bit for
    bit those without ``strong_view`` (the strong draws take nothing from torch's generator: its
    state after the epochs is the same too), and that the strong views follow the seed (same seed,
    same x_strong; another seed, other ones)."""
    with_strong, state_strong = epochs(cifar(cifar_root, strong_view=True), 2)
    without, state_plain = epochs(cifar(cifar_root), 2)
    assert len(with_strong) == len(without) == 6
    for a, b in zip(with_strong, without):
        assert len(a) == 5 and len(b) == 4
        for t_a, t_b in zip(a[:4], b):
            assert torch.equal(t_a, t_b)
    assert torch.equal(state_strong, state_plain)
    again, _ = epochs(cifar(cifar_root, strong_view=True), 2)
    assert all(torch.equal(a[4], b[4]) for a, b in zip(with_strong, again))
    other, _ = epochs(cifar(cifar_root, strong_view=True), 2, seed=1)
    assert not torch.equal(with_strong[0][4], other[0][4])


def test_cifar_strong_view_is_the_authors_strong_transform(cifar_root):
    """Proves that x_strong is, image by image, the authors' strong transform ``RandomCrop(32, 4)`` +
    ``RandomHorizontalFlip`` + ``RandAugment(2, 10)`` + ``ToTensor`` + ``Normalize`` on the PIL image
    (atol 1e-6), at the crop/flip views and RandAugment choices the data module drew from its strong
    generator after the weak view; and that those crop/flip views are not the weak ones."""
    dm = cifar(cifar_root, strong_view=True)
    torch.manual_seed(3)
    batch = next(iter(dm.train_dataloader()))
    x, _, index, view, x_strong = dm.preprocess(batch, train=True)
    # replay on a new module: the same weak draw, then its new strong generator's draws
    replay = cifar(cifar_root, strong_view=True)
    torch.manual_seed(3)
    assert torch.equal(next(iter(replay.train_dataloader()))[2], index)
    assert torch.equal(draw_crop_flip(len(x)), view)
    views, draw = replay.draw_strong(len(x), "cpu", replay.strong_generator("cpu"))
    assert torch.equal(replay.strong_inputs(batch[0], views, draw), x_strong)
    assert (views != view).float().mean() > 0.9  # drawn apart: equal only by chance (1 in 162)
    n = 2 * PAD + 1
    for i in range(len(x)):
        top, left, flip = int(views[i]) // (2 * n), (int(views[i]) // 2) % n, int(views[i]) % 2
        img = TF.crop(TF.pad(to_pil(batch[0][i]), PAD, fill=0), top, left, 32, 32)
        img = TF.hflip(img) if flip else img
        for k in range(2):
            img = authors_op(OPS[int(draw.ops[i, k])], img, float(draw.values[i, k]))
        img = authors_cutout(img, float(draw.cutout[i]), float(draw.cutout_x[i]), float(draw.cutout_y[i]))
        want = TF.normalize(TF.to_tensor(img), MEAN[100], STD[100])
        torch.testing.assert_close(x_strong[i], want, rtol=0, atol=1e-6)


def test_strong_views_do_not_repeat_and_resume_from_a_checkpoint(cifar_root):
    """Proves that the strong view's generator moves on from batch to batch even when the weak view
    draws nothing (no ``augment``: the same batch twice gets two strong views), that nothing of it is
    kept before a strong view is drawn (``state_dict`` empty), and that a module given another's
    ``state_dict`` (what a checkpoint keeps) and torch's generator state draws the same strong views."""
    bare = cifar(cifar_root, strong_view=True, augment=False)
    assert bare.state_dict() == {} and cifar(cifar_root).state_dict() == {}
    torch.manual_seed(0)
    batch = next(iter(bare.train_dataloader()))
    first, second = (bare.preprocess(batch, train=True) for _ in range(2))
    assert torch.equal(first[0], second[0]) and not torch.equal(first[4], second[4])
    saved, rng = bare.state_dict(), torch.get_rng_state()
    assert set(saved["strong_generators"]) == {"cpu"}
    third = bare.preprocess(batch, train=True)
    resumed = cifar(cifar_root, strong_view=True, augment=False)
    resumed.load_state_dict(saved)
    torch.set_rng_state(rng)
    again = resumed.preprocess(batch, train=True)
    assert torch.equal(again[4], third[4]) and not torch.equal(third[4], second[4])


# ---------------------------------------------------------------------------------------------
# 4. MNIST-1D
# ---------------------------------------------------------------------------------------------


def test_mnist1d_strong_view(tmp_path):
    """Proves that an MNIST-1D training batch with ``strong_view`` is ``(x, y, index, None, x_strong)``;
    that x is bit for bit the batch without it (and torch's generator ends in the same state); that
    the strong view is an edge-padded shift of the stored signal by -4..4 steps (uniform, chi-square
    p > 1e-3) when its noise is 0, and carries N(0, 0.4) noise by default; evaluation is unchanged."""
    b = 9000
    x = torch.arange(40.0).repeat(b, 1, 1)  # (b, 1, 40): distinct values, shifts recoverable
    y, idx = torch.zeros(b, dtype=torch.long), torch.arange(b)
    weak = dict(root=str(tmp_path), max_shift=2, noise_std=0.1)
    out = []
    for strong in (True, False):
        torch.manual_seed(0)
        out.append((MNIST1D(**weak, strong_view=strong).preprocess((x, y, idx), train=True), torch.get_rng_state()))
    (with_strong, state_a), (without, state_b) = out
    assert len(with_strong) == 5 and with_strong[3] is None and with_strong[2] is idx and with_strong[1] is y
    assert torch.equal(with_strong[0], without[0]) and torch.equal(state_a, state_b)
    shift_only = MNIST1D(root=str(tmp_path), strong_view=True, strong_noise_std=0.0)
    s = shift_only.strong_max_shift
    x_strong = shift_only.preprocess((x, y, idx), train=True)[4]  # (b, 1, 40)
    shift = 20 - x_strong[:, 0, 20]  # a ramp shifted by k reads 20 - k at step 20
    rebuilt = (torch.arange(40.0) - shift[:, None]).clamp(0, 39)  # edge-padded shift of the ramp
    assert s == 4 and torch.equal(rebuilt, x_strong[:, 0])
    counts = np.bincount((shift + s).long().numpy(), minlength=2 * s + 1)
    assert len(counts) == 2 * s + 1 and chisquare(counts).pvalue > ALPHA
    noisy = MNIST1D(root=str(tmp_path), strong_view=True, strong_max_shift=0)
    noise = (noisy.preprocess((x, y, idx), train=True)[4] - x).double()
    assert abs(noise.std().item() / 0.4 - 1) < 0.01 and abs(noise.mean().item()) < 0.01
    assert noisy.preprocess((x, y, idx), train=False)[0] is x
    assert "kdlab's own" in noisy.strong_view_summary()


# ---------------------------------------------------------------------------------------------
# 5. refusals and configs
# ---------------------------------------------------------------------------------------------


def test_data_without_a_strong_view_refuse_it(tmp_path):
    """Proves that digits, image folders and ImageNet refuse ``strong_view=True`` in one line naming
    the data that have one, and that MNIST-1D refuses a strong view with neither shift nor noise."""
    for folder in ("train/a", "val/a"):
        (tmp_path / folder).mkdir(parents=True)
    for make in (
        lambda: Digits(strong_view=True),
        lambda: ImageFolderData(root=str(tmp_path / "train"), strong_view=True),
        lambda: ImageNet(root=str(tmp_path), strong_view=True),
    ):
        with pytest.raises(KdlabError) as e:
            make()
        message = str(e.value)
        assert "\n" not in message and "data.strong_view=true" in message
        assert "cifar10, cifar100, mnist1d" in message
    with pytest.raises(KdlabError, match="makes no strong view") as e:
        MNIST1D(root=str(tmp_path), strong_view=True, strong_max_shift=0, strong_noise_std=0.0)
    assert "\n" not in str(e.value)
    assert Digits().strong_view is False  # and off, nothing changes


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist1d", "digits", "imagefolder", "imagenet"])
def test_data_configs_have_strong_view_off(name):
    """Proves that every data config has ``strong_view: false`` and only arguments its class takes."""
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert cfg.strong_view is False
    target = {"cifar10": CIFAR, "cifar100": CIFAR, "mnist1d": MNIST1D, "digits": Digits}.get(name)
    target = target or {"imagefolder": ImageFolderData, "imagenet": ImageNet}[name]
    assert set(cfg.keys()) - {"_target_"} <= set(inspect.signature(target).parameters)
