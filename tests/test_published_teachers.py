"""The published CIFAR-100 teachers of the CRD and DKD benchmarks load as users download them.

RepDistiller's ``scripts/fetch_pretrained_teachers.sh`` and mdistiller's ``cifar_teachers.tar``
(docs/teachers.md) hold ``<name>_vanilla/ckpt_epoch_240.pth``, written by RepDistiller
``train_teacher.py`` (HobbitLong/RepDistiller b84f547, lines 150-159)::

    state = {'epoch': epoch, 'model': model.state_dict(), 'accuracy': test_acc,
             'optimizer': optimizer.state_dict()}
    torch.save(state, save_file)

``test_acc`` is ``top1.avg`` of ``helper/util.py``'s ``accuracy``: a (1,) tensor. Both projects
read the file as ``torch.load(path)["model"]`` (RepDistiller ``train_student.py`` ``load_teacher``;
mdistiller ``tools/train.py`` and ``engine/utils.py`` ``load_checkpoint``). The files are never
downloaded here: each test writes one in exactly that format from a kdlab model, with the
reference's classifier name (``REFERENCE``), and loads it through the loader ``teacher.checkpoint=``
uses (``kdlab.models.checkpoint.load_weights``, called by ``kdlab.teacher.single_teacher``).

Outside these tests, the reference models themselves (RepDistiller ``models/`` at b84f547 and
mdistiller ``mdistiller/models/cifar/`` at a08d46f) were built next to kdlab's: every key and
shape of all 22 architectures is the same once the classifier is renamed as in ``REFERENCE``,
and the logits agree to float32 rounding with the reference's weights loaded into kdlab.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import kdlab.models.cifar as cifar_zoo
from kdlab.errors import KdlabError
from kdlab.models import create_model
from kdlab.models.checkpoint import load_weights

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 32, 32)

#: kdlab arch -> (the reference's model_dict name, the reference's classifier prefix). The same in
#: RepDistiller (models/__init__.py, models/resnet.py:128 ``self.fc``, wrn.py:75 ``self.fc``, vgg.py:40
#: ``self.classifier = nn.Linear``, mobilenetv2.py:108 ``self.classifier = nn.Sequential(nn.Linear)``,
#: ShuffleNetv1.py:69 / ShuffleNetv2.py:119 / resnetv2.py:87 ``self.linear``) and mdistiller
#: (mdistiller/models/cifar/__init__.py ``cifar_model_dict``; resnet.py:123, wrn.py:94, vgg.py:43,
#: mobilenetv2.py:108, ShuffleNetv1.py:78, ShuffleNetv2.py:138, resnetv2.py:101).
REFERENCE = {
    **{f"resnet{d}": (f"resnet{d}", "fc.") for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": ("resnet8x4", "fc."),
    "resnet32x4": ("resnet32x4", "fc."),
    **{f"wrn_{d}_{k}": (f"wrn_{d}_{k}", "fc.") for d, k in ((16, 1), (16, 2), (40, 1), (40, 2))},
    **{f"vgg{d}_cifar": (f"vgg{d}", "classifier.") for d in (8, 11, 13, 16, 19)},
    "mobilenetv2": ("MobileNetV2", "classifier.0."),
    "shufflenetv1": ("ShuffleV1", "linear."),
    "shufflenetv2": ("ShuffleV2", "linear."),
    "resnet50_cifar": ("ResNet50", "linear."),
}
#: The six published teachers (fetch_pretrained_teachers.sh; mdistiller cifar_model_dict) ...
TEACHERS = ["resnet56", "resnet110", "resnet32x4", "wrn_40_2", "vgg13_cifar", "resnet50_cifar"]
#: ... and the benchmark's students, whose checkpoints users download too (mdistiller's release).
STUDENTS = ["resnet20", "resnet32", "resnet8x4", "wrn_16_2", "wrn_40_1", "vgg8_cifar"]
STUDENTS += ["mobilenetv2", "shufflenetv1", "shufflenetv2"]


def reference_model(arch: str, num_classes: int = 100, seed: int = 0) -> torch.nn.Module:
    """A kdlab zoo model with random weights and random BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = create_model(arch, num_classes, SHAPE)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(1234)
    return model.eval()


def reference_state_dict(model: torch.nn.Module, arch: str, prefix: str = "") -> dict:
    """``model``'s state_dict as the reference names it (its classifier), in the network's order."""
    head = REFERENCE[arch][1]
    return {
        prefix + (head + k[len("head.") :] if k.startswith("head.") else k): v for k, v in model.state_dict().items()
    }


def sgd_state(model: torch.nn.Module) -> dict:
    """The state_dict of the reference's SGD (lr 0.05, momentum 0.9, wd 5e-4) with momentum buffers."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for p in model.parameters():
        opt.state[p]["momentum_buffer"] = torch.zeros(()).expand_as(p)  # a full buffer, stored as one number
    return opt.state_dict()


def save_published(path: Path, model: torch.nn.Module, arch: str, **save) -> Path:
    """``ckpt_epoch_240.pth`` as RepDistiller train_teacher.py writes it."""
    state = {
        "epoch": 240,
        "model": reference_state_dict(model, arch),
        "accuracy": torch.tensor([79.42]),
        "optimizer": sgd_state(model),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path, **save)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_model(loaded: torch.nn.Module, source: torch.nn.Module) -> None:
    saved = source.state_dict()
    got = loaded.state_dict()
    assert list(got) == list(saved)
    for k, v in saved.items():
        assert torch.equal(got[k], v), k
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), source.eval()(x))


def test_every_cifar_preset_has_its_reference_classifier_name():
    for group in ("teacher", "student"):
        for preset in sorted((ROOT / "conf" / group).glob("*.yaml")):
            arch = OmegaConf.load(preset).get("arch")
            if arch is not None and hasattr(cifar_zoo, arch):
                assert arch in REFERENCE, f"conf/{group}/{preset.name}: add {arch} to REFERENCE"
                assert arch in TEACHERS + STUDENTS, f"conf/{group}/{preset.name}: test {arch} here"


@pytest.mark.parametrize("arch", TEACHERS + STUDENTS)
def test_published_checkpoint_loads_as_downloaded(tmp_path, arch, caplog):
    source = reference_model(arch)
    path = save_published(tmp_path / f"{REFERENCE[arch][0]}_vanilla" / "ckpt_epoch_240.pth", source, arch)
    before = digest(path)
    with caplog.at_level(logging.INFO, logger="kdlab.models.checkpoint"):
        loaded = load_weights(path, arch, 100, SHAPE, role="teacher")
    assert_same_model(loaded, source)
    assert "epoch 240, accuracy 79.42" in caplog.text  # reported, never required
    assert digest(path) == before


def test_bare_and_dataparallel_state_dicts_load(tmp_path):
    source = reference_model("resnet8x4")
    torch.save(reference_state_dict(source, "resnet8x4"), tmp_path / "bare.pth")
    assert_same_model(load_weights(tmp_path / "bare.pth", "resnet8x4", 100, SHAPE), source)
    # a model trained under nn.DataParallel saves its keys as module.<name>
    torch.save({"model": reference_state_dict(source, "resnet8x4", "module."), "epoch": 240}, tmp_path / "dp.pth")
    assert_same_model(load_weights(tmp_path / "dp.pth", "resnet8x4", 100, SHAPE), source)


def test_reference_training_checkpoints_load(tmp_path):
    student, teacher = reference_model("resnet8x4"), reference_model("resnet32x4", seed=1)
    # RepDistiller <model>_last.pth: its argparse options under 'opt' (a plain bag of values)
    last = {"opt": argparse.Namespace(model="resnet8x4", learning_rate=0.05, lr_decay_epochs=[150, 180, 210])}
    last["model"] = reference_state_dict(student, "resnet8x4")
    last["optimizer"] = sgd_state(student)
    torch.save(last, tmp_path / "resnet8x4_last.pth")
    assert_same_model(load_weights(tmp_path / "resnet8x4_last.pth", "resnet8x4", 100, SHAPE), student)
    # mdistiller engine/trainer.py 'best' / 'latest': the DataParallel distiller (student and teacher)
    distiller = {**reference_state_dict(student, "resnet8x4", "module.student.")}
    distiller.update(reference_state_dict(teacher, "resnet32x4", "module.teacher."))
    best = {"epoch": 240, "model": distiller, "optimizer": sgd_state(student), "best_acc": torch.tensor([76.32])}
    torch.save(best, tmp_path / "best")
    assert_same_model(load_weights(tmp_path / "best", "resnet8x4", 100, SHAPE), student)


def test_legacy_format_as_a_gpu_run_of_2019_wrote_it(tmp_path, monkeypatch):
    """PyTorch < 1.6 wrote the non-zip format; a GPU run records torch.cuda storages on cuda:0."""
    source = reference_model("resnet56")
    plain = save_published(tmp_path / "legacy.pth", source, "resnet56", _use_new_zipfile_serialization=False)
    assert_same_model(load_weights(plain, "resnet56", 100, SHAPE, role="teacher"), source)
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    cuda = save_published(tmp_path / "legacy_cuda.pth", source, "resnet56", _use_new_zipfile_serialization=False)
    monkeypatch.undo()
    raw = cuda.read_bytes()
    if raw.count(b"cuda:0") == 0 or raw.count(b"ctorch\nFloatStorage\n") == 0:
        pytest.skip("this torch writes legacy files differently")
    cuda.write_bytes(raw.replace(b"ctorch\nFloatStorage\n", b"ctorch.cuda\nFloatStorage\n"))
    assert_same_model(load_weights(cuda, "resnet56", 100, SHAPE, role="teacher"), source)


def test_files_without_batchnorm_counters_load(tmp_path):
    """PyTorch 0.4.0 (RepDistiller's tested version) had no BatchNorm num_batches_tracked."""
    source = reference_model("wrn_16_2")
    state = {k: v for k, v in reference_state_dict(source, "wrn_16_2").items() if "num_batches_tracked" not in k}
    torch.save({"epoch": 240, "model": state}, tmp_path / "old.pth")
    loaded = load_weights(tmp_path / "old.pth", "wrn_16_2", 100, SHAPE)
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), source(x))
    assert all(m.num_batches_tracked.item() == 0 for m in loaded.modules() if isinstance(m, torch.nn.BatchNorm2d))


def one_line_error(path, arch, num_classes=100, **kw) -> str:
    before = digest(Path(path)) if Path(path).is_file() else None
    with pytest.raises(KdlabError) as info:
        load_weights(path, arch, num_classes, SHAPE, role="teacher", **kw)
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message, message
    assert before is None or digest(Path(path)) == before  # the file is left as it was
    return message


@pytest.fixture(scope="module")
def resnet56_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("published") / "resnet56_vanilla" / "ckpt_epoch_240.pth"
    return save_published(path, reference_model("resnet56"), "resnet56")


def test_another_architecture_is_named(resnet56_file):
    msg = one_line_error(resnet56_file, "resnet32x4")
    assert msg == (
        f"teacher checkpoint {resnet56_file} holds a resnet56-shaped model (conv1.weight (16, 3, 3, 3)) "
        "but teacher.arch=resnet32x4 expects (32, 3, 3, 3); set teacher.arch=resnet56"
    )
    assert "holds a resnet56-shaped model (no layer1.9.conv1.weight, which teacher.arch=resnet110 has" in (
        one_line_error(resnet56_file, "resnet110")
    )
    assert "holds a resnet56-shaped model (conv1.weight (16, 3, 3, 3)) that teacher.arch=vgg13_cifar does not have" in (
        one_line_error(resnet56_file, "vgg13_cifar")
    )
    assert "set teacher.arch=resnet56" in one_line_error(resnet56_file, "resnet18")  # a timm model


def test_deeper_file_for_a_shallower_arch_is_named(tmp_path):
    path = save_published(tmp_path / "r110.pth", reference_model("resnet110"), "resnet110")
    msg = one_line_error(path, "resnet56")
    assert "holds a resnet110-shaped model (layer1.9.conv1.weight (16, 16, 3, 3)) that teacher.arch=resnet56" in msg
    assert msg.endswith("set teacher.arch=resnet110")


def test_wrong_number_of_classes(tmp_path, resnet56_file):
    cifar10 = save_published(tmp_path / "c10.pth", reference_model("resnet56", num_classes=10), "resnet56")
    assert one_line_error(cifar10, "resnet56") == (
        f"teacher checkpoint {cifar10} predicts 10 classes (fc.weight (10, 64)) but the data has 100; "
        "use a teacher trained on this data"
    )
    assert "predicts 100 classes (fc.weight (100, 64)) but the data has 10" in one_line_error(
        resnet56_file, "resnet56", 10
    )


def test_missing_and_unexpected_keys(tmp_path):
    state = reference_state_dict(reference_model("resnet20"), "resnet20")
    missing = dict(state)
    del missing["layer3.2.bn2.running_var"]
    torch.save({"model": missing}, tmp_path / "missing.pth")
    msg = one_line_error(tmp_path / "missing.pth", "resnet20")
    assert (
        "does not fit teacher.arch=resnet20 (no layer3.2.bn2.running_var, which teacher.arch=resnet20 has: (64,))"
        in msg
    )
    assert "1 keys missing, 0 unexpected, 0 of another shape" in msg
    torch.save({"model": {**state, "embed.linear.weight": torch.zeros(128, 64)}}, tmp_path / "extra.pth")
    msg = one_line_error(tmp_path / "extra.pth", "resnet20")
    assert (
        "(embed.linear.weight (128, 64)) that teacher.arch=resnet20 does not have; 0 keys missing, 1 unexpected" in msg
    )


def test_a_file_that_runs_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"

    class RunsCode:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    source = reference_model("resnet8")
    torch.save(
        {"epoch": 240, "model": reference_state_dict(source, "resnet8"), "opt": RunsCode()}, tmp_path / "evil.pth"
    )
    msg = one_line_error(tmp_path / "evil.pth", "resnet8")
    assert msg.startswith(f"cannot load {tmp_path / 'evil.pth'} safely") and "mkdir" in msg and "weights_only" in msg
    assert not marker.exists()


@pytest.mark.parametrize("zipfile", [True, False])
def test_truncated_files_fail_in_one_line(tmp_path, zipfile):
    path = save_published(
        tmp_path / "t.pth", reference_model("resnet8"), "resnet8", _use_new_zipfile_serialization=zipfile
    )
    raw = path.read_bytes()
    for cut in (len(raw) // 2, 16, 0):
        path.write_bytes(raw[:cut])
        assert "truncated or corrupt" in one_line_error(path, "resnet8")


def test_files_holding_no_state_dict(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    assert "holds a list, not a state_dict" in one_line_error(tmp_path / "list.pth", "resnet8")
    torch.save({"model": {"conv1.weight": torch.zeros(2), "note": "hi"}}, tmp_path / "mixed.pth")
    assert "holds no state_dict of tensors (its 'model' entry has 'note': a str)" in (
        one_line_error(tmp_path / "mixed.pth", "resnet8")
    )


def test_teacher_checkpoint_end_to_end_on_fake_cifar(train, tmp_path, cache_dir, caplog):
    """``kdlab-train teacher=resnet56 teacher.checkpoint=.../ckpt_epoch_240.pth``: the run's teacher is
    the file's (its test accuracy and calibration are those of the saved model), nothing is cached;
    a file of another architecture stops the run in one line and leaves the cache empty."""
    from kdlab.data import CIFAR
    from kdlab.data.cifar import write_fake_cifar
    from kdlab.report import accuracy, expected_calibration_error, predict

    write_fake_cifar(tmp_path / "cifar", classes=100, n_train=200, n_test=50)
    source = reference_model("resnet56")  # random weights: its calibration error is its fingerprint
    path = save_published(tmp_path / "save/models/resnet56_vanilla/ckpt_epoch_240.pth", source, "resnet56")
    before = digest(path)
    overrides = [
        "data=cifar100",
        f"data.root={tmp_path / 'cifar'}",
        "data.batch_size=16",
        f"teacher.checkpoint={path}",
        "student=resnet20",
        "student.arch=resnet8",
        "measure_speed=false",
    ]
    with caplog.at_level(logging.INFO, logger="kdlab.models.checkpoint"):
        r = train(["teacher=resnet56", *overrides])
    assert "epoch 240, accuracy 79.42" in caplog.text
    data = CIFAR(classes=100, root=str(tmp_path / "cifar"), batch_size=16)
    data.setup("test")
    logits, target = predict(source, data)
    assert r["teacher"]["arch"] == "resnet56" and r["teacher"]["test_acc"] == pytest.approx(accuracy(logits, target))
    assert r["teacher"]["ece"] == pytest.approx(expected_calibration_error(logits, target), abs=1e-6)
    assert not (cache_dir / "teachers").exists() or not any((cache_dir / "teachers").iterdir())
    with pytest.raises(KdlabError, match="holds a resnet56-shaped model .* set teacher.arch=resnet56"):
        train(["teacher=resnet32x4", *overrides])
    assert not (cache_dir / "teachers").exists() or not any((cache_dir / "teachers").iterdir())
    assert digest(path) == before
