"""CIFAR-10 / CIFAR-100 from the standard python-pickle on-disk format, held in memory as uint8
and augmented per batch on the device (the same code path on CPU and GPU)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.config import Fraction, NonNegativeInt, PositiveInt, Seed
from kdlab.data.base import KDDataModule, TensorBatches, TrainViews, split_indices
from kdlab.data.strong import RandAugmentDraw, draw_rand_augment, rand_augment
from kdlab.errors import KdlabError

# torchvision's layout of the extracted archives: folder, train files, test files, label key.
LAYOUT = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    100: ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}
# CIFAR-100: the CRD / DKD references' values (RepDistiller dataset/cifar100.py, mdistiller
# mdistiller/dataset/cifar100.py), so that their published teachers see the inputs they were trained on
MEAN = {10: (0.4914, 0.4822, 0.4465), 100: (0.5071, 0.4867, 0.4408)}
STD = {10: (0.2470, 0.2435, 0.2616), 100: (0.2675, 0.2565, 0.2761)}


class _ArraysOnly(pickle.Unpickler):
    """Unpickles CIFAR batch files but refuses any global other than numpy's array rebuilders,
    so a tampered file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batches(files: list[Path], label_key: str, classes: int | None = None) -> tuple[Tensor, Tensor]:
    """(uint8 images (n, 3, 32, 32), int64 labels (n,)) from CIFAR python batch files; a file whose
    labels are not one per image, or not in 0..``classes - 1``, is refused in one line."""
    xs, ys = [], []
    for f in files:
        fix = "delete it and run with data.download=true"
        try:
            with open(f, "rb") as fh:
                entry = _ArraysOnly(fh, encoding="latin1").load()
            x = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(entry[label_key])
        except (OSError, pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError, IndexError) as e:
            raise KdlabError(f"cannot read CIFAR file {f} ({type(e).__name__}: {e}); {fix}") from e
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise KdlabError(f"CIFAR file {f} has {len(x)} images but labels of shape {y.shape} ({y.dtype}); {fix}")
        if classes is not None and ((y < 0) | (y >= classes)).any():
            bad = ", ".join(str(v) for v in np.unique(y[(y < 0) | (y >= classes)])[:3])
            raise KdlabError(f"CIFAR file {f} has labels outside 0..{classes - 1} ({bad}); {fix}")
        xs.append(x)
        ys.append(y)
    return torch.from_numpy(np.concatenate(xs)), torch.as_tensor(np.concatenate(ys), dtype=torch.long)


#: The standard CIFAR augmentation: a crop of the image zero-padded by PAD pixels, at one of
#: (2 PAD + 1)^2 offsets, mirrored or not: 9 x 9 x 2 = 162 views per image.
PAD = 4
CROP_FLIP_VIEWS = (2 * PAD + 1) ** 2 * 2


def draw_crop_flip(
    b: int, pad: int = PAD, device: torch.device | str | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """Random views of the padded crop + flip for ``b`` images, as view ids (``crop_flip``): the
    top offset, the left offset (each uniform in 0..2 pad) and the flip (probability 1/2), drawn
    in that order with the same calls as before the views were made explicit, so a seed gives
    the same crops and flips as it did; from ``generator`` (default: torch's on ``device``)."""
    n = 2 * pad + 1
    top = torch.randint(0, n, (b, 1), device=device, generator=generator)
    left = torch.randint(0, n, (b, 1), device=device, generator=generator)
    flip = torch.rand(b, 1, device=device, generator=generator) < 0.5
    return ((top * n + left) * 2 + flip.long()).view(b)


def crop_flip(x: Tensor, views: Tensor, pad: int = PAD) -> Tensor:
    """View ``views[i]`` of each image of the batch: view = (dy (2 pad + 1) + dx) 2 + flip is the
    crop of the zero-padded image at offset (dy, dx), mirrored when flip is 1.  x: (b, c, h, w), any
    dtype (uint8 images are cropped before they are converted: 4x less to move)"""
    b, c, h, w = x.shape
    dev, n = x.device, 2 * pad + 1
    views = views.to(dev)
    dy, dx, flip = views // (2 * n), (views // 2) % n, (views % 2).bool()
    padded = F.pad(x, (pad, pad, pad, pad))  # (b, c, h+2p, w+2p)
    rows = dy[:, None] + torch.arange(h, device=dev)  # (b, h)
    cols = dx[:, None] + torch.arange(w, device=dev)  # (b, w)
    cols = torch.where(flip[:, None], cols.flip(-1), cols)  # reading columns backwards = horizontal flip
    # two gathers along one axis each (rows, then columns) with broadcast indices
    strip = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))  # (b, c, h, w+2p)
    return strip.gather(3, cols[:, None, None, :].expand(b, c, h, w))  # (b, c, h, w)


def random_crop_flip(x: Tensor, pad: int = PAD) -> Tensor:
    """Per-sample random crop of the zero-padded batch and random horizontal flip.  x: (b, c, h, w)"""
    return crop_flip(x, draw_crop_flip(len(x), pad, x.device), pad)


class CIFAR(KDDataModule):
    """CIFAR-10 / CIFAR-100 (Krizhevsky, 2009): 50000 train / 10000 test 32x32 colour images.

    Reads torchvision's extracted layout under ``root``; downloads only with ``download=True``.
    Training batches get the standard augmentation (4-pixel padded random crop + flip), drawn as
    one of 162 view ids per image that the batch carries, ``(x, y, index, view)``, so the
    teacher-output cache can store a row per (image, view); all batches are normalised with the
    dataset's channel mean/std.

    ``strong_view``: training batches are ``(x, y, index, view, x_strong)`` (``view`` None without
    ``augment``), ``x_strong`` the strong view of MLKD's authors (Jin et al., CVPR 2023; their
    ``get_cifar100_train_transform_strong``): a padded crop + flip of its own (their ``MultipleApply``
    runs the weak and the strong transform apart on the stored image), then their ``RandAugment(2,
    10)`` with its Cutout (``kdlab.data.strong``), normalised like ``x``; with or without ``augment``.
    Its draws (``draw_strong``) follow the weak view's, from their own generator
    (``KDDataModule.strong_generator``): the weak views are those drawn without the strong view.
    """

    makes_strong_view = True

    def __init__(
        self,
        classes: Literal[10, 100] = 100,
        root: str = "data",
        download: bool = False,
        augment: bool = True,
        batch_size: PositiveInt = 64,
        val_fraction: Fraction = 0.1,
        split_seed: Seed = 0,
        num_workers: NonNegativeInt = 0,
        eval_batch_size: PositiveInt | None = None,
        shuffle: bool = True,
        strong_view: bool = False,
    ):
        super().__init__(batch_size, val_fraction, split_seed, num_workers, eval_batch_size, shuffle, strong_view)
        if classes not in LAYOUT:
            raise KdlabError(f"CIFAR has 10 or 100 classes, got classes={classes}")
        self.name = f"cifar{classes}"
        self.classes, self.root, self.download, self.augment = classes, Path(root), download, augment
        self.num_classes, self.input_shape = classes, (3, 32, 32)

    def prepare_data(self) -> None:
        if self.download:
            from torchvision.datasets import CIFAR10, CIFAR100

            (CIFAR10 if self.classes == 10 else CIFAR100)(str(self.root), download=True)

    def build(self):
        self.prepare_data()
        folder, train_files, test_files, label_key = LAYOUT[self.classes]
        base = self.root / folder
        missing = [f for f in train_files + test_files if not (base / f).exists()]
        if missing:
            raise KdlabError(
                f"CIFAR-{self.classes} not found under {base} (missing {', '.join(missing)}); "
                f"run once with data.download=true (needs internet) or point data.root at the folder holding {folder}/"
            )
        x, y = read_cifar_batches([base / f for f in train_files], label_key, self.classes)
        x_test, y_test = read_cifar_batches([base / f for f in test_files], label_key, self.classes)
        tr, va = split_indices(len(y), self.val_fraction, self.split_seed)
        return TensorBatches(x[tr], y[tr]), TensorBatches(x[va], y[va]), TensorBatches(x_test, y_test)

    def preprocess(self, batch, train: bool):
        x, y, *rest = batch
        index = rest[0] if rest else None
        if train and self.augment:  # (x, y, index, view): the view each image was drawn in
            views = draw_crop_flip(len(x), PAD, x.device)
            out = (self.view_inputs(x, views), y, index, views)
        elif train and self.strong_view:
            out = (self.view_inputs(x, None), y, index, None)
        else:
            return (self.view_inputs(x, None), y, *rest)
        if self.strong_view:  # drawn after the weak view, from the strong view's own generator
            draws = self.draw_strong(len(x), x.device, self.strong_generator(x.device))
            out = (*out, self.strong_inputs(x, *draws))
        return out

    def draw_strong(
        self, b: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, RandAugmentDraw]:
        """The random choices of ``b`` strong views, from ``generator``: their crop + flip view ids
        (``draw_crop_flip``), then their RandAugment (``draw_rand_augment``)."""
        views = draw_crop_flip(b, PAD, device, generator)
        return views, draw_rand_augment(b, *self.input_shape[1:], device=device, generator=generator)

    def strong_inputs(self, x: Tensor, views: Tensor, draw: RandAugmentDraw) -> Tensor:
        """The strong view of stored uint8 images ``x`` (b, 3, 32, 32) with the choices ``draw_strong``
        made: cropped and flipped (``views``), RandAugment-ed (``draw``), scaled and normalised."""
        return self.view_inputs(rand_augment(crop_flip(x, views, PAD), draw), None)

    def strong_view_summary(self) -> str:
        return "a strong view (its own crop + flip, then the MLKD authors' RandAugment(2, 10) + Cutout)"

    def train_views(self) -> TrainViews:
        if not self.augment:
            return TrainViews(1)
        n = 2 * PAD + 1
        return TrainViews(CROP_FLIP_VIEWS, f"pad{PAD}-crop{n}x{n}-flip2")

    def view_inputs(self, x: Tensor, views: Tensor | None) -> Tensor:
        """Stored uint8 images ``x`` in ``views`` (None: as they are), scaled to [0, 1] and normalised."""
        if views is not None:
            x = crop_flip(x, views, PAD)  # on the stored uint8: the same pixels as cropping after the scaling
        x = x.float() / 255
        mean = torch.tensor(MEAN[self.classes], device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(STD[self.classes], device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


def write_fake_cifar(
    root: str | Path, classes: Literal[10, 100] = 100, n_train: int = 500, n_test: int = 100, seed: int = 0
) -> Path:
    """Random images in CIFAR's real on-disk format (same files, keys, dtypes and pickling), for tests
    and GPU benchmarks that must not download. Returns the dataset folder."""
    folder, train_files, test_files, label_key = LAYOUT[classes]
    base = Path(root) / folder
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for files, n in ((train_files, n_train), (test_files, n_test)):
        for i, name in enumerate(files):
            m = n // len(files) + (1 if i < n % len(files) else 0)
            entry = {
                "batch_label": name,
                label_key: rng.integers(0, classes, m).tolist(),
                "data": rng.integers(0, 256, (m, 3072), dtype=np.uint8),
                "filenames": [f"fake_{name}_{j}.png" for j in range(m)],
            }
            if classes == 100:
                entry["coarse_labels"] = [y // 5 for y in entry[label_key]]
            with open(base / name, "wb") as f:
                pickle.dump(entry, f, protocol=2)
    meta = {10: ("batches.meta", "label_names"), 100: ("meta", "fine_label_names")}[classes]
    with open(base / meta[0], "wb") as f:
        pickle.dump({meta[1]: [f"class_{i}" for i in range(classes)]}, f, protocol=2)
    return base
