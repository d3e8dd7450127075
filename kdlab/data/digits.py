"""scikit-learn's bundled 8x8 digits as 1-channel images: the small image path (timm, 2-D CNNs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlab.config import Fraction, NonNegativeInt, OpenUnit, PositiveInt, Seed
from kdlab.data.base import KDDataModule, TensorBatches, split_indices


class Digits(KDDataModule):
    """UCI optical handwritten digits (Alpaydin & Kaynak, 1998), 1797 images of 8x8 pixels in
    scikit-learn. A seeded ``test_fraction`` is held out, the validation split is carved from
    the rest; ``image_size`` > 8 upsamples (bilinear) for models that downsample a lot."""

    name = "digits"

    def __init__(
        self,
        image_size: PositiveInt = 8,
        test_fraction: OpenUnit = 0.2,
        batch_size: PositiveInt = 64,
        val_fraction: Fraction = 0.1,
        split_seed: Seed = 0,
        num_workers: NonNegativeInt = 0,
        eval_batch_size: PositiveInt | None = None,
        shuffle: bool = True,
        strong_view: bool = False,
    ):
        # strong_view=True is refused (KDDataModule): no strong view is defined for these digits
        super().__init__(batch_size, val_fraction, split_seed, num_workers, eval_batch_size, shuffle, strong_view)
        self.image_size, self.test_fraction = image_size, test_fraction
        self.num_classes, self.input_shape = 10, (1, image_size, image_size)

    def build(self):
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (n, 1, 8, 8) in [0, 1]
        y = torch.as_tensor(d.target, dtype=torch.long)
        if self.image_size != 8:
            x = F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        rest, test = split_indices(len(y), self.test_fraction, self.split_seed)
        tr, va = split_indices(len(rest), self.val_fraction, self.split_seed + 1)
        tr, va = rest[tr], rest[va]
        mean, std = x[tr].mean(), x[tr].std()
        x = (x - mean) / std
        return TensorBatches(x[tr], y[tr]), TensorBatches(x[va], y[va]), TensorBatches(x[test], y[test])
