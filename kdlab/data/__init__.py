"""LightningDataModules. Each knows its ``num_classes`` and ``input_shape`` before setup."""

from kdlab.data.base import KDDataModule, TensorBatches, split_indices
from kdlab.data.cifar import CIFAR
from kdlab.data.digits import Digits
from kdlab.data.imagefolder import ImageFolderData
from kdlab.data.imagenet import ImageNet
from kdlab.data.mnist1d import MNIST1D

__all__ = [
    "KDDataModule",
    "TensorBatches",
    "split_indices",
    "MNIST1D",
    "Digits",
    "CIFAR",
    "ImageFolderData",
    "ImageNet",
]
