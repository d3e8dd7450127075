"""The training loop's fast paths (issue 15): in-memory splits served by slicing on the training
device with the DataLoader's random draws, Lightning's per-hook profiler and attribute costs
removed, per-step means in one tensor, the warm teacher-output cache read from a device copy,
and torch.compile as an option that falls back to eager execution in one line."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.utils.data import DataLoader

from kdlab import teacher_outputs
from kdlab.callbacks import compile_or_eager
from kdlab.config import compose
from kdlab.context import NoProfiler, build_trainer
from kdlab.data import MNIST1D
from kdlab.data.base import InMemoryBatches, TensorBatches, keep_batch
from kdlab.errors import KdlabError
from kdlab.models import create_model
from kdlab.models.checkpoint import save_weights
from kdlab.strategies.base import RunningMeans

QUICK = ["logger=csv", "trainer.enable_progress_bar=false", "measure_speed=false", "data.noise_std=0"]


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("n, batch", [(250, 100), (300, 100), (7, 10)])
def test_in_memory_batches_are_the_dataloaders_batches_and_random_draws(shuffle, n, batch):
    """Same seed: the same batches in the same order as DataLoader(shuffle=...) over the split, and
    torch's global generator left where the DataLoader leaves it (so every later draw, augmentation
    included, is the same too)."""
    data = TensorBatches(torch.randn(n, 3), torch.arange(n))
    runs = []
    for loader in (
        DataLoader(data, batch_size=batch, shuffle=shuffle, collate_fn=keep_batch),
        InMemoryBatches(data, batch, shuffle),
    ):
        torch.manual_seed(1)
        epochs = [[(x.clone(), y.clone(), i.clone()) for x, y, i in loader] for _ in range(2)]
        runs.append((epochs, torch.rand(4)))
    (theirs, after_theirs), (ours, after_ours) = runs
    assert len(InMemoryBatches(data, batch, shuffle)) == len(theirs[0])
    for epoch_theirs, epoch_ours in zip(theirs, ours):
        assert len(epoch_theirs) == len(epoch_ours)
        for a, b in zip(epoch_theirs, epoch_ours):
            assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert torch.equal(after_theirs, after_ours)
    if shuffle and n > batch:
        assert [b[2].tolist() for b in ours[0]] != [b[2].tolist() for b in ours[1]]


def test_iterating_draws_nothing_until_the_first_batch():
    """Lightning calls iter() once to check a loader is iterable: that must not move the generator."""
    loader = InMemoryBatches(TensorBatches(torch.randn(10, 2), torch.arange(10)), 4, True)
    torch.manual_seed(0)
    iter(loader)
    assert torch.equal(torch.rand(2), torch.manual_seed(0) and torch.rand(2))


def test_the_data_module_serves_in_memory_splits_without_a_dataloader(tmp_path):
    dm = MNIST1D(root=str(tmp_path), num_samples=500, batch_size=64)
    assert isinstance(dm.train_dataloader(), InMemoryBatches)
    assert isinstance(dm.test_dataloader(), InMemoryBatches)
    x, y, index = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 40) and torch.equal(dm.train_set.x[index], x) and torch.equal(dm.train_set.y[index], y)
    with_workers = MNIST1D(root=str(tmp_path), num_samples=500, batch_size=64, num_workers=1)
    assert isinstance(with_workers.train_dataloader(), DataLoader)
    batch = next(iter(dm.train_dataloader()))
    assert dm.transfer_batch_to_device(batch, torch.device("cpu"), 0) is batch  # on the device already: as it is


def test_running_means_equal_a_sum_per_name():
    means = RunningMeans()
    torch.manual_seed(0)
    steps = [({"loss": torch.rand(()), "loss_kd": torch.rand(()), "acc": torch.rand(())}, n) for n in (100, 100, 37)]
    for values, n in steps:
        means.add(values, n)
    got = means.pop()
    total = sum(n for _, n in steps)
    for k in ("loss", "loss_kd", "acc"):
        assert got[k].item() == pytest.approx(sum(v[k].item() * n for v, n in steps) / total, rel=1e-6)
    assert means.pop() == {}
    means.add({"a": torch.tensor(1.0, dtype=torch.float64)}, 2)
    means.add({"b": torch.tensor(3.0)}, 2)  # another name: kept apart
    got = means.pop()
    assert got["a"].item() == pytest.approx(0.5) and got["b"].item() == pytest.approx(1.5)


def test_the_trainer_gets_the_free_profiler_unless_one_is_asked_for(tmp_path):
    cfg, _ = compose(["logger=none"])
    trainer = build_trainer(cfg, tmp_path, [], 1, checkpoints=False)
    assert isinstance(trainer.profiler, NoProfiler)
    with trainer.profiler.profile("x") as a, trainer.profiler.profile("y") as b:
        assert a is b is None
    cfg, _ = compose(["logger=none", "+trainer.profiler=simple"])
    assert not isinstance(build_trainer(cfg, tmp_path, [], 1, checkpoints=False).profiler, NoProfiler)


def test_a_model_torch_compile_fails_on_runs_eagerly_with_one_line(monkeypatch, caplog):
    """Compilation fails at the first call (here: a backend that raises): one warning, then eager
    execution with the same outputs; state_dict keys unchanged."""
    torch.manual_seed(0)
    model = create_model("mlp", 10, (1, 40))
    x = torch.randn(5, 1, 40)
    expected = model(x)

    def broken_compile(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("backend 'inductor' failed: no C++ compiler\nlong traceback")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    keys = list(model.state_dict())
    compile_or_eager(model, "student")
    with caplog.at_level(logging.WARNING, logger="kdlab"):
        out1, out2 = model(x), model(x)
    assert torch.equal(out1, expected) and torch.equal(out2, expected)
    lines = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    assert lines == [
        "torch.compile failed on the student (RuntimeError: backend 'inductor' failed: no C++ compiler); it runs eagerly"
    ]
    assert list(model.state_dict()) == keys


def test_an_error_of_the_model_itself_is_still_raised(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    model = create_model("mlp", 10, (1, 40))
    compile_or_eager(model, "student")
    with pytest.raises(RuntimeError):
        model(torch.randn(5, 1, 41))  # wrong input length: eager raises it too


def test_compile_options_are_checked():
    from kdlab.config import validate

    for overrides in (["compile.student=true", "compile.mode=reduce-overhead"], ["compile.mode=fastest"]):
        cfg, _ = compose(overrides)
        cfg.paths.output_dir = "x"
        if "fastest" in overrides[0]:
            with pytest.raises(KdlabError, match="compile.mode=fastest is not"):
                validate(cfg)
        else:
            validate(cfg)


def test_a_compiled_run_trains(train, tmp_path, monkeypatch):
    """compile.student / compile.teacher go through Lightning to the models (compiled eagerly here:
    a stand-in torch.compile that records what it was given, so the test needs no compiler)."""
    compiled = []

    def record(fn, **kwargs):
        compiled.append(type(fn.__self__).__name__)
        return fn

    monkeypatch.setattr(torch, "compile", record)
    r = train(
        [*QUICK, "trainer.max_epochs=1", "compile.student=true", "compile.teacher=true", "teacher_cache.mode=off"]
    )
    assert set(compiled) == {"CNN1D", "MLP"} and r["student"]["test_acc"] > 0  # (the teacher trained on demand: twice)


def test_a_warm_store_read_from_its_device_copy_equals_the_mapped_file(train, tmp_path, monkeypatch):
    """Once every row is filled the store is copied to the device and read there: the same logits,
    hence the same run, as reading the memory-mapped file (RESIDENT_BYTES=0 keeps it on the file)."""
    torch.manual_seed(0)
    ckpt = save_weights(create_model("cnn1d", 10, (1, 40)), tmp_path / "t.safetensors", "cnn1d", 10, (1, 40))
    common = [*QUICK, "trainer.max_epochs=2", f"teacher.checkpoint={ckpt}", "data.num_samples=1000"]
    first = train(common, fast=False)
    assert first["teacher_cache"]["filled"] == 1.0  # epoch 1 filled it; epoch 2 read the device copy
    resident = train(common, fast=False)
    monkeypatch.setattr(teacher_outputs, "RESIDENT_BYTES", 0)
    mapped = train(common, fast=False)
    assert resident["teacher_cache"]["hit_rate"] == mapped["teacher_cache"]["hit_rate"] == 1.0
    assert resident["student"] == mapped["student"]
    from safetensors.torch import load_file

    a, b = load_file(resident["_dir"] / "student.safetensors"), load_file(mapped["_dir"] / "student.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
