"""MNIST-1D, generated locally (never downloaded) and cached as .npz."""

from __future__ import annotations

import logging
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from kdlab.config import Fraction, NonNegativeFloat, NonNegativeInt, PositiveInt, Seed
from kdlab.data.base import KDDataModule, TensorBatches, TrainViews, split_indices
from kdlab.errors import KdlabError
from kdlab.files import publish

log = logging.getLogger(__name__)
LENGTH, CLASSES = 40, 10  # the generator's default template length, and the ten digits


def generate_mnist1d(num_samples: int, seed: int, shuffle_seq: bool) -> dict[str, np.ndarray]:
    """The `mnist1d` package's generator with its default arguments (80/20 train/test split).
    Restores the global numpy/random state it reseeds."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed, args.shuffle_seq = num_samples, seed, shuffle_seq
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {"x": d["x"], "y": d["y"], "x_test": d["x_test"], "y_test": d["y_test"]}


def check_arrays(arrays: dict[str, np.ndarray], path: Path, length: int = LENGTH, classes: int = CLASSES) -> None:
    """A cached MNIST-1D file must hold what the generator writes: x / x_test of shape (n, ``length``),
    finite, and y / y_test of n labels in 0..``classes - 1``; else one line that names the fault."""
    fault = None
    for split in ("", "_test"):
        x, y = arrays.get(f"x{split}"), arrays.get(f"y{split}")
        if x is None or y is None:
            fault = f"no {'x' if x is None else 'y'}{split}"
        elif x.ndim != 2 or x.shape[1] != length or not np.issubdtype(x.dtype, np.number):
            fault = f"x{split} has shape {x.shape}, not (n, {length})"
        elif y.ndim != 1 or len(y) != len(x):
            fault = f"x{split} has {len(x)} rows, y{split} {y.shape[0] if y.ndim else 0}"
        elif len(y) == 0:
            fault = f"x{split} is empty"
        elif not np.issubdtype(y.dtype, np.integer):
            fault = f"y{split} holds {y.dtype} values, not integer labels"
        elif (y < 0).any() or (y >= classes).any():
            bad = np.unique(y[(y < 0) | (y >= classes)])[:3]
            fault = f"y{split} has labels outside 0..{classes - 1}: {', '.join(str(v) for v in bad)}"
        elif not np.isfinite(x).all():
            fault = f"x{split} holds NaN or infinite values"
        if fault:
            raise KdlabError(f"MNIST-1D file {path} is inconsistent ({fault}); delete it and kdlab generates it again")


def load_mnist1d(root: str | Path, num_samples: PositiveInt = 5000, seed: int = 42, shuffle_seq: bool = False):
    """Arrays of MNIST-1D, generated once and cached under ``root/mnist1d/``. A cached file that
    cannot be read (cut short) is generated again, with a warning; one that reads but holds other
    arrays than the generator's is refused (``check_arrays``) and left as it is."""
    folder = Path(root) / "mnist1d"
    path = folder / f"mnist1d_n{num_samples}_seed{seed}{'_shuffled' if shuffle_seq else ''}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except Exception as e:  # a truncated cache file is regenerated, not trusted
            log.warning(f"MNIST-1D file {path} is unreadable ({type(e).__name__}: {e}); generating it again")
        else:
            check_arrays(arrays, path)
            return arrays
    arrays = generate_mnist1d(num_samples, seed, shuffle_seq)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".npz", delete=False) as tmp:
            np.savez(tmp, **arrays)
        publish(tmp.name, path)  # atomic (concurrent runs never read a half-written file), mode as any output
    except OSError as e:
        raise KdlabError(
            f"cannot write MNIST-1D under {folder} ({type(e).__name__}: {e.strerror or e}); "
            "set data.root (or KDLAB_DATA_DIR) to a writable folder"
        ) from e
    return arrays


def shift_and_noise(
    x: torch.Tensor, max_shift: int, noise_std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Each signal shifted by a uniform draw in -max_shift..max_shift steps (edge-padded), then
    Gaussian noise of ``noise_std`` added; each part skipped (no draw) when it is 0; drawn from
    ``generator`` (default: torch's on x's device).  x: (b, 1, L)"""
    if max_shift:
        b, _, n = x.shape
        shift = torch.randint(-max_shift, max_shift + 1, (b, 1), device=x.device, generator=generator)
        idx = (torch.arange(n, device=x.device) - shift).clamp(0, n - 1)  # (b, L)
        x = x.gather(2, idx.unsqueeze(1))
    if noise_std:
        x = x + noise_std * torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    return x


class MNIST1D(KDDataModule):
    """MNIST-1D: 1-D signals of the ten digit templates, shifted, scaled, sheared and noised.

    Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D" (ICML 2024). The default
    arguments give 4000 train / 1000 test sequences of length 40; the published test
    accuracies are logistic 32%, MLP 68%, CNN 94% (no augmentation). Inputs are ``(1, 40)``,
    already standardised. ``noise_std`` / ``max_shift`` augment training batches on the device.

    ``strong_view``: training batches are ``(x, y, index, None, x_strong)``. MLKD's authors define a
    strong view for images only (RandAugment + Cutout, ``kdlab.data.cifar``); this 1-D one is kdlab's
    own, not theirs: the stored signal shifted by up to ``strong_max_shift`` steps (edge-padded, uniform
    over -s..s) plus Gaussian noise of ``strong_noise_std``, the same two perturbations as the weak
    view's, larger by default, drawn apart from the weak view's and after them, from a generator of
    their own (``KDDataModule.strong_generator``). ``view`` is None: the weak views of MNIST-1D are
    one (the stored signal) or not enumerable (noise, shifts).
    """

    name = "mnist1d"
    makes_strong_view = True

    def __init__(
        self,
        root: str = "data",
        num_samples: PositiveInt = 5000,
        generation_seed: Seed = 42,
        shuffle_seq: bool = False,
        batch_size: PositiveInt = 100,
        val_fraction: Fraction = 0.1,
        split_seed: Seed = 0,
        num_workers: NonNegativeInt = 0,
        eval_batch_size: PositiveInt | None = None,
        shuffle: bool = True,
        noise_std: NonNegativeFloat = 0.0,
        max_shift: NonNegativeInt = 0,
        strong_view: bool = False,
        strong_max_shift: NonNegativeInt = 4,
        strong_noise_std: NonNegativeFloat = 0.4,
    ):
        super().__init__(batch_size, val_fraction, split_seed, num_workers, eval_batch_size, shuffle, strong_view)
        if strong_view and not (strong_max_shift or strong_noise_std):
            raise KdlabError(
                "data.strong_view=true with data.strong_max_shift=0 and data.strong_noise_std=0 makes no "
                "strong view (the stored signal); set either above 0 (e.g. strong_max_shift=4, strong_noise_std=0.4)"
            )
        self.noise_std, self.max_shift = noise_std, max_shift
        self.strong_max_shift, self.strong_noise_std = strong_max_shift, strong_noise_std
        self.root, self.num_samples = root, num_samples
        self.generation_seed, self.shuffle_seq = generation_seed, shuffle_seq
        self.num_classes, self.input_shape = CLASSES, (1, LENGTH)

    def preprocess(self, batch, train: bool):
        """Training batches only: a random shift of up to ``max_shift`` steps (edge-padded) and
        Gaussian noise of ``noise_std`` (the signals are standardised, so 0.2 is 20% of their std);
        with ``strong_view``, then the strong view of the stored signals (``strong_max_shift``,
        ``strong_noise_std``), drawn after."""
        stored, y, *rest = batch  # (b, 1, L), (b,), [index]
        x = shift_and_noise(stored, self.max_shift, self.noise_std) if train else stored
        if train and self.strong_view:
            g = self.strong_generator(stored.device)  # its own generator: the weak draws are unchanged
            strong = shift_and_noise(stored, self.strong_max_shift, self.strong_noise_std, g)
            return (x, y, rest[0] if rest else None, None, strong)
        return (x, y, *rest)

    def strong_view_summary(self) -> str:
        return (
            f"a strong view (kdlab's own: shift up to {self.strong_max_shift} steps + "
            f"Gaussian noise of std {self.strong_noise_std})"
        )

    def train_views(self) -> TrainViews:
        if self.noise_std:
            return TrainViews(None, reason=f"data.noise_std={self.noise_std} adds Gaussian noise: no input repeats")
        if self.max_shift:
            return TrainViews(None, reason=f"data.max_shift={self.max_shift}: random shifts are not enumerated")
        return TrainViews(1)

    def build(self):
        a = load_mnist1d(self.root, self.num_samples, self.generation_seed, self.shuffle_seq)
        x = torch.as_tensor(a["x"], dtype=torch.float32).unsqueeze(1)  # (n, 1, 40)
        y = torch.as_tensor(a["y"], dtype=torch.long)
        x_test = torch.as_tensor(a["x_test"], dtype=torch.float32).unsqueeze(1)
        y_test = torch.as_tensor(a["y_test"], dtype=torch.long)
        tr, va = split_indices(len(y), self.val_fraction, self.split_seed)
        return TensorBatches(x[tr], y[tr]), TensorBatches(x[va], y[va]), TensorBatches(x_test, y_test)
