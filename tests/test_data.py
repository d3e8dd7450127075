"""Data modules: sizes, seeded splits, no downloads, the real on-disk formats."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from kdlab.data import CIFAR, MNIST1D, Digits, ImageFolderData
from kdlab.data.cifar import random_crop_flip, write_fake_cifar
from kdlab.errors import KdlabError


def test_mnist1d_sizes_split_and_cache(tmp_path):
    dm = MNIST1D(root=str(tmp_path), val_fraction=0.1, split_seed=0)
    assert dm.input_shape == (1, 40) and dm.num_classes == 10  # known before setup
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (3600, 400, 1000)
    x, y = dm.train_set.x, dm.train_set.y
    assert x.shape == (3600, 1, 40) and x.dtype == torch.float32 and set(y.tolist()) == set(range(10))
    assert len(list((tmp_path / "mnist1d").glob("*.npz"))) == 1
    again = MNIST1D(root=str(tmp_path), split_seed=0)
    again.setup()  # from the .npz cache, same split
    assert torch.equal(again.val_set.x, dm.val_set.x)
    other = MNIST1D(root=str(tmp_path), split_seed=1)
    other.setup()
    assert not torch.equal(other.val_set.x, dm.val_set.x)
    assert torch.equal(other.test_set.x, dm.test_set.x)  # test is fixed


def test_mnist1d_without_validation_or_shuffling_serves_the_file_in_order_every_epoch(tmp_path):
    # the MNIST-1D paper's loop: all 4000 training samples, batch i = samples 100 i .. 100 i + 99, every pass
    dm = MNIST1D(root=str(tmp_path), val_fraction=0.0, shuffle=False, batch_size=100)
    dm.setup()
    raw = np.load(next((tmp_path / "mnist1d").glob("*.npz")))
    assert len(dm.train_set) == 4000 and dm.validates_on_test
    assert np.allclose(dm.train_set.x[:, 0].numpy(), raw["x"], atol=1e-6)  # the file's order
    epochs = [[b[2].tolist() for b in dm.train_dataloader()] for _ in range(2)]
    assert epochs[0] == epochs[1] and epochs[0][1] == list(range(100, 200)) and len(epochs[0]) == 40
    shuffled = MNIST1D(root=str(tmp_path), val_fraction=0.0, batch_size=100)
    assert [b[2].tolist() for b in shuffled.train_dataloader()][0] != list(range(100))


def test_mnist1d_regenerates_a_corrupt_cache(tmp_path):
    MNIST1D(root=str(tmp_path)).setup()
    (cached,) = (tmp_path / "mnist1d").glob("*.npz")
    cached.write_bytes(b"garbage")
    dm = MNIST1D(root=str(tmp_path))
    dm.setup()
    assert len(dm.test_set) == 1000


def test_loaders_serve_whole_batches_with_sample_indices():
    dm = Digits(batch_size=32)
    x, y, idx = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 8, 8) and y.shape == (32,) and idx.shape == (32,)
    assert torch.equal(dm.train_set.x[idx], x) and torch.equal(dm.train_targets()[idx], y)
    seen = torch.cat([b[2] for b in dm.train_dataloader()])
    assert sorted(seen.tolist()) == list(range(len(dm.train_set)))


def test_digits_images_split_and_resize():
    dm = Digits(image_size=16, test_fraction=0.2, val_fraction=0.1)
    dm.setup()
    n = len(dm.train_set) + len(dm.val_set) + len(dm.test_set)
    assert n == 1797 and len(dm.test_set) == round(1797 * 0.2)
    assert dm.input_shape == (1, 16, 16) and dm.train_set.x.shape[1:] == (1, 16, 16)
    assert abs(dm.train_set.x.mean().item()) < 1e-4  # standardised on train


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_reads_the_real_on_disk_format(tmp_path, classes):
    write_fake_cifar(tmp_path, classes=classes, n_train=120, n_test=40)
    dm = CIFAR(classes=classes, root=str(tmp_path), batch_size=16, val_fraction=0.25)
    dm.setup()
    assert dm.name == f"cifar{classes}" and dm.num_classes == classes
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (90, 30, 40)
    x, y, idx = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (16, 3, 32, 32)
    xt, _, idx_t, views = dm.preprocess((x, y, idx), train=True)  # + the view each image was drawn in
    xe, _, _ = dm.preprocess((x, y, idx), train=False)
    assert torch.equal(idx_t, idx) and views.shape == (16,) and 0 <= views.min() <= views.max() < 162
    assert xt.shape == xe.shape == (16, 3, 32, 32) and xe.dtype == torch.float32
    assert not torch.equal(xt, xe)  # augmented


def test_cifar_images_match_the_files(tmp_path):
    base = write_fake_cifar(tmp_path, classes=10, n_train=50, n_test=10)
    with open(base / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    dm = CIFAR(classes=10, root=str(tmp_path), val_fraction=0.0)
    dm.setup()
    x, y = dm.test_set.x, dm.test_set.y
    assert np.array_equal(x.numpy().reshape(10, -1), raw["data"]) and y.tolist() == raw["labels"]


def test_cifar_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(KdlabError, match="CIFAR-100 not found .*data.download=true"):
        CIFAR(classes=100, root=str(tmp_path)).setup()


def test_cifar_files_that_would_run_code_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    base = write_fake_cifar(tmp_path, classes=10, n_train=10, n_test=10)
    with open(base / "test_batch", "wb") as f:
        pickle.dump({"data": Evil(), "labels": []}, f, protocol=2)
    with pytest.raises(KdlabError, match=r"refusing to load .*print"):
        CIFAR(classes=10, root=str(tmp_path)).setup()


def test_random_crop_flip_is_a_padded_crop_or_its_mirror():
    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8) + 1
    out = random_crop_flip(x, pad=2)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):
        windows = [padded[b, :, i : i + 8, j : j + 8] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[b], w) or torch.equal(out[b], w.flip(-1)) for w in windows)


def _write_images(folder, classes=("cat", "dog", "eel"), per_class=6, size=(10, 12)):
    rng = np.random.default_rng(0)
    for c in classes:
        (folder / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / c / f"{i}.png")


def test_imagefolder_flat_and_split_layouts(tmp_path):
    _write_images(tmp_path / "flat")
    dm = ImageFolderData(root=str(tmp_path / "flat"), image_size=16, batch_size=4, num_workers=0, in_memory=False)
    dm.setup()
    assert dm.num_classes == 3 and dm.input_shape == (3, 16, 16)
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 18
    x, y, idx = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and y.dtype == torch.long and idx.shape == (4,)
    assert len(dm.train_targets()) == len(dm.train_set) and set(dm.train_targets().tolist()) <= {0, 1, 2}

    _write_images(tmp_path / "split" / "train")
    _write_images(tmp_path / "split" / "test", per_class=2)
    dm = ImageFolderData(root=str(tmp_path / "split"), image_size=8, grayscale=True, num_workers=0)
    dm.setup()
    assert len(dm.test_set) == 6 and dm.input_shape == (1, 8, 8)
    assert next(iter(dm.test_dataloader()))[0].shape[1:] == (1, 8, 8)


def test_imagefolder_bad_layouts_fail_clearly(tmp_path):
    with pytest.raises(KdlabError, match="does not exist"):
        ImageFolderData(root=str(tmp_path / "nope"))
    _write_images(tmp_path / "a" / "train")
    _write_images(tmp_path / "a" / "test", classes=("cat", "dog"))
    with pytest.raises(KdlabError, match="has classes"):
        ImageFolderData(root=str(tmp_path / "a"))
