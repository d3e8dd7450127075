"""What every kdlab data module shares: shapes known before setup, a seeded validation split
carved from the training set, and loaders that serve in-memory tensors a batch at a time."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ParallelStrategy
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from kdlab.config import Fraction, NonNegativeInt, PositiveInt, Seed
from kdlab.errors import KdlabError

#: The data whose modules make a strong view (``KDDataModule.makes_strong_view``), named in refusals.
STRONG_VIEW_DATA = "cifar10, cifar100, mnist1d"


#: Data config keys that change neither the samples nor the (weak) views a model trains on: where the
#: data lives, how it is batched and loaded, and the strong view (read only by the terms that ask for
#: it). The keys of kdlab's caches (teachers, teacher outputs) leave them out.
LOADING_KEYS = (
    "batch_size",
    "eval_batch_size",
    "num_workers",
    "root",
    "download",
    "strong_view",
    "strong_max_shift",
    "strong_noise_std",
)


class TensorBatches(Dataset):
    """In-memory ``(x, y)`` tensors served as ``(x, y, index)``: the sample's position in this
    split, which memory-bank methods (CRD) and per-sample caches key on. ``__getitems__`` lets
    the DataLoader fetch a whole batch with one indexing op instead of collating
    ``batch_size`` single samples."""

    def __init__(self, x: Tensor, y: Tensor):
        assert len(x) == len(y), "x and y differ in length"
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        return self.x[i], self.y[i], i

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        idx = torch.as_tensor(indices)
        return self.x[idx], self.y[idx], idx


class WithIndex(Dataset):
    """Any ``(x, y)`` dataset served as ``(x, y, index)``, like ``TensorBatches``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y = self.dataset[i]
        return x, y, i


def targets_of(dataset: Dataset) -> Tensor:
    """The labels of every sample of a kdlab split, in index order."""
    if isinstance(dataset, TensorBatches):
        return dataset.y
    if isinstance(dataset, WithIndex):
        dataset = dataset.dataset
    if isinstance(dataset, Subset):
        return targets_of_base(dataset.dataset)[torch.as_tensor(dataset.indices)]
    return targets_of_base(dataset)


def targets_of_base(dataset: Dataset) -> Tensor:
    if hasattr(dataset, "targets"):
        return torch.as_tensor(dataset.targets)
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])


class InMemoryBatches:
    """The batches of an in-memory split (``TensorBatches``), ``(x, y, index)``, sliced out of
    tensors that live on the training device: no worker processes, no per-sample indexing, no
    collation, no host-to-device copy per batch.

    It draws from torch's global random generator exactly what a ``DataLoader(shuffle=...)``
    without workers draws (the iterator's base seed, then the ``RandomSampler``'s seed, whose
    own generator permutes the samples), so a seed gives the same batches in the same order as
    the DataLoader it replaces, and every later random draw is the same too. Used for one process;
    DDP keeps the DataLoader (its ``DistributedSampler`` shards the samples)."""

    def __init__(self, dataset: TensorBatches, batch_size: int, shuffle: bool, device: torch.device | str = "cpu"):
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.x, self.y = dataset.x.to(device), dataset.y.to(device)

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self):  # a generator: nothing is drawn until the first batch is asked for
        n, b, dev = len(self.y), self.batch_size, self.y.device
        torch.empty((), dtype=torch.int64).random_()  # the DataLoader iterator's base seed
        if self.shuffle:  # RandomSampler: a seed from the global generator, a permutation from its own
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
            for i in torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(dev).split(b):
                yield self.x[i], self.y[i], i
        else:
            index = torch.arange(n, device=dev)
            for s in range(0, n, b):
                yield self.x[s : s + b], self.y[s : s + b], index[s : s + b]


def keep_batch(batch):
    """collate_fn for datasets whose ``__getitems__`` already returns a batch."""
    return batch


@dataclass(frozen=True)
class TrainViews:
    """What a training sample can become on its way to the model (``KDDataModule.train_views``).

    ``count``: how many distinct inputs one stored sample can be: 1 when training batches are the
    stored samples (up to a deterministic transform such as normalisation); V > 1 when the
    augmentation draws one of V enumerable views and each training batch says which, as its fourth
    element ``(x, y, index, view)`` with ``view`` in 0..V-1; None when it cannot be enumerated
    (Gaussian noise, random resized crops), ``reason`` saying why. ``scheme`` names the enumeration
    (part of the teacher-output cache's key, ``kdlab.teacher_outputs``)."""

    count: int | None
    scheme: str = "stored"
    reason: str = ""


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random (train, val) partition of ``range(n)``; with no validation split, the
    training set in its own order."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0:
        return torch.arange(n), torch.arange(0)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(n * val_fraction)
    return perm[n_val:], perm[:n_val]


class KDDataModule(pl.LightningDataModule):
    """Base of the kdlab data modules.

    Subclasses set ``name``, ``num_classes`` and ``input_shape`` (without the batch dimension)
    in ``__init__`` so that models can be built before any data is loaded, and implement
    ``build()`` returning the (train, val, test) datasets. Batches are ``(x, y, index)``;
    ``preprocess`` runs on the device after transfer (normalisation, batch augmentation), and a
    training batch whose augmentation draws enumerable views is ``(x, y, index, view)``
    (``train_views``).

    ``strong_view``: every training batch also carries a strongly augmented view of the same
    samples, ``(x, y, index, view, x_strong)`` (``view`` None when the augmentation's views are not
    enumerable or there is none), ``x_strong`` preprocessed like ``x``; validation and test batches
    are unchanged. Its random draws are made after the weak view's, from a generator of their own
    (``strong_generator``, kept in checkpoints) that draws nothing from torch's: every batch's ``x``
    and ``view``, and the order of the batches, are bit for bit those without the strong view for
    the same seed, and ``train_views``, the views the teacher-output cache enumerates, is the same.
    Only modules with ``makes_strong_view`` make one; the others refuse ``strong_view=True`` in one
    line.
    """

    name: str = "?"
    #: Whether the module can make a strong view (``strong_view``); a subclass that can sets it and
    #: adds ``x_strong`` to its training batches in ``preprocess``.
    makes_strong_view: bool = False

    def __init__(
        self,
        batch_size: PositiveInt = 128,
        val_fraction: Fraction = 0.1,
        split_seed: Seed = 0,
        num_workers: NonNegativeInt = 0,
        eval_batch_size: PositiveInt | None = None,
        shuffle: bool = True,
        strong_view: bool = False,
    ):
        super().__init__()
        if strong_view and not self.makes_strong_view:
            raise KdlabError(
                f"data.strong_view=true: {self.name} has no strong view; the data that have one: "
                f"{STRONG_VIEW_DATA}; set data.strong_view=false or use one of them"
            )
        self.strong_view = strong_view
        self._strong_generators: dict[str, torch.Generator] = {}  # per device (``strong_generator``)
        self._strong_generator_states: dict[str, Tensor] = {}  # restored from a checkpoint, not yet in use
        self.shuffle = shuffle  # False: the training batches in the same order every epoch (the MNIST-1D paper's loop)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or max(batch_size, 256)
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.num_workers = num_workers
        self.num_classes: int = 0
        self.input_shape: tuple[int, ...] = ()
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    @property
    def validates_on_test(self) -> bool:
        """No validation split (``val_fraction=0``): the model trains on the whole training set and
        validation runs on the test set, the CRD / DKD / MNIST-1D papers' protocol. The best
        epoch is then selected on the test set, and reported as such (``test_acc_best_epoch``)."""
        return self.val_fraction == 0

    @property
    def in_chans(self) -> int:
        return self.input_shape[0]

    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set, self.test_set = self.build()

    def preprocess(self, batch, train: bool):
        """Device-side transform of a batch ``(x, y, index)``; identity unless a subclass needs one."""
        return batch

    def train_views(self) -> TrainViews:
        """How the training augmentation's views are enumerated (``TrainViews``). Here: one view when
        the training samples are in-memory tensors served as they are (no ``preprocess`` of a
        subclass); a subclass that augments says what it draws by overriding this."""
        self.setup()
        if not isinstance(self.train_set, TensorBatches):
            return TrainViews(None, reason=f"{self.name}'s training samples are read and transformed by a DataLoader")
        if type(self).preprocess is not KDDataModule.preprocess:
            return TrainViews(None, reason=f"{type(self).__name__} transforms training batches without saying how")
        return TrainViews(1)

    def view_inputs(self, x: Tensor, views: Tensor | None) -> Tensor:
        """The model's training inputs for stored samples ``x`` of the training split (as its loader
        serves them, on the device) seen in ``views`` (``TrainViews``; None for one view): what
        ``preprocess`` makes of them when it draws those views."""
        if views is not None:
            raise NotImplementedError(f"{type(self).__name__} does not enumerate training views")
        index = torch.arange(len(x), device=x.device)
        return self.preprocess((x, torch.zeros_like(index), index), train=True)[0]

    def train_targets(self) -> Tensor:
        """Labels of the training split in index order (for methods that sample negatives)."""
        self.setup()
        return targets_of(self.train_set)

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """A batch served on ``device`` already (``InMemoryBatches``) as it is: Lightning's transfer
        would walk it and copy nothing."""
        if isinstance(batch, tuple) and all(not isinstance(t, Tensor) or t.device == device for t in batch):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        training = self.trainer is not None and self.trainer.training
        return self.preprocess(batch, train=training)

    def device(self) -> torch.device:
        """Where the batches are served: the training device when a one-process trainer runs this
        module (in-memory splits are put there once), else the CPU."""
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def one_process(self) -> bool:
        """Whether batches may be served by ``InMemoryBatches``: not under DDP (even of one process),
        whose DistributedSampler orders the samples and splits them among the processes."""
        return self.trainer is None or not isinstance(self.trainer.strategy, ParallelStrategy)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader | InMemoryBatches:
        batched = isinstance(dataset, TensorBatches)
        if batched and self.num_workers == 0 and self.one_process():
            return InMemoryBatches(dataset, batch_size, shuffle, self.device())
        if not batched and not isinstance(dataset, WithIndex):
            dataset = WithIndex(dataset)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=keep_batch if batched else None,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, self.batch_size, shuffle=self.shuffle)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.test_set if self.validates_on_test else self.val_set, self.eval_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def strong_generator(self, device: torch.device | str) -> torch.Generator:
        """The generator of the strong views of training batches on ``device``: one of their own, so
        that they draw nothing from torch's (the weak views and the batch order stay those of the same
        seed without the strong view). Made at the first strong view, seeded from a hash of the state
        of torch's generator on ``device`` then (read, not drawn from: the run's seed decides it), and
        kept in checkpoints (``state_dict``), so a resumed fit draws the strong views it would have."""
        device = torch.device(device)
        key = str(device)
        generator = self._strong_generators.get(key)
        if generator is None:
            generator = torch.Generator(device)
            saved = self._strong_generator_states.pop(key, None)
            if saved is not None:
                generator.set_state(saved)
            else:
                if device.type == "cpu":
                    state = torch.get_rng_state()
                elif device.type == "cuda":
                    state = torch.cuda.get_rng_state(device)
                else:
                    state = torch.get_device_module(device.type).get_rng_state()
                digest = hashlib.blake2b(state.numpy().tobytes(), digest_size=8, person=b"kdlab-strong").digest()
                generator.manual_seed(int.from_bytes(digest, "little") >> 1)
            self._strong_generators[key] = generator
        return generator

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the data module: the strong views' generator states, if any."""
        if not self._strong_generators:
            return {}
        return {"strong_generators": {k: g.get_state() for k, g in self._strong_generators.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        """Puts back the strong views' generators of a checkpoint (``state_dict``), on their next use."""
        self._strong_generators = {}
        self._strong_generator_states = dict(state_dict.get("strong_generators", {}))

    def strong_view_summary(self) -> str:
        """What the strong view is, for ``describe`` (a subclass with ``makes_strong_view`` says)."""
        return "a strong view"

    def describe(self) -> str:
        self.setup()
        sizes = "/".join(str(len(d)) for d in (self.train_set, self.val_set, self.test_set))
        if self.validates_on_test:
            sizes = f"{len(self.train_set)}/{len(self.test_set)} train/test (validation on the test set)"
        else:
            sizes += " train/val/test"
        strong = f"; training batches also carry {self.strong_view_summary()}" if self.strong_view else ""
        return f"{self.name}: {sizes}, input {tuple(self.input_shape)}, {self.num_classes} classes{strong}"
