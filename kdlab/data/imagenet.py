"""ImageNet-1k (ILSVRC 2012) as an image folder in the standard layout, with the standard augmentation.

``root/train/<wnid>/*.JPEG`` (1,281,167 images) and ``root/val/<wnid>/*.JPEG`` (50,000, sorted into
the same 1000 class folders). The reference protocol of the ImageNet distillation benchmarks (CRD,
DKD / mdistiller ``mdistiller/dataset/imagenet.py``, ReviewKD, DIST): train on all of ``train/``,
evaluate on ``val/``, and report the best and the last ``val/`` accuracy. In kdlab, ``val/`` is the
held-out *test* split, and ``val_fraction=0`` (the default here) validates on it, as
``KDDataModule.validates_on_test`` says; ``val_fraction>0`` carves a seeded validation split out of
``train/`` instead (model selection that never sees ``val/``).

Training images: ``RandomResizedCrop(image_size)`` (scale 0.08-1, torchvision's default) and a
horizontal flip; evaluation images: ``Resize(resize_size)`` then ``CenterCrop(image_size)`` (256 and
224); both normalised with the ImageNet mean and std. The class count is read from the folder.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Subset

from kdlab.config import Fraction, NonNegativeInt, PositiveInt, Seed
from kdlab.data.base import split_indices
from kdlab.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD, ImageFolderData, _classes, image_folder, with_transform
from kdlab.errors import KdlabError

LAYOUT = "<root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG"


class ImageNet(ImageFolderData):
    """ImageNet in the standard folder layout (see the module docstring); any folder of the same
    layout works (the tests use a few classes of tiny images)."""

    name = "imagenet"

    def __init__(
        self,
        root: str,
        image_size: PositiveInt = 224,
        resize_size: PositiveInt = 256,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        batch_size: PositiveInt = 256,
        eval_batch_size: PositiveInt | None = None,
        val_fraction: Fraction = 0.0,
        split_seed: Seed = 0,
        num_workers: NonNegativeInt = 8,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        prefetch_factor: PositiveInt | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        shuffle: bool = True,
        strong_view: bool = False,
    ):
        root_path = Path(root)
        if not root_path.is_dir():
            raise KdlabError(f"ImageNet folder {root_path} does not exist; set data.root=<folder holding {LAYOUT}>")
        for split in ("train", "val"):
            if not (root_path / split).is_dir():
                raise KdlabError(f"{root_path} has no {split}/ folder; data=imagenet expects {LAYOUT}")
        if not _classes(root_path / "val") and any(p.is_file() for p in (root_path / "val").iterdir()):
            raise KdlabError(
                f"{root_path / 'val'} holds its images directly, not in class folders; sort them into "
                "val/<wnid>/ with the ILSVRC 2012 validation labels (e.g. the valprep.sh script of "
                "soumith/imagenetloader.torch; see docs/imagenet.md)"
            )
        super().__init__(
            root,
            image_size=image_size,
            augment=True,
            mean=mean,
            std=std,
            batch_size=batch_size,
            val_fraction=val_fraction,
            split_seed=split_seed,
            num_workers=num_workers,
            eval_batch_size=eval_batch_size,
            shuffle=shuffle,
            resize_size=resize_size,
            crop_scale=crop_scale,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            prefetch_factor=prefetch_factor,
            strong_view=strong_view,  # True is refused in one line (KDDataModule): no strong view for ImageNet
        )

    def build(self):
        """(train, validation, test): all of ``train/`` (less a seeded validation split when
        ``val_fraction>0``), that split (empty otherwise: validation then runs on the test split),
        and ``val/`` as the test split."""
        train_aug = image_folder(self.train_dir, self._transform(train=True))
        test = image_folder(self.root / "val", self._transform(train=False))
        tr, va = split_indices(len(train_aug), self.val_fraction, self.split_seed)
        if self.val_fraction == 0:
            return train_aug, Subset(train_aug, []), test
        train_eval = with_transform(train_aug, self._transform(train=False))
        return Subset(train_aug, tr.tolist()), Subset(train_eval, va.tolist()), test
