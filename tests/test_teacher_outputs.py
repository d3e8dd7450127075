"""The teacher-output cache (kdlab/teacher_outputs.py): the teacher's logits stored per (training
sample, view), read back by later steps and runs; equal to the live teacher's; keyed so that another
teacher or data never reads it; rebuilt when damaged; safe under concurrent fills; a disk that
refuses leaves the run on the live teacher."""

from __future__ import annotations

import csv
import errno
import json
import logging
import multiprocessing
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from kdlab.config import compose, validate
from kdlab.data import CIFAR, MNIST1D, Digits
from kdlab.data.cifar import CROP_FLIP_VIEWS, crop_flip, draw_crop_flip, random_crop_flip, write_fake_cifar
from kdlab.errors import KdlabError
from kdlab.methods import AT, KD, CrossEntropy
from kdlab.models import create_model
from kdlab.models.checkpoint import save_weights
from kdlab.strategies import OfflineDistillation
from kdlab.teacher_outputs import DTYPES, Store, TeacherOutputs, cli

#: A run of a few seconds: at most 6 training batches per epoch, CSV metrics.
QUICK = [
    "logger=csv",
    "+trainer.limit_train_batches=6",
    "+trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "measure_speed=false",
]


def mnist(epochs: int = 1, *more: str) -> list[str]:
    """MNIST-1D without noise (each sample one repeatable input), ``epochs`` epochs."""
    return [*QUICK, "data.noise_std=0", f"trainer.max_epochs={epochs}", *more]


@pytest.fixture(scope="module")
def random_teachers(tmp_path_factory):
    """Two randomly initialised teacher checkpoints (nothing trains): MNIST-1D cnn1d and CIFAR-100 resnet8."""
    d = tmp_path_factory.mktemp("teachers")
    torch.manual_seed(0)
    paths = {}
    for name, arch, classes, shape in (("cnn1d", "cnn1d", 10, (1, 40)), ("resnet8", "resnet8", 100, (3, 32, 32))):
        paths[name] = save_weights(create_model(arch, classes, shape), d / f"{name}.safetensors", arch, classes, shape)
    torch.manual_seed(1)
    paths["cnn1d_other"] = save_weights(
        create_model("cnn1d", 10, (1, 40)), d / "other.safetensors", "cnn1d", 10, (1, 40)
    )
    return paths


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar(root, classes=100, n_train=48, n_test=16)
    return root


def metrics(run_dir) -> list[dict]:
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def train_losses(run_dir) -> dict[str, list[float]]:
    rows = [r for r in metrics(run_dir) if r.get("train/loss")]
    return {k: [float(r[k]) for r in rows] for k in rows[0] if k.startswith("train/")}


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "student.safetensors")


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# the views of CIFAR's augmentation


def reference_random_crop_flip(x, pad=4):
    """random_crop_flip as it was before the views were made explicit (kdlab/data/cifar.py at 623dc9a)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (b, 1)) + torch.arange(h)
    left = torch.randint(0, 2 * pad + 1, (b, 1)) + torch.arange(w)
    flip = torch.rand(b, 1) < 0.5
    left = torch.where(flip, left.flip(-1), left)
    bi, ci = torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None]
    return padded[bi, ci, top[:, None, :, None], left[:, None, None, :]]


def test_crop_flip_views_are_the_same_draws_as_before_and_each_id_is_one_crop():
    x = torch.rand(64, 3, 32, 32)
    torch.manual_seed(3)
    before = reference_random_crop_flip(x)
    torch.manual_seed(3)
    assert torch.equal(random_crop_flip(x), before)  # same seed: the same crops and flips as before
    torch.manual_seed(3)
    views = draw_crop_flip(64)
    assert torch.equal(crop_flip(x, views), before)
    # every id in 0..161 is one (dy, dx, flip): the padded image's crop at that offset, mirrored for odd ids
    img = torch.rand(1, 3, 32, 32)
    padded = F.pad(img, (4, 4, 4, 4))
    crops = set()
    for v in range(CROP_FLIP_VIEWS):
        dy, dx, flip = v // 18, (v // 2) % 9, v % 2
        expected = padded[..., dy : dy + 32, dx : dx + 32]
        expected = expected.flip(-1) if flip else expected
        got = crop_flip(img, torch.tensor([v]))
        assert torch.equal(got, expected)
        crops.add(got.numpy().tobytes())
    assert len(crops) == CROP_FLIP_VIEWS == 162
    # the distribution is unchanged: uniform over the 162 views
    torch.manual_seed(0)
    counts = torch.bincount(draw_crop_flip(162 * 400), minlength=162).float()
    assert counts.min() > 300 and counts.max() < 500  # 400 expected each, +-5 standard deviations


def test_cifar_training_batches_carry_their_views_and_view_inputs_rebuild_them(fake_cifar):
    dm = CIFAR(classes=100, root=str(fake_cifar), batch_size=16, val_fraction=0)
    dm.setup()
    assert dm.train_views().count == 162 and dm.train_views().scheme == "pad4-crop9x9-flip2"
    x, y, idx = next(iter(dm.train_dataloader()))
    torch.manual_seed(5)
    xt, yt, it, views = dm.preprocess((x, y, idx), train=True)
    assert torch.equal(dm.view_inputs(x, views), xt) and torch.equal(it, idx)
    assert torch.equal(dm.view_inputs(x, None), dm.preprocess((x, y, idx), train=False)[0])
    assert CIFAR(classes=100, root=str(fake_cifar), augment=False).train_views().count == 1


def test_which_data_modules_enumerate_their_views(tmp_path):
    noisy = MNIST1D(root=str(tmp_path), noise_std=0.2)
    assert noisy.train_views().count is None and "noise_std=0.2" in noisy.train_views().reason
    assert MNIST1D(root=str(tmp_path), max_shift=2, noise_std=0).train_views().count is None
    assert MNIST1D(root=str(tmp_path), noise_std=0).train_views().count == 1
    assert Digits().train_views().count == 1


# the store: layout, damage, concurrency, refusing disks


KEY = {"teacher": "t", "data": "d"}


def test_store_rows_fill_and_read_back(tmp_path):
    s = Store.open(tmp_path, "s", KEY, rows=10, classes=3, dtype=DTYPES["fp32"])
    hit, vals = s.lookup(np.array([1, 2, 3]))
    assert not hit.any() and vals.shape == (0, 3)
    values = np.arange(9, dtype=np.float32).reshape(3, 3) + 0.25
    assert s.write(np.array([3, 1, 2]), values) == 3
    hit, vals = s.lookup(np.array([0, 1, 2, 3]))
    assert hit.tolist() == [False, True, True, True]
    assert np.array_equal(vals, values[[1, 2, 0]])  # rows 1, 2, 3
    assert s.filled_rows() == 3 and s.full_bytes() == 10 * (12 + 1)


def test_a_damaged_store_is_rebuilt_with_one_line(tmp_path, caplog):
    dtype = DTYPES["fp16"]
    s = Store.open(tmp_path, "s", KEY, rows=8, classes=4, dtype=dtype)
    s.write(np.arange(8), np.ones((8, 4)))
    with open(s.path / Store.LOGITS, "r+b") as f:  # truncated
        f.truncate(10)
    with caplog.at_level(logging.WARNING, logger="kdlab"):
        s2 = Store.open(tmp_path, "s", KEY, rows=8, classes=4, dtype=dtype)
    assert [r.message for r in caplog.records if "rebuilding" in r.message] == [
        f"teacher-output cache {s.path}: logits.bin has 10 bytes, not 64 (truncated or damaged); rebuilding it empty"
    ]
    assert s2.filled_rows() == 0 and (s2.path / Store.LOGITS).stat().st_size == 64
    s2.write(np.arange(8), np.ones((8, 4)))
    header = json.loads((s2.path / Store.HEADER).read_text())
    header["rows"] = 9  # a header edited by hand fails its checksum
    (s2.path / Store.HEADER).write_text(json.dumps(header))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kdlab"):
        assert Store.open(tmp_path, "s", KEY, rows=8, classes=4, dtype=dtype).filled_rows() == 0
    assert "its header fails its checksum" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kdlab"):  # the same name, another key: never read
        assert Store.open(tmp_path, "s", {**KEY, "teacher": "u"}, rows=8, classes=4, dtype=dtype).filled_rows() == 0
    assert "its key differs" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s", "s.lock"]  # no temporary or old directories left


def _fill(path, order_seed: int, rows: int, classes: int) -> None:
    """Open (maybe create) the store and write every row, in an order of its own, 8 rows at a time."""
    s = Store.open(path, "s", KEY, rows=rows, classes=classes, dtype=DTYPES["fp32"])
    order = np.random.default_rng(order_seed).permutation(rows)
    for chunk in np.array_split(order, rows // 8):
        s.write(chunk, chunk[:, None] * 10.0 + np.arange(classes))
        hit, vals = s.lookup(chunk)
        assert np.array_equal(vals, chunk[hit][:, None] * 10.0 + np.arange(classes))  # never a half-written row


def test_two_processes_filling_one_store_leave_it_consistent(tmp_path):
    rows, classes = 4000, 10
    child = multiprocessing.get_context("fork").Process(target=_fill, args=(tmp_path, 1, rows, classes))
    child.start()  # both create the store at once, then write every row in different orders
    _fill(tmp_path, 2, rows, classes)
    child.join(60)
    assert child.exitcode == 0
    s = Store.open(tmp_path, "s", KEY, rows=rows, classes=classes, dtype=DTYPES["fp32"])
    expected = Store.header(KEY, rows, classes, DTYPES["fp32"])
    assert Store.fault(s.path, expected) is None and s.filled_rows() == rows
    assert np.array_equal(np.asarray(s.logits), np.arange(rows)[:, None] * 10.0 + np.arange(classes))


# the cache in a training module


def cached_module(tmp_path, terms=None, teacher=None, dtype="fp32", student="mlp"):
    torch.manual_seed(0)
    student = create_model(student, 10, (1, 40))
    teacher = teacher or create_model("cnn1d", 10, (1, 40))
    cache = TeacherOutputs(tmp_path, {"k": 1}, samples=64, views=1, classes=10, dtype=dtype, label="t")
    terms = terms or {"ce": CrossEntropy(0.1), "kd": KD(0.9)}
    module = OfflineDistillation(
        student, terms, lambda p: torch.optim.SGD(p, lr=0.1), 10, (1, 40), teacher=teacher, teacher_outputs=cache
    )
    return module, cache


def test_terms_that_read_teacher_features_keep_the_live_teacher(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="kdlab"):
        module, cache = cached_module(
            tmp_path, {"ce": CrossEntropy(), "at": AT(student_taps=["conv2"], teacher_taps=["conv2"])}, student="cnn1d"
        )
    assert not cache.active and module.teacher_outputs is cache
    assert caplog.messages == [
        "teacher-output cache off: method.terms at read more of the teacher than its logits (feature taps or "
        "train mode); the live teacher runs every step"
    ]
    x, y = torch.randn(8, 1, 40), torch.randint(0, 10, (8,))
    module.training_step((x, y, torch.arange(8)), 0)
    assert cache.report() == {"used": False, "mode": "auto", "dtype": "fp32", "reason": cache.reason}


def test_logits_the_fp16_store_cannot_hold_are_computed_live(tmp_path, caplog):
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 10))
    with torch.no_grad():
        teacher[1].weight[:5] *= 1e6  # five classes with logits far beyond fp16's 65504
    module, cache = cached_module(tmp_path, teacher=teacher, dtype="fp16")
    x = torch.randn(8, 1, 40)
    with caplog.at_level(logging.WARNING, logger="kdlab"):
        first = cache.logits(module.teacher, x, torch.arange(8))
        again = cache.logits(module.teacher, x, torch.arange(8))
    assert torch.equal(first, teacher(x)) and torch.equal(again, teacher(x))
    assert cache.rows_unstorable == 16 and cache.rows_hit == 0 and "teacher_cache.dtype=fp32" in caplog.text


def test_partly_cached_batches_run_the_teacher_on_the_missing_samples_only(tmp_path):
    module, cache = cached_module(tmp_path)
    x = torch.randn(16, 1, 40)
    live = module.teacher(x)
    cache.logits(module.teacher, x[:8], torch.arange(8))
    seen = []
    hook = module.teacher.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
    mixed = cache.logits(module.teacher, x, torch.arange(16))
    hook.remove()
    assert seen == [8] and cache.rows_hit == 8 and cache.report()["hit_rate"] == pytest.approx(8 / 24)
    torch.testing.assert_close(mixed, live, rtol=1e-6, atol=1e-6)  # the teacher's own batch-size rounding at most


def test_a_disk_that_refuses_writes_leaves_the_live_teacher(tmp_path, monkeypatch, caplog):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("kdlab.teacher_outputs.os.pwrite", full)
    module, cache = cached_module(tmp_path)
    x = torch.randn(8, 1, 40)
    with caplog.at_level(logging.WARNING, logger="kdlab"):
        for _ in range(3):
            assert torch.equal(cache.logits(module.teacher, x, torch.arange(8)), module.teacher(x))
    assert [r.message for r in caplog.records] == [
        f"teacher-output cache: cannot write under {cache.store.path} (OSError: No space left on device); "
        "the live teacher computes the missing rows for the rest of this run"
    ]
    assert cache.report()["writable"] is False and cache.rows_written == 0


def test_a_cache_directory_that_cannot_be_made_leaves_the_live_teacher(tmp_path, monkeypatch, caplog):
    def read_only(*args):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Store, "build", read_only)
    module, cache = cached_module(tmp_path)
    x = torch.randn(8, 1, 40)
    with caplog.at_level(logging.INFO, logger="kdlab"):
        assert torch.equal(cache.logits(module.teacher, x, torch.arange(8)), module.teacher(x))
    assert caplog.messages == [
        f"teacher-output cache off: cannot use {tmp_path} (OSError: Read-only file system); "
        "the live teacher runs every step"
    ]
    assert cache.report()["used"] is False


# whole runs: equal to the live teacher, shared, keyed


@pytest.mark.parametrize("method", ["kd", "dkd"])
def test_mnist1d_cached_runs_equal_the_live_teacher(train, random_teachers, method):
    """data.shuffle=false: every epoch has the first epoch's batches, so every row is read in the batch
    that filled it: an fp32 cache gives the live run's logged losses and final weights bit for bit,
    cold (filling) and warm; fp16 within fp16 rounding of the logits."""
    common = mnist(3, f"method={method}", f"teacher.checkpoint={random_teachers['cnn1d']}", "+data.shuffle=false")
    live = train([*common, "teacher_cache.mode=off"], fast=False)
    cold = train([*common, "teacher_cache.dtype=fp32"], fast=False)
    warm = train([*common, "teacher_cache.dtype=fp32"], fast=False)
    assert live["teacher_cache"] == {"used": False, "mode": "off", "dtype": "fp16", "reason": "teacher_cache.mode=off"}
    assert cold["teacher_cache"]["used"] and cold["teacher_cache"]["hit_rate"] == pytest.approx(2 / 3)
    assert cold["teacher_cache"]["rows_written"] == 600 and cold["teacher_cache"]["rows"] == 3600
    assert warm["teacher_cache"]["hit_rate"] == 1.0 and warm["teacher_cache"]["rows_written"] == 0
    assert warm["teacher_cache"]["dir"] == cold["teacher_cache"]["dir"]
    assert metrics(cold["_dir"]) == metrics(live["_dir"]) == metrics(warm["_dir"])
    assert same_weights(cold["_dir"], live["_dir"]) and same_weights(warm["_dir"], live["_dir"])
    half = train([*common, "teacher_cache.dtype=fp16"], fast=False)
    assert half["teacher_cache"]["dtype"] == "fp16" and half["teacher_cache"]["dir"] != cold["teacher_cache"]["dir"]
    ours, theirs = train_losses(half["_dir"]), train_losses(live["_dir"])
    for name in theirs:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=2e-3, atol=1e-4, err_msg=name)


def test_shuffled_runs_read_rows_filled_in_other_batches(train, random_teachers):
    """With shuffling, epoch 2 reads rows filled in epoch 1's batches: the same seed again reads the
    same rows in the same batches (bit for bit the run that filled them); against the live teacher,
    within the teacher's own rounding across batch compositions."""
    common = mnist(3, f"teacher.checkpoint={random_teachers['cnn1d']}", "teacher_cache.dtype=fp32")
    live = train([*common, "teacher_cache.mode=off"], fast=False)
    cold = train(common, fast=False)
    warm = train(common, fast=False)
    assert 0 < cold["teacher_cache"]["hit_rate"] < 1 and warm["teacher_cache"]["hit_rate"] == 1.0
    assert metrics(warm["_dir"]) == metrics(cold["_dir"]) and same_weights(warm["_dir"], cold["_dir"])
    ours, theirs = train_losses(cold["_dir"]), train_losses(live["_dir"])
    for name in theirs:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, err_msg=name)


def test_the_cache_is_shared_across_seeds_and_methods_and_never_read_by_another_teacher_or_data(train, random_teachers):
    full_epoch = [x for x in mnist() if "limit_train_batches" not in x]
    teacher = f"teacher.checkpoint={random_teachers['cnn1d']}"
    first = train([*full_epoch, teacher, "method=kd", "seed=0"], fast=False)
    assert first["teacher_cache"]["hit_rate"] == 0 and first["teacher_cache"]["filled"] == 1.0
    other = train(mnist(1, teacher, "method=dist", "seed=1", "data.batch_size=50"), fast=False)
    assert other["teacher_cache"]["dir"] == first["teacher_cache"]["dir"]
    assert other["teacher_cache"]["hit_rate"] == 1.0 and other["teacher_cache"]["rows_written"] == 0
    new_teacher = train(mnist(1, f"teacher.checkpoint={random_teachers['cnn1d_other']}"), fast=False)
    new_split = train(mnist(1, teacher, "data.split_seed=1"), fast=False)
    dirs = {r["teacher_cache"]["dir"] for r in (first, new_teacher, new_split)}
    assert len(dirs) == 3 and new_teacher["teacher_cache"]["hit_rate"] == new_split["teacher_cache"]["hit_rate"] == 0


def test_augmentation_it_cannot_enumerate_keeps_the_live_teacher_with_one_line(train, random_teachers, caplog):
    teacher = f"teacher.checkpoint={random_teachers['cnn1d']}"
    with caplog.at_level(logging.INFO, logger="kdlab"):
        r = train([*QUICK, teacher, "data.noise_std=0.2", "trainer.max_epochs=1"], fast=False)
    reason = "data.noise_std=0.2 adds Gaussian noise: no input repeats"
    assert r["teacher_cache"] == {"used": False, "mode": "auto", "dtype": "fp16", "reason": reason}
    assert [m for m in caplog.messages if "teacher-output cache" in m] == [
        f"teacher-output cache off: {reason}; the live teacher runs every step"
    ]
    assert train(mnist(1, "method=none"), fast=False)["teacher_cache"] is None  # no teacher, nothing to say


CIFAR_RUN = ["data=cifar100", "data.val_fraction=0", "data.batch_size=16", "student.arch=resnet8"]


def test_cifar_views_cached_runs_equal_the_live_teacher(train, random_teachers, fake_cifar):
    """Fake CIFAR-100 in the real on-disk format, 162 views per image: one epoch meets each image
    once, so the cold run fills every row it reads in the live run's batches and views."""
    common = [*QUICK, *CIFAR_RUN, f"data.root={fake_cifar}", f"teacher.checkpoint={random_teachers['resnet8']}"]
    common += ["teacher.arch=resnet8", "trainer.max_epochs=1"]
    live = train([*common, "teacher_cache.mode=off"], fast=False)
    cold = train([*common, "teacher_cache.dtype=fp32"], fast=False)
    warm = train([*common, "teacher_cache.dtype=fp32"], fast=False)
    c, w = cold["teacher_cache"], warm["teacher_cache"]
    assert c["views"] == 162 and c["rows"] == 48 * 162 and c["rows_written"] == 48 and c["hit_rate"] == 0
    assert w["hit_rate"] == 1.0 and w["rows_read"] == 48 and w["dir"] == c["dir"]
    assert metrics(cold["_dir"]) == metrics(live["_dir"]) == metrics(warm["_dir"])
    assert same_weights(cold["_dir"], live["_dir"]) and same_weights(warm["_dir"], live["_dir"])
    train([*common, "teacher_cache.dtype=fp16"], fast=False)
    half = train([*common, "teacher_cache.dtype=fp16"], fast=False)
    assert half["teacher_cache"]["hit_rate"] == 1.0
    ours, theirs = train_losses(half["_dir"]), train_losses(live["_dir"])
    for name in theirs:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=2e-3, atol=1e-4, err_msg=name)


def test_kdlab_cache_teacher_fills_every_view_of_every_sample(
    train, random_teachers, fake_cifar, cache_dir, monkeypatch, capsys
):
    args = [*CIFAR_RUN, f"data.root={fake_cifar}", f"teacher.checkpoint={random_teachers['resnet8']}"]
    args += ["teacher.arch=resnet8"]
    monkeypatch.setattr(sys, "argv", ["kdlab-cache-teacher", *args, "teacher_cache.dtype=fp32"])
    cli()
    out = capsys.readouterr().out
    assert "100.0% of 7,776 rows filled" in out and "7,776 written" in out
    r = train([*QUICK, *args, "teacher_cache.dtype=fp32", "trainer.max_epochs=2"], fast=False)
    assert r["teacher_cache"]["hit_rate"] == 1.0 and r["teacher_cache"]["filled"] == 1.0
    monkeypatch.setattr(sys, "argv", ["kdlab-cache-teacher", *args, "teacher_cache.dtype=fp32"])
    cli()  # filled already: nothing to compute
    assert "0 written" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["kdlab-cache-teacher", *args, "method=at", "student.arch=resnet8"])
    with pytest.raises(SystemExit):
        cli()
    assert "cannot use the teacher-output cache: method.terms at read more" in capsys.readouterr().err


def test_teacher_cache_options_are_checked():
    for bad, words in (("mode=eager", "one of auto, off"), ("dtype=bf16", "one of fp16, fp32")):
        cfg, _ = compose([f"teacher_cache.{bad}"])
        cfg.paths.output_dir = "x"
        with pytest.raises(KdlabError, match=f"teacher_cache.{bad} is not {words}"):
            validate(cfg)


def test_the_teacher_key_is_its_weights_structure_and_ensemble_combination(tmp_path):
    """However a teacher was loaded, the same weights are the same key; any other weight, buffer,
    member or combination is another."""
    from kdlab.models.checkpoint import load_weights
    from kdlab.models.ensemble import TeacherEnsemble
    from kdlab.teacher_outputs import weights_digest

    torch.manual_seed(0)
    a, b = create_model("cnn1d", 10, (1, 40)), create_model("cnn1d", 10, (1, 40))
    path = save_weights(a, tmp_path / "a.safetensors", "cnn1d", 10, (1, 40))
    assert weights_digest(load_weights(path, "cnn1d", 10, (1, 40), {}, role="teacher")) == weights_digest(a)
    assert weights_digest(a) != weights_digest(b)
    moved = create_model("cnn1d", 10, (1, 40))
    moved.load_state_dict(a.state_dict())
    next(moved.parameters()).data.view(-1)[0] += 1e-6
    assert weights_digest(moved) != weights_digest(a)
    probs, logits = TeacherEnsemble([a, b], combine="probs"), TeacherEnsemble([a, b], combine="logits")
    weighted = TeacherEnsemble([a, b], weights=[2, 1], combine="probs")
    assert len({weights_digest(m) for m in (probs, logits, weighted, TeacherEnsemble([b, a]))}) == 4
