"""Any folder of class sub-folders (torchvision's ImageFolder layout).

Images are decoded by ``read_image``: a file PIL cannot read (truncated, corrupt, not an image)
stops the run with one ``KdlabError`` line that names the file and what to do about it, in the
main process or in a DataLoader worker alike (``UnreadableImage``).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from kdlab.config import Fraction, NonNegativeInt, OpenUnit, PositiveInt, Seed
from kdlab.data.base import KDDataModule, WithIndex, split_indices
from kdlab.errors import KdlabError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class UnreadableImage(KdlabError):
    """An image file PIL cannot decode. A DataLoader worker's exception comes back to the main
    process as ``type(e)(<the worker's traceback as text>)``; this class keeps only the line it was
    raised with, so the error stays one line whichever process read the file."""

    def __init__(self, message: str):
        lines = str(message).strip().splitlines()
        if len(lines) > 1 and lines[0].startswith("Caught "):  # torch's ExceptionWrapper.reraise
            # the traceback's last line: "kdlab.data.imagefolder.UnreadableImage: <the message>"
            own = re.compile(rf"^(?:[\w.]+\.)?{type(self).__name__}: ")
            message = next((own.sub("", line) for line in reversed(lines) if own.match(line)), lines[-1])
        super().__init__(message)


def read_image(path: str):
    """The image at ``path`` as an RGB PIL image, decoded now (PIL decodes lazily: a truncated file
    would otherwise fail later, inside a transform). Any failure is one ``UnreadableImage`` line."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")
    except Exception as e:  # OSError (truncated, unidentified), SyntaxError (broken PNG), zlib errors, ...
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UnreadableImage(
            f"cannot read image {path} ({type(e).__name__}: {reason}); the file is corrupt or not an image: "
            "replace it with a good copy (or delete it) and run again"
        ) from None


def _to_rgb(image):
    return image.convert("RGB")


def _classes(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def image_folder(folder: Path, transform):
    """torchvision's ``ImageFolder`` over ``folder`` read with ``read_image``; a folder without any
    image is one ``KdlabError`` line."""
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(folder), transform=transform, loader=read_image)
    except (FileNotFoundError, OSError) as e:
        reason = str(e).strip().splitlines()[0][:200]
        raise KdlabError(f"no images found in {folder} ({reason}); expected {folder}/<class>/<image>") from e


def with_transform(dataset, transform):
    """The same samples under another transform (no second scan of the folder)."""
    other = copy.copy(dataset)
    other.transform = transform
    return other


class ImageFolderData(KDDataModule):
    """Images under ``root/<class>/*`` or ``root/{train,val,test}/<class>/*``.

    Splits that exist as folders are used as they are; a missing test split is carved from
    train (``test_fraction``, seeded), and so is a missing val split (``val_fraction``).
    Training images get a random resized crop (``crop_scale``) and flip when ``augment``;
    evaluation images are resized to ``resize_size`` (default ``image_size / 0.875``) and
    centre-cropped to ``image_size``. Loader options: ``num_workers``, ``pin_memory`` (used when
    a GPU is present), ``persistent_workers`` and ``prefetch_factor`` (with workers).
    """

    name = "imagefolder"

    def __init__(
        self,
        root: str,
        image_size: PositiveInt = 32,
        grayscale: bool = False,
        augment: bool = True,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        test_fraction: OpenUnit = 0.2,
        batch_size: PositiveInt = 64,
        val_fraction: Fraction = 0.1,
        split_seed: Seed = 0,
        num_workers: NonNegativeInt = 2,
        eval_batch_size: PositiveInt | None = None,
        shuffle: bool = True,
        resize_size: PositiveInt | None = None,
        crop_scale: tuple[float, float] = (0.35, 1.0),
        pin_memory: bool = True,
        persistent_workers: bool = True,
        prefetch_factor: PositiveInt | None = None,
    ):
        super().__init__(batch_size, val_fraction, split_seed, num_workers, eval_batch_size, shuffle)
        self.root = Path(root)
        if not self.root.is_dir():
            raise KdlabError(f"image folder {self.root} does not exist; set data.root=<folder of class sub-folders>")
        self.train_dir = self.root / "train" if (self.root / "train").is_dir() else self.root
        self.classes = _classes(self.train_dir)
        if not self.classes:
            raise KdlabError(f"no class sub-folders in {self.train_dir}; expected {self.train_dir}/<class>/<image>")
        for split in ("val", "test"):
            if (self.root / split).is_dir() and _classes(self.root / split) != self.classes:
                raise KdlabError(
                    f"{self.root / split} has classes {_classes(self.root / split)}, train has {self.classes}"
                )
        if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise KdlabError(f"data.crop_scale must be [min, max] with 0 < min <= max <= 1, got {list(crop_scale)}")
        self.image_size, self.grayscale, self.augment = image_size, grayscale, augment
        self.resize_size = resize_size or int(image_size / 0.875)
        if self.resize_size < image_size:
            raise KdlabError(
                f"data.resize_size={self.resize_size} is smaller than data.image_size={image_size}: the centre "
                "crop needs a resized image at least as large; raise data.resize_size"
            )
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.pin_memory, self.persistent_workers, self.prefetch_factor = pin_memory, persistent_workers, prefetch_factor
        self.mean, self.std = (tuple(mean)[:1], tuple(std)[:1]) if grayscale else (tuple(mean), tuple(std))
        self.test_fraction = test_fraction
        self.num_classes, self.input_shape = (
            len(self.classes),
            (1 if grayscale else 3, image_size, image_size),
        )

    def _transform(self, train: bool):
        from torchvision import transforms as T

        size = self.image_size
        steps = [T.Grayscale(1)] if self.grayscale else [T.Lambda(_to_rgb)]
        if train and self.augment:
            steps += [T.RandomResizedCrop(size, scale=self.crop_scale, antialias=True), T.RandomHorizontalFlip()]
        else:
            steps += [T.Resize(self.resize_size, antialias=True), T.CenterCrop(size)]
        return T.Compose([*steps, T.ToTensor(), T.Normalize(self.mean, self.std)])

    def build(self):
        train_aug = image_folder(self.train_dir, self._transform(train=True))
        train_eval = with_transform(train_aug, self._transform(train=False))
        pool = list(range(len(train_aug)))
        if (self.root / "test").is_dir():
            test = image_folder(self.root / "test", self._transform(train=False))
        else:
            keep, held = split_indices(len(pool), self.test_fraction, self.split_seed)
            test = Subset(train_eval, held.tolist())
            pool = keep.tolist()
        if (self.root / "val").is_dir():
            return Subset(train_aug, pool), image_folder(self.root / "val", self._transform(False)), test
        tr, va = split_indices(len(pool), self.val_fraction, self.split_seed + 1)
        return Subset(train_aug, [pool[i] for i in tr]), Subset(train_eval, [pool[i] for i in va]), test

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        """Batches ``(x, y, index)`` decoded by ``num_workers`` processes, kept alive between epochs
        (``persistent_workers``), ``prefetch_factor`` batches ahead each, into pinned memory when a
        GPU is present (``pin_memory``)."""
        workers = self.num_workers > 0
        return DataLoader(
            dataset if isinstance(dataset, WithIndex) else WithIndex(dataset),
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and workers,
            prefetch_factor=self.prefetch_factor if workers else None,
        )
