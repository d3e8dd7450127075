"""Any folder of class sub-folders (torchvision's ImageFolder layout).

Images are decoded by ``read_image``: a file PIL cannot read (truncated, corrupt, not an image)
stops the run with one ``KdlabError`` line that names the file and what to do about it, in the
main process or in a DataLoader worker alike (``UnreadableImage``).

A small folder is held in memory (``ImageFolderData(in_memory=...)``): every image is decoded
once at setup into uint8 tensors, served in batches on the training device with no workers
(``InMemoryBatches``), and training batches are augmented there, per sample and vectorised over
the batch (``random_resized_crop_params``, ``resized_crops``).
"""

from __future__ import annotations

import copy
import logging
import math
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from kdlab.config import Fraction, NonNegativeInt, OpenUnit, PositiveInt, Seed
from kdlab.data.base import InMemoryBatches, KDDataModule, TensorBatches, TrainViews, WithIndex, split_indices
from kdlab.errors import KdlabError

log = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: ``in_memory=None`` holds a folder in memory when its uint8 tensors take less than this.
IN_MEMORY_LIMIT = 2 * 1024**3


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


def available_memory() -> int | None:
    """Bytes of memory the system can give this process now (psutil's ``available``, else
    ``MemAvailable`` of /proc/meminfo); None where neither can be read."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gib(n: float) -> str:
    """Bytes in GiB, MiB or KiB, whichever reads best."""
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2)):
        if n >= size / 10:
            return f"{n / size:.2f} {unit}" if unit == "GiB" else f"{n / size:.1f} {unit}"
    return f"{n / 1024:.1f} KiB"


def random_resized_crop_params(
    b: int,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    device: torch.device | str | None = None,
    attempts: int = 10,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(top, left, crop height, crop width), each (b,) int64: ``b`` independent draws of
    torchvision's ``RandomResizedCrop.get_params`` on a ``height`` x ``width`` image, vectorised.

    Per sample: up to ``attempts`` tries of an area fraction uniform in ``scale`` and an aspect
    ratio log-uniform in ``ratio``; the first try whose rounded crop fits the image is used, at a
    uniform offset; when none fits, the centre crop of the image clamped to ``ratio`` (torchvision's
    fallback). Every try is drawn at once (b x attempts), from torch's global generator on ``device``."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    target = area * torch.empty(b, attempts, device=device).uniform_(scale[0], scale[1])  # (b, attempts)
    aspect = torch.exp(torch.empty(b, attempts, device=device).uniform_(log_lo, log_hi))  # (b, attempts)
    w = torch.round(torch.sqrt(target * aspect)).long()  # (b, attempts)
    h = torch.round(torch.sqrt(target / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # (b, attempts)
    first = fits.byte().argmax(1, keepdim=True)  # (b, 1): the first try that fits (0 when none does)
    found = fits.any(1)  # (b,)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)  # (b,)
    # the fallback: the whole image, cut to the nearest allowed aspect ratio, centred
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    u = torch.rand(b, 2, device=device)  # (b, 2): the offsets, uniform over the positions that fit
    top = torch.minimum((u[:, 0] * (height - h + 1)).long(), height - h)
    left = torch.minimum((u[:, 1] * (width - w + 1)).long(), width - w)
    top = torch.where(found, top, torch.full_like(top, (height - fh) // 2))
    left = torch.where(found, left, torch.full_like(left, (width - fw) // 2))
    return top, left, h, w


def resized_crops(x: Tensor, top: Tensor, left: Tensor, height: Tensor, width: Tensor, size: int) -> Tensor:
    """The crop ``[top, top + height) x [left, left + width)`` of each image of ``x``, resized to
    ``size`` x ``size`` by bilinear sampling (``torchvision.ops.roi_align``, pixel-aligned, with as
    many samples per output pixel as the crop is larger than the output: an area average when
    shrinking, like an antialiased resize).  x: (b, c, H, W) float; crop bounds: (b,) -> (b, c, size, size)"""
    from torchvision.ops import roi_align

    b = len(x)
    boxes = torch.stack(  # (b, 5): image index, x1, y1, x2, y2 in pixel-edge coordinates
        [torch.arange(b, device=x.device), left, top, left + width, top + height], dim=1
    ).to(x.dtype)
    return roi_align(x, boxes, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def random_resized_crop_flip(x: Tensor, size: int, scale: tuple[float, float]) -> Tensor:
    """Per-sample ``RandomResizedCrop(size, scale)`` then ``RandomHorizontalFlip()`` of a batch,
    on its device: the crops (``random_resized_crop_params``), then the flips (p = 1/2), drawn from
    torch's global generator there.  x: (b, c, H, W) float -> (b, c, size, size)"""
    b, _, height, width = x.shape
    top, left, h, w = random_resized_crop_params(b, height, width, scale, device=x.device)
    out = resized_crops(x, top, left, h, w, size)  # (b, c, size, size)
    flip = torch.rand(b, device=x.device) < 0.5  # (b,)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def _decode_into(out: Tensor, paths: list[str], transform, threads: int) -> None:
    """Decode ``paths`` (``read_image``), ``transform`` each (a PIL pipeline ending in a uint8
    tensor), and write image i into ``out[i]`` (n, c, s, s), on ``threads`` threads (PIL releases
    the GIL while it decodes and resizes). The first unreadable file stops it (``UnreadableImage``)."""

    def one(i: int) -> None:
        out[i] = transform(read_image(paths[i]))

    if threads <= 1:
        for i in range(len(paths)):
            one(i)
        return
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(one, range(len(paths))):
            pass


class ImageFolderData(KDDataModule):
    """Images under ``root/<class>/*`` or ``root/{train,val,test}/<class>/*``.

    Splits that exist as folders are used as they are; a missing test split is carved from
    train (``test_fraction``, seeded), and so is a missing val split (``val_fraction``).
    Training images get a random resized crop (``crop_scale``) and flip when ``augment``;
    evaluation images are resized to ``resize_size`` (default ``image_size / 0.875``) and
    centre-cropped to ``image_size``. Loader options: ``num_workers``, ``pin_memory`` (used when
    a GPU is present), ``persistent_workers`` and ``prefetch_factor`` (with workers).

    ``in_memory``: True decodes every image once at setup and holds the splits as uint8 tensors
    (``TensorBatches``), served on the training device with no workers (``InMemoryBatches``; under
    DDP a DataLoader over them); False reads them with a DataLoader every epoch; None (default)
    holds them when they take under ``IN_MEMORY_LIMIT`` (2 GiB) and fit in the available memory.
    In memory, a training image is stored resized (shorter side ``resize_size``) and centre-cropped
    to a ``resize_size`` square, and ``preprocess`` draws the random resized crop of that square
    (torchvision's parameter distribution), resizes it to ``image_size`` and flips it on the device;
    an evaluation image is stored as it is evaluated (Resize + CenterCrop), and ``preprocess`` only
    normalises it. ``num_workers`` threads decode the images at setup.
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
        in_memory: bool | None = None,
        strong_view: bool = False,
    ):
        # strong_view=True is refused (KDDataModule): no strong view is defined for image folders
        super().__init__(batch_size, val_fraction, split_seed, num_workers, eval_batch_size, shuffle, strong_view)
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
        self.in_memory = in_memory  # what was asked for: True, False or None (decided at setup)
        self.held_in_memory = False  # what ``build`` did: the splits are uint8 tensors (``_build_in_memory``)

    def _transform(self, train: bool):
        from torchvision import transforms as T

        size = self.image_size
        steps = [T.Grayscale(1)] if self.grayscale else [T.Lambda(_to_rgb)]
        if train and self.augment:
            steps += [T.RandomResizedCrop(size, scale=self.crop_scale, antialias=True), T.RandomHorizontalFlip()]
        else:
            steps += [T.Resize(self.resize_size, antialias=True), T.CenterCrop(size)]
        return T.Compose([*steps, T.ToTensor(), T.Normalize(self.mean, self.std)])

    def _plan(self):
        """The scanned folders and the split of their samples, as ``build`` makes them: (training
        folder, its (train, val, test) indices, the val folder or None, the test folder or None);
        a split held in its own folder has indices None."""
        train_folder = image_folder(self.train_dir, None)
        pool = list(range(len(train_folder)))
        test_folder = val_folder = None
        if (self.root / "test").is_dir():
            test_folder, test_idx = image_folder(self.root / "test", None), None
        else:
            keep, held = split_indices(len(pool), self.test_fraction, self.split_seed)
            test_idx, pool = held.tolist(), keep.tolist()
        if (self.root / "val").is_dir():
            val_folder, val_idx, train_idx = image_folder(self.root / "val", None), None, pool
        else:
            tr, va = split_indices(len(pool), self.val_fraction, self.split_seed + 1)
            train_idx, val_idx = [pool[i] for i in tr], [pool[i] for i in va]
        return train_folder, (train_idx, val_idx, test_idx), val_folder, test_folder

    def _stored_transform(self, train: bool):
        """PIL image -> the uint8 tensor held in memory (c, s, s): for training (with ``augment``),
        shorter side ``resize_size`` and the centre ``resize_size`` square, which ``preprocess``
        crops at random; otherwise the evaluation view (Resize + CenterCrop to ``image_size``)."""
        from torchvision import transforms as T

        side = self.resize_size if train and self.augment else self.image_size
        first = T.Grayscale(1) if self.grayscale else T.Lambda(_to_rgb)
        return T.Compose([first, T.Resize(self.resize_size, antialias=True), T.CenterCrop(side), T.PILToTensor()])

    def _decide_in_memory(self, stored_bytes: int, images: int) -> bool:
        """Whether ``build`` holds the splits in memory (``in_memory``), said in one log line; an
        explicit ``in_memory=True`` that does not fit in the available memory is one error line."""
        free = available_memory()
        size = f"{images} images take {_gib(stored_bytes)} as uint8"
        room = f", {_gib(free)} available" if free is not None else ""
        if self.in_memory is True:
            if free is not None and stored_bytes > free:
                raise KdlabError(
                    f"data.in_memory=true: the {size} but only {_gib(free)} of memory is available; set "
                    "data.in_memory=false to read them with a DataLoader (or lower data.resize_size)"
                )
            log.info(f"{self.name}: holding images in memory (data.in_memory=true; {size}{room})")
            return True
        if self.in_memory is False:
            log.info(f"{self.name}: reading images with a DataLoader (data.in_memory=false; {size})")
            return False
        fits = stored_bytes < IN_MEMORY_LIMIT and (free is None or stored_bytes < free)
        if fits:
            log.info(
                f"{self.name}: holding images in memory (data.in_memory=null: the {size}, under "
                f"{_gib(IN_MEMORY_LIMIT)}{room}); training batches are augmented on the device"
            )
        else:
            log.info(
                f"{self.name}: reading images with a DataLoader (data.in_memory=null: the {size}, over "
                f"{_gib(IN_MEMORY_LIMIT)} or the memory available{room}); set data.in_memory=true to hold them"
            )
        return fits

    def build(self):
        plan = self._plan()
        train_folder, (train_idx, _, _), val_folder, test_folder = plan
        if self.in_memory is not False:
            c, s, side = self.input_shape[0], self.image_size, self.resize_size if self.augment else self.image_size
            evaluated = (
                len(train_folder) - len(train_idx) + sum(len(f) for f in (val_folder, test_folder) if f is not None)
            )
            stored = len(train_idx) * c * side * side + evaluated * c * s * s  # bytes of the uint8 tensors
            if self._decide_in_memory(stored, len(train_idx) + evaluated):
                return self._build_in_memory(*plan)
        return self._build_loaded(*plan)

    def _build_in_memory(self, train_folder, indices, val_folder, test_folder):
        """(train, val, test) as ``TensorBatches`` of uint8 images, every file decoded once here
        (``_stored_transform``), in the order and split of the DataLoader path (``_build_loaded``)."""
        threads = max(1, self.num_workers)
        splits = []
        for i, (idx, folder) in enumerate(zip(indices, (None, val_folder, test_folder))):
            samples = folder.samples if folder is not None else [train_folder.samples[j] for j in idx]
            side = self.resize_size if i == 0 and self.augment else self.image_size
            x = torch.empty(len(samples), self.input_shape[0], side, side, dtype=torch.uint8)  # (n, c, s, s)
            _decode_into(x, [path for path, _ in samples], self._stored_transform(train=i == 0), threads)
            y = torch.as_tensor([target for _, target in samples], dtype=torch.long)  # (n,)
            splits.append(TensorBatches(x, y))
        self.held_in_memory = True
        return tuple(splits)

    def _build_loaded(self, train_folder, indices, val_folder, test_folder):
        """(train, val, test) read by a DataLoader: files decoded and transformed per sample, every epoch."""
        train_idx, val_idx, test_idx = indices
        train_aug = with_transform(train_folder, self._transform(train=True))
        train_eval = with_transform(train_folder, self._transform(train=False))
        val = (
            with_transform(val_folder, self._transform(False))
            if val_folder is not None
            else Subset(train_eval, val_idx)
        )
        test = (
            with_transform(test_folder, self._transform(False))
            if test_folder is not None
            else Subset(train_eval, test_idx)
        )
        return Subset(train_aug, train_idx), val, test

    def preprocess(self, batch, train: bool):
        """Device-side transform of an in-memory batch ``(x, y, ...)`` of uint8 images (a
        DataLoader's batch is served transformed, as it is): scaled to [0, 1], a training batch
        (with ``augment``) cropped, resized and flipped at random (``random_resized_crop_flip``),
        then normalised with ``mean`` / ``std``. A training-split batch evaluated (``train=False``)
        is its stored square's centre ``image_size`` crop: the evaluation view to within a pixel."""
        if not self.held_in_memory:
            return batch
        x, y, *rest = batch
        x = x.float() / 255  # (b, c, s, s)
        size = self.image_size
        if train and self.augment:
            x = random_resized_crop_flip(x, size, self.crop_scale)  # (b, c, size, size)
        elif x.shape[-1] != size:
            top = int(round((x.shape[-2] - size) / 2.0))  # torchvision's CenterCrop offsets
            left = int(round((x.shape[-1] - size) / 2.0))
            x = x[..., top : top + size, left : left + size]
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return ((x - mean) / std, y, *rest)

    def train_views(self) -> TrainViews:
        """In memory: random resized crops cannot be enumerated (no views) with ``augment``; without
        it the stored images are the training inputs up to normalisation (one view). Read by a
        DataLoader: no views (``KDDataModule.train_views``)."""
        self.setup()
        if not self.held_in_memory:
            return super().train_views()
        if self.augment:
            return TrainViews(None, reason=f"{self.name}'s random resized crops cannot be enumerated")
        return TrainViews(1)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader | InMemoryBatches:
        """In memory: the split's batches sliced on the training device (``InMemoryBatches``), or under
        DDP a DataLoader over its tensors (``KDDataModule._loader``). Otherwise batches ``(x, y, index)``
        decoded by ``num_workers`` processes, kept alive between epochs (``persistent_workers``),
        ``prefetch_factor`` batches ahead each, into pinned memory when a GPU is present (``pin_memory``)."""
        if isinstance(dataset, TensorBatches):
            if self.one_process():
                return InMemoryBatches(dataset, batch_size, shuffle, self.device())
            return super()._loader(dataset, batch_size, shuffle)
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
