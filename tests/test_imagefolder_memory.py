"""``ImageFolderData(in_memory=...)``: a small image folder decoded once into uint8 tensors, served on
the training device, and augmented per batch there with torchvision's random-resized-crop
distribution; evaluation inputs equal to the DataLoader path's; the choice of path; errors.

The fake folder: 3 classes x 6 PNG images of 40x30 pixels (``image_size=16``, so ``resize_size=18``:
training images are held as 18x18 squares, evaluation images as 16x16 crops)."""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.stats import ks_2samp

from kdlab.data import ImageFolderData, ImageNet
from kdlab.data import imagefolder as imf
from kdlab.data.base import InMemoryBatches, TensorBatches
from kdlab.data.imagefolder import (
    UnreadableImage,
    random_resized_crop_flip,
    random_resized_crop_params,
    resized_crops,
)
from kdlab.errors import KdlabError

CLASSES = ("cat", "dog", "eel")


def write_images(folder, per_class=6, size=(30, 40), seed=0):
    """``folder/<class>/<i>.png`` for 3 classes: random RGB images of ``size`` (height, width)."""
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        (folder / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / c / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("imgmem") / "flat")


def data(root, **kw):
    return ImageFolderData(root=str(root), **{"image_size": 16, "batch_size": 4, "num_workers": 0, **kw})


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and "Traceback" not in text, text
    return text


def unnormalised(x, dm):
    mean = torch.tensor(dm.mean).view(1, -1, 1, 1)
    std = torch.tensor(dm.std).view(1, -1, 1, 1)
    return x * std + mean


# ------------------------------------------------------------------------------------ the module


def test_in_memory_batches_are_uint8_on_the_device_and_preprocess_makes_the_inputs(flat):
    dm = data(flat, in_memory=True)
    dm.setup()
    assert dm.held_in_memory and all(isinstance(s, TensorBatches) for s in (dm.train_set, dm.val_set, dm.test_set))
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 18
    assert dm.train_set.x.shape == (len(dm.train_set), 3, 18, 18) and dm.train_set.x.dtype == torch.uint8
    assert dm.test_set.x.shape == (len(dm.test_set), 3, 16, 16)  # stored as evaluated
    loader = dm.train_dataloader()
    assert isinstance(loader, InMemoryBatches)  # no workers, no DataLoader
    torch.manual_seed(0)
    x, y, idx = next(iter(loader))
    assert x.shape == (4, 3, 18, 18) and x.dtype == torch.uint8 and y.dtype == torch.long and idx.shape == (4,)
    assert torch.equal(dm.train_set.x[idx], x) and torch.equal(dm.train_set.y[idx], y)
    xt, yt, it = dm.preprocess((x, y, idx), train=True)
    assert xt.shape == (4, 3, 16, 16) and xt.dtype == torch.float32 and torch.equal(yt, y) and torch.equal(it, idx)
    pixels = unnormalised(xt, dm)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5 and pixels.std() > 0.02
    a = dm.preprocess((x, y, idx), train=True)[0]
    assert not torch.allclose(a, xt)  # a fresh random crop per call
    xe, *_ = dm.preprocess(next(iter(dm.test_dataloader())), train=False)
    assert xe.shape[1:] == (3, 16, 16) and xe.dtype == torch.float32
    views = dm.train_views()
    assert views.count is None and "random resized crops" in views.reason
    assert data(flat, in_memory=True, augment=False).train_views().count == 1  # stored = trained on


@pytest.mark.parametrize("grayscale", [False, True])
def test_evaluation_inputs_equal_the_dataloader_paths(flat, grayscale):
    memory, loaded = data(flat, in_memory=True, grayscale=grayscale), data(flat, in_memory=False, grayscale=grayscale)
    memory.setup(), loaded.setup()
    assert not loaded.held_in_memory and not isinstance(loaded.train_set, TensorBatches)
    c = 1 if grayscale else 3
    tol = 1 / 255 + 1e-5
    for split in ("val_set", "test_set"):
        m, d = getattr(memory, split), getattr(loaded, split)
        x, y, _ = memory.preprocess((m.x, m.y, torch.arange(len(m))), train=False)
        expected = torch.stack([d[i][0] for i in range(len(d))])
        assert x.shape == expected.shape == (len(d), c, 16, 16)
        assert torch.equal(y, torch.as_tensor([d[i][1] for i in range(len(d))]))
        assert (x - expected).abs().max() <= tol
    # a training-split batch evaluated: its stored square's centre crop, the evaluation view
    evaluated = imf.with_transform(loaded.train_set.dataset, loaded._transform(train=False))
    idx = loaded.train_set.indices
    expected = torch.stack([evaluated[i][0] for i in idx])
    x = memory.preprocess((memory.train_set.x, memory.train_set.y), train=False)[0]
    assert (x - expected).abs().max() <= tol
    assert torch.equal(memory.train_set.y, torch.as_tensor([evaluated.targets[i] for i in idx]))


# ------------------------------------------------------------------------------------ the augmentation


def _torchvision_draws(n, height, width, scale, ratio=(3 / 4, 4 / 3)):
    from torchvision.transforms import RandomResizedCrop

    image = torch.empty(1, height, width)
    torch.manual_seed(1)
    return torch.tensor([RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(n)]).T


@pytest.mark.parametrize(
    ("height", "width", "scale"),
    [(18, 18, (0.35, 1.0)), (64, 64, (0.08, 1.0)), (20, 60, (0.3, 1.0))],  # the last falls back often
)
def test_crop_parameters_follow_torchvisions_distribution(height, width, scale):
    n = 4000
    torch.manual_seed(0)
    mine = torch.stack(random_resized_crop_params(n, height, width, scale))  # (4, n): top, left, h, w
    theirs = _torchvision_draws(n, height, width, scale)
    for draws in (mine, theirs):
        top, left, h, w = draws
        assert (h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all()
        assert (top + h <= height).all() and (left + w <= width).all()

    def stats(d):
        top, left, h, w = d.double()
        offset_y = (top + 0.5) / (height - h + 1)  # where in its range of positions the crop sits
        offset_x = (left + 0.5) / (width - w + 1)
        return (h * w / (height * width), torch.log(w / h), offset_y, offset_x)

    for name, a, b in zip(("area", "log ratio", "top", "left"), stats(mine), stats(theirs)):
        p = ks_2samp(a.numpy(), b.numpy()).pvalue
        assert p > 1e-3, f"{name}: KS p = {p:.2g}"
    if width > height * 4 / 3:  # a share of the draws are torchvision's centre fallback (h=20, w=27)
        fallback = torch.tensor([(height - 20) // 2, (width - 27) // 2, 20, 27])[:, None]
        share = [(d == fallback).all(0).double().mean().item() for d in (mine, theirs)]
        assert 0.02 < share[1] and abs(share[0] - share[1]) < 4 * math.sqrt(share[1] * (1 - share[1]) / n)


def test_when_no_try_fits_the_crop_is_torchvisions_centre_fallback():
    torch.manual_seed(0)
    top, left, h, w = random_resized_crop_params(500, 10, 100, scale=(0.9, 1.0))  # 10x100: no crop of 90% fits
    assert (h == 10).all() and (w == round(10 * 4 / 3)).all() and (top == 0).all() and (left == (100 - 13) // 2).all()
    assert tuple(_torchvision_draws(5, 10, 100, (0.9, 1.0))[:, 0].tolist()) == (0, 43, 10, 13)
    top, left, h, w = random_resized_crop_params(50, 100, 10, scale=(0.9, 1.0))  # tall: width kept, ratio 3/4
    assert (w == 10).all() and (h == round(10 / (3 / 4))).all() and (top == (100 - 13) // 2).all()
    top, left, h, w = random_resized_crop_params(50, 30, 30, scale=(1.0, 1.0), ratio=(2.0, 3.0))  # wider only
    assert (w == 30).all() and (h == 15).all() and (top == 7).all() and (left == 0).all()
    assert tuple(_torchvision_draws(5, 30, 30, (1.0, 1.0), (2.0, 3.0))[:, 0].tolist()) == (7, 0, 15, 30)


def test_a_full_crop_resized_to_its_size_is_the_image_and_a_half_size_one_its_average():
    torch.manual_seed(0)
    x = torch.rand(3, 2, 18, 18)
    top, left, h, w = random_resized_crop_params(3, 18, 18, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert (top == 0).all() and (left == 0).all() and (h == 18).all() and (w == 18).all()
    assert torch.allclose(resized_crops(x, top, left, h, w, 18), x, atol=1e-6)
    assert torch.allclose(resized_crops(x, top, left, h, w, 9), F.avg_pool2d(x, 2), atol=1e-6)
    t, c = torch.tensor([2, 0, 5]), torch.tensor([3, 7, 0])  # crops the size of the output: cut out as they are
    out = resized_crops(x, t, c, torch.full((3,), 8), torch.full((3,), 8), 8)
    for i in range(3):
        assert torch.allclose(out[i], x[i, :, t[i] : t[i] + 8, c[i] : c[i] + 8], atol=1e-6)


def test_the_flip_mirrors_about_half_of_the_batch():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 12, 12)
    out = random_resized_crop_flip(x, 12, scale=(1.0, 1.0))  # a square at scale 1: the whole image
    same = torch.isclose(out, x, atol=1e-6).flatten(1).all(1)
    mirrored = torch.isclose(out, x.flip(-1), atol=1e-6).flatten(1).all(1)
    assert (same ^ mirrored).all() and 16 < mirrored.sum() < 48


# ------------------------------------------------------------------------------------ the choice, errors


def test_in_memory_none_holds_a_small_folder_and_says_why(flat, caplog, monkeypatch):
    with caplog.at_level(logging.INFO, logger="kdlab"):
        dm = data(flat)
        dm.setup()
    assert dm.in_memory is None and dm.held_in_memory and isinstance(dm.train_set, TensorBatches)
    assert re.search(
        r"holding images in memory \(data\.in_memory=null: the 18 images take .* under 2\.00 GiB", caplog.text
    )
    monkeypatch.setattr(imf, "IN_MEMORY_LIMIT", 1000)  # a "large" folder
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kdlab"):
        dm = data(flat)
        dm.setup()
    assert not dm.held_in_memory and not isinstance(dm.train_set, TensorBatches)
    assert "reading images with a DataLoader (data.in_memory=null" in caplog.text
    assert dm.preprocess((torch.zeros(2, 3, 16, 16), torch.zeros(2)), train=True)[0].abs().sum() == 0  # as served


def test_in_memory_true_without_the_memory_is_one_line_naming_the_fix(flat, monkeypatch):
    monkeypatch.setattr(imf, "available_memory", lambda: 10_000)
    with pytest.raises(KdlabError, match=r"data\.in_memory=true: the 18 images take .* only .* available") as e:
        data(flat, in_memory=True).setup()
    assert "set data.in_memory=false" in one_line(e)
    data(flat).setup()  # in_memory=None: the DataLoader instead, no error


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_image_fails_in_one_line_in_memory_too(tmp_path, workers):
    root = write_images(tmp_path / "flat", per_class=2)
    bad = root / "dog" / "broken.png"
    content = (root / "dog" / "0.png").read_bytes()
    bad.write_bytes(content[: len(content) // 2])
    dm = data(root, in_memory=True, num_workers=workers)
    with pytest.raises(UnreadableImage, match=re.escape(f"cannot read image {bad} (")) as e:
        dm.setup()
    assert "replace it with a good copy (or delete it)" in one_line(e)


def test_imagenet_keeps_its_dataloader(tmp_path):
    root = tmp_path / "imagenet"
    write_images(root / "train", per_class=2)
    write_images(root / "val", per_class=1)
    dm = ImageNet(root=str(root), image_size=16, resize_size=18, batch_size=4, num_workers=0)
    dm.setup()
    assert not dm.held_in_memory and not isinstance(dm.train_set, TensorBatches)
    x, *_ = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.float32 and x.shape == (4, 3, 16, 16)
    assert dm.preprocess((x, torch.zeros(4)), train=True)[0] is x


# ------------------------------------------------------------------------------------ end to end


def test_a_run_trains_on_an_in_memory_folder(train, flat, caplog):
    with caplog.at_level(logging.INFO, logger="kdlab"):
        r = train(
            [
                "data=imagefolder",
                f"data.root={flat}",
                "data.image_size=16",
                "data.in_memory=true",
                "data.num_workers=0",
                "data.batch_size=4",
                "student=cnn_tiny",
                "method=none",
            ]
        )
    assert re.search(
        r"imagefolder: holding images in memory \(data\.in_memory=true; 18 images take 16\.1 KiB", caplog.text
    )
    assert r["data"] == "imagefolder" and r["student"]["arch"] == "cnn_tiny"
    assert 0.0 <= r["student"]["test_acc"] <= 1.0 and r["student"]["params"] > 0
