"""Any folder of class sub-folders (torchvision's ImageFolder layout)."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Subset

from kdlab.config import Fraction, NonNegativeInt, OpenUnit, PositiveInt, Seed
from kdlab.data.base import KDDataModule, split_indices
from kdlab.errors import KdlabError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _to_rgb(image):
    return image.convert("RGB")


def _classes(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


class ImageFolderData(KDDataModule):
    """Images under ``root/<class>/*`` or ``root/{train,val,test}/<class>/*``.

    Splits that exist as folders are used as they are; a missing test split is carved from
    train (``test_fraction``, seeded), and so is a missing val split (``val_fraction``).
    Training images get a random resized crop and flip when ``augment``; evaluation images
    are resized and centre-cropped to ``image_size``.
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
        self.image_size, self.grayscale, self.augment = image_size, grayscale, augment
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
            steps += [T.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True), T.RandomHorizontalFlip()]
        else:
            steps += [T.Resize(int(size / 0.875), antialias=True), T.CenterCrop(size)]
        return T.Compose([*steps, T.ToTensor(), T.Normalize(self.mean, self.std)])

    def build(self):
        from torchvision.datasets import ImageFolder

        train_aug = ImageFolder(str(self.train_dir), transform=self._transform(train=True))
        train_eval = ImageFolder(str(self.train_dir), transform=self._transform(train=False))
        pool = list(range(len(train_aug)))
        if (self.root / "test").is_dir():
            test = ImageFolder(str(self.root / "test"), transform=self._transform(train=False))
        else:
            keep, held = split_indices(len(pool), self.test_fraction, self.split_seed)
            test = Subset(train_eval, held.tolist())
            pool = keep.tolist()
        if (self.root / "val").is_dir():
            return (
                Subset(train_aug, pool),
                ImageFolder(str(self.root / "val"), transform=self._transform(False)),
                test,
            )
        tr, va = split_indices(len(pool), self.val_fraction, self.split_seed + 1)
        return Subset(train_aug, [pool[i] for i in tr]), Subset(train_eval, [pool[i] for i in va]), test
