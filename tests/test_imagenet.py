"""ImageNet: ``data=imagenet`` on a tiny fake folder of the standard layout, the ImageNet models
(timm's ResNets in torchvision's layout, kdlab's MobileNet-V1) and their taps, teacher weights as
torchvision writes them, and the recipes of experiments/imagenet/ (the generated files, the
protocol, the published numbers, one training step each).

The fake folder: ``train/<wnid>/`` and ``val/<wnid>/`` for 3 classes, 40x40 JPEG and PNG images;
runs use 32x32 crops (``data.image_size=32``, ``data.resize_size=36``). Nothing is downloaded: the
"torchvision" teachers are ``torchvision.models.resnet34/50(num_classes=3)``'s randomly
initialised ``state_dict()``, saved under the file names users download.
"""

from __future__ import annotations

import io
import re
import shutil
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from PIL import Image
from torch import nn
from torch.nn import functional as F

from kdlab import ROOT
from kdlab import recipes as R
from kdlab.config import instantiate, validate
from kdlab.data import ImageNet
from kdlab.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD, UnreadableImage
from kdlab.errors import KdlabError
from kdlab.models import FeatureTaps, bn_before_relu, create_model, feature_stages, preact_stages
from kdlab.models.checkpoint import load_weights
from tests.conftest import compose_cfg

CLASSES = ("n01440764", "n01443537", "n01484850")
FOLDER = ROOT / "experiments" / "imagenet"
FILES = sorted(p.stem for p in FOLDER.glob("*.yaml"))
PAIRS = {"resnet34_resnet18": ("resnet34", "resnet18"), "resnet50_mobilenetv1": ("resnet50", "mobilenetv1")}
METHODS = ("kd", "at", "crd", "reviewkd", "dkd", "dist")
DISTILL = [f"{m}_{p}" for p in PAIRS for m in METHODS]
#: Every file the folder holds: name -> (method or "teacher"; teacher arch; student arch).
ROWS = {
    "teacher_resnet34": ("teacher", "resnet34", None),
    "teacher_resnet50": ("teacher", "resnet50", None),
    "none_resnet18": ("none", None, "resnet18"),
    "none_mobilenetv1": ("none", None, "mobilenetv1"),
    **{f"{m}_{p}": (m, *PAIRS[p]) for p in PAIRS for m in METHODS},
}
TV_FILES = {"resnet34": "resnet34-b627a593.pth", "resnet50": "resnet50-0676ba61.pth"}
SMALL = ["data.image_size=32", "data.resize_size=36", "data.num_workers=0"]


def _image(rng, size=40) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def write_fake_imagenet(root: Path, per_class: dict[str, int] | None = None, seed: int = 0) -> Path:
    """The ImageNet layout with ``per_class`` images per class and split (JPEG and PNG, 40x40)."""
    rng = np.random.default_rng(seed)
    for split, n in (per_class or {"train": 4, "val": 2}).items():
        for c, wnid in enumerate(CLASSES):
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                fmt, ext = ("JPEG", "JPEG") if (c + i) % 2 == 0 else ("PNG", "png")
                _image(rng).save(root / split / wnid / f"{wnid}_{i}.{ext}", format=fmt)
    return root


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """The fake ImageNet folder and, beside it, teachers/ with torchvision-format 3-class ResNets."""
    base = tmp_path_factory.mktemp("imagenet")
    write_fake_imagenet(base / "imagenet")
    (base / "teachers").mkdir()
    torch.manual_seed(0)
    for arch, file in TV_FILES.items():
        torch.save(getattr(torchvision.models, arch)(num_classes=3).state_dict(), base / "teachers" / file)
    yield base
    shutil.rmtree(base, ignore_errors=True)  # ~130 MB of teacher files


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and "Traceback" not in text, text
    return text


# ------------------------------------------------------------------------------------ data=imagenet


def test_imagenet_reads_the_layout_and_validates_on_val(fake):
    dm = ImageNet(root=str(fake / "imagenet"), image_size=32, resize_size=36, batch_size=4, num_workers=0)
    assert dm.name == "imagenet" and dm.num_classes == 3 and dm.input_shape == (3, 32, 32)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (12, 0, 6)
    assert dm.validates_on_test and "validation on the test set" in dm.describe()
    assert dm.test_set.classes == list(CLASSES) and dm.test_set.root.endswith("val")
    assert dm.val_dataloader().dataset.dataset is dm.test_set  # validation runs on val/
    x, y, idx = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.long and idx.shape == (4,)
    assert sorted(dm.train_targets().tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    # evaluation is deterministic (Resize + CenterCrop), normalised with the ImageNet statistics
    a, b = dm.test_set[0][0], dm.test_set[0][0]
    assert torch.equal(a, b) and a.shape == (3, 32, 32)
    from torchvision.transforms import functional as TF

    image = Image.open(dm.test_set.samples[0][0]).convert("RGB")
    expected = TF.to_tensor(TF.center_crop(TF.resize(image, 36), 32))  # shorter side 36, then the centre 32x32
    expected = TF.normalize(expected, IMAGENET_MEAN, IMAGENET_STD)
    assert torch.allclose(a, expected, atol=1e-5)
    # a seeded validation split carved from train/ instead
    dm = ImageNet(root=str(fake / "imagenet"), image_size=32, resize_size=36, val_fraction=0.25, num_workers=0)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (9, 3, 6) and not dm.validates_on_test
    assert set(dm.train_set.indices).isdisjoint(dm.val_set.indices)
    assert torch.equal(dm.val_set[0][0], dm.val_set[0][0])  # the carved split gets the evaluation transform


@pytest.mark.filterwarnings("ignore:This DataLoader will create 8 worker processes")
def test_the_preset_is_the_standard_augmentation_and_a_tuned_loader(fake):
    cfg = compose_cfg(["data=imagenet", f"data.root={fake / 'imagenet'}"])
    d = cfg.data
    assert (d.image_size, d.resize_size, list(d.crop_scale), d.batch_size, d.val_fraction) == (
        224,
        256,
        [0.08, 1.0],
        256,
        0,
    )
    assert d.root == str(fake / "imagenet") and compose_cfg(["data=imagenet"]).data.root.endswith("imagenet")
    dm = instantiate(d)
    train, evaluation = dm._transform(train=True).transforms, dm._transform(train=False).transforms
    names = [type(t).__name__ for t in train]
    assert names[1:] == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert train[1].size == (224, 224) and train[1].scale == (0.08, 1.0) and train[2].p == 0.5
    assert [type(t).__name__ for t in evaluation][1:] == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert evaluation[1].size == 256 and evaluation[2].size == (224, 224)
    assert tuple(train[-1].mean) == IMAGENET_MEAN and tuple(train[-1].std) == IMAGENET_STD
    dm.setup()
    loader = dm.train_dataloader()
    assert (loader.batch_size, loader.num_workers, loader.persistent_workers, loader.prefetch_factor) == (
        256,
        8,
        True,
        4,
    )
    assert loader.pin_memory == torch.cuda.is_available()  # pinned only when there is a GPU to copy to
    dm.num_workers = 0
    loader = dm.train_dataloader()
    assert not loader.persistent_workers and loader.prefetch_factor is None


def test_bad_layouts_fail_in_one_line(tmp_path):
    with pytest.raises(KdlabError, match="does not exist; set data.root") as e:
        ImageNet(root=str(tmp_path / "nope"))
    one_line(e)
    write_fake_imagenet(tmp_path / "a", {"train": 1})
    with pytest.raises(KdlabError, match="has no val/ folder") as e:
        ImageNet(root=str(tmp_path / "a"))
    one_line(e)
    (tmp_path / "a" / "val").mkdir()
    _image(np.random.default_rng(0)).save(tmp_path / "a" / "val" / "ILSVRC2012_val_00000001.JPEG", format="JPEG")
    with pytest.raises(KdlabError, match=r"holds its images directly.*val/<wnid>/") as e:
        ImageNet(root=str(tmp_path / "a"))
    one_line(e)
    write_fake_imagenet(tmp_path / "b", {"train": 1})
    (tmp_path / "b" / "val" / CLASSES[0]).mkdir(parents=True)
    with pytest.raises(KdlabError, match="has classes") as e:
        ImageNet(root=str(tmp_path / "b"))
    one_line(e)


def _truncated(fmt: str) -> bytes:
    buf = io.BytesIO()
    _image(np.random.default_rng(1), size=64).save(buf, format=fmt)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


@pytest.mark.parametrize(
    ("file", "content", "workers"),
    [
        ("corrupt.png", _truncated("PNG"), 0),  # the case: one corrupt PNG in the folder
        ("cut.JPEG", _truncated("JPEG"), 0),
        ("corrupt.png", _truncated("PNG"), 1),  # read in a DataLoader worker process
        ("text.JPEG", b"not an image at all", 0),
    ],
)
def test_an_unreadable_image_is_one_line_naming_the_file(tmp_path, file, content, workers):
    root = write_fake_imagenet(tmp_path / "imagenet", {"train": 1, "val": 1})
    bad = root / "train" / CLASSES[1] / file
    bad.write_bytes(content)
    dm = ImageNet(root=str(root), image_size=32, resize_size=36, batch_size=8, num_workers=workers)
    with pytest.raises(UnreadableImage) as e:
        next(iter(dm.train_dataloader()))
    text = one_line(e)
    assert text.startswith(f"cannot read image {bad} (") and "replace it with a good copy (or delete it)" in text
    assert bad.read_bytes() == content  # nothing touched


def test_data_imagefolder_reads_through_the_same_checked_loader(tmp_path):
    from kdlab.data import ImageFolderData

    root = write_fake_imagenet(tmp_path / "flat", {"train": 3})
    bad = root / "train" / CLASSES[0] / "corrupt.png"
    bad.write_bytes(_truncated("PNG"))
    dm = ImageFolderData(root=str(root), image_size=16, batch_size=16, num_workers=0, in_memory=False)
    with pytest.raises(UnreadableImage, match=re.escape(f"cannot read image {bad} (")) as e:
        next(iter(dm.train_dataloader()))
    one_line(e)


def test_a_run_on_a_folder_with_a_corrupt_png_stops_in_one_line(train, tmp_path):
    root = write_fake_imagenet(tmp_path / "imagenet", {"train": 2, "val": 1})
    bad = root / "val" / CLASSES[2] / "broken.png"
    bad.write_bytes(_truncated("PNG"))
    with pytest.raises(KdlabError, match=re.escape(f"cannot read image {bad}")) as e:
        train(["experiments=imagenet/none_mobilenetv1", f"data.root={root}", *SMALL, "data.batch_size=4"])
    one_line(e)


# ------------------------------------------------------------------------------------ models


def test_mobilenetv1_is_the_reference_network():
    """OFD / ReviewKD / mdistiller ``MobileNet``: ``model`` = conv_bn(3, 32, 2), 13 conv_dw blocks, then
    ``fc`` (1024 -> 1000); conv_bn's parameters at indices 0 (conv) and 1 (BN), conv_dw's at 0, 1, 3, 4."""
    model = create_model("mobilenetv1", 1000, (3, 224, 224))
    assert sum(p.numel() for p in model.parameters()) == 4_231_976
    blocks = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    expected, cin = {"model.0.0.weight": (32, 3, 3, 3), "model.0.1.weight": (32,)}, 32
    for i, (cout, stride) in enumerate(blocks, start=1):
        expected |= {f"model.{i}.0.weight": (cin, 1, 3, 3), f"model.{i}.1.weight": (cin,)}
        expected |= {f"model.{i}.3.weight": (cout, cin, 1, 1), f"model.{i}.4.weight": (cout,)}
        assert model.model[i][0].stride == (stride, stride) and model.model[i][0].groups == cin
        cin = cout
    expected |= {"head.weight": (1000, 1024), "head.bias": (1000,)}
    state = model.state_dict()
    weights = {k: tuple(v.shape) for k, v in state.items() if k.endswith("weight") or k.startswith("head.")}
    assert weights == expected
    assert not any(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))  # taps keep pre-activations


def test_a_reference_mobilenet_checkpoint_loads(tmp_path):
    """A checkpoint of the reference module (its classifier named ``fc``), as mdistiller's
    ``tools/eval.py`` reads one: ``{"model": state_dict}``."""
    torch.manual_seed(0)
    source = create_model("mobilenetv1", 5, (3, 64, 64)).eval()
    reference = {(f"fc.{k[5:]}" if k.startswith("head.") else k): v for k, v in source.state_dict().items()}
    torch.save({"model": reference, "epoch": 100}, tmp_path / "student_best")
    loaded = load_weights(tmp_path / "student_best", "mobilenetv1", 5, (3, 64, 64)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


def _taps(model: nn.Module, shape) -> dict[str, torch.Tensor]:
    taps = FeatureTaps(model, feature_stages(model) + preact_stages(model))
    with torch.no_grad():
        model.eval()(torch.randn(2, *shape, generator=torch.Generator().manual_seed(1)))
    taps.remove()
    return taps.pop()


def test_mobilenetv1_taps_are_mdistillers_feats_and_preact_feats():
    """mdistiller ``forward``: feat<i> = model[3|5|11|13][:-1](...) (before the block's last ReLU),
    ``feats`` = relu(feat<i>); ``get_bn_before_relu`` = model[3|5|11|13][-2]."""
    torch.manual_seed(0)
    model = create_model("mobilenetv1", 1000, (3, 224, 224))
    assert feature_stages(model) == ["model.3", "model.5", "model.11", "model.13"]
    assert preact_stages(model) == bn_before_relu(model) == ["model.3.4", "model.5.4", "model.11.4", "model.13.4"]
    feats = _taps(model, (3, 224, 224))
    for (stage, pre), shape in zip(
        zip(feature_stages(model), preact_stages(model)), [(128, 56), (256, 28), (512, 14), (1024, 7)]
    ):
        c, s = shape
        assert tuple(feats[stage].shape) == (2, c, s, s) and isinstance(model.get_submodule(pre), nn.BatchNorm2d)
        assert (feats[pre] < 0).any() and torch.equal(F.relu(feats[pre]), feats[stage])


@pytest.mark.parametrize(
    ("arch", "last", "act"),
    [("resnet18", (1, 1, 1, 1), 2), ("resnet34", (2, 3, 5, 2), 2), ("resnet50", (2, 3, 5, 2), 3)],
)
def test_resnet_taps_are_the_stages_and_their_preactivations(arch, last, act):
    """mdistiller's ImageNet ResNet: feats[1:] = relu(layer1..4), preact_feats[1:] = layer1..4 before
    the ReLU (its blocks apply the ReLU at the start of the next one); timm's blocks end with it."""
    torch.manual_seed(0)
    model = create_model(arch, 10, (3, 64, 64), zero_init_last=False)
    assert feature_stages(model) == ["layer1", "layer2", "layer3", "layer4"]
    pre = [f"layer{i}.{n}.act{act}:input" for i, n in zip((1, 2, 3, 4), last)]
    assert preact_stages(model) == pre
    feats = _taps(model, (3, 64, 64))
    for stage, p in zip(feature_stages(model), pre):
        assert (feats[p] < 0).any() and torch.equal(F.relu(feats[p]), feats[stage])


@pytest.mark.parametrize("arch", ["resnet34", "resnet50"])
def test_a_torchvision_state_dict_loads_as_the_teacher(fake, arch):
    """The files users download from download.pytorch.org are bare torchvision state_dicts
    (``teacher.checkpoint``: every key and shape checked, the classifier included)."""
    torch.manual_seed(0)
    path = fake / "teachers" / TV_FILES[arch]
    reference = getattr(torchvision.models, arch)(num_classes=3)
    reference.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        loaded = load_weights(path, arch, 3, (3, 32, 32), role="teacher").eval()
        assert torch.allclose(loaded(x), reference.eval()(x), atol=1e-5)


def test_a_torchvision_file_loads_through_timms_pretrained_path(tmp_path):
    """``pretrained_path`` goes through timm's loader, which keeps the classifier only at ImageNet's
    1000 classes (it re-initialises it otherwise: a teacher should use ``teacher.checkpoint``)."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet34().eval()
    torch.save(reference.state_dict(), tmp_path / TV_FILES["resnet34"])
    model = create_model("resnet34", 1000, (3, 32, 32), pretrained_path=str(tmp_path / TV_FILES["resnet34"])).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)


def test_a_teacher_file_of_another_resnet_is_refused_in_one_line(tmp_path):
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "resnet18-f37072fd.pth")
    with pytest.raises(KdlabError, match="teacher checkpoint .*resnet18-f37072fd.pth") as e:
        load_weights(tmp_path / "resnet18-f37072fd.pth", "resnet34", 3, (3, 32, 32), role="teacher")
    one_line(e)


# ------------------------------------------------------------------------------------ the recipes


def test_the_folder_holds_the_generated_files_and_readme():
    assert FILES == sorted(ROWS)
    files = R.imagenet_files()
    assert sorted(files) == FILES
    stale = [name for name, text in files.items() if (FOLDER / f"{name}.yaml").read_text() != text]
    assert not stale, f"run: python -m kdlab.recipes imagenet --write ({len(stale)} differ, e.g. {stale[:3]})"
    assert R.split_readme("imagenet")[1] == R.table("imagenet"), "run: python -m kdlab.recipes imagenet --write"


@cache
def resolved(name: str):
    return R.resolved("imagenet", name)


@cache
def method_defaults(method: str) -> dict:
    return OmegaConf.to_container(compose_cfg([f"method={method}"]).method)


# The reference code's ImageNet values, restated from the sources (not read from kdlab.recipes):
# mdistiller configs/imagenet/{r34_r18,r50_mv1}/{kd,dkd,reviewkd}.yaml, ReviewKD ImageNet/models/reviewkd.py
# (mid_channel 512 / 256), DIST's resnet_dist.yaml (kd_loss_weight 2) and kd_loss.py (DIST(1, 1, 1)).
STUDENT_PREACT = {
    "resnet18": [f"layer{i}.1.act2:input" for i in (1, 2, 3, 4)] + ["pre_logits"],
    "mobilenetv1": ["model.3.4", "model.5.4", "model.11.4", "model.13.4", "pre_logits"],
}


def expected_method(method: str, pair: str) -> dict:
    expected = OmegaConf.to_container(OmegaConf.create(method_defaults(method)))
    terms, r34 = expected["terms"], pair == "resnet34_resnet18"
    if method == "kd":
        terms["ce"]["weight"], terms["kd"]["weight"], terms["kd"]["temperature"] = 0.5, 0.5, 1.0
    if method == "dkd":
        terms["dkd"].update(beta=0.5 if r34 else 2.0, temperature=1.0, warmup_epochs=1)
    if method == "reviewkd":
        terms["reviewkd"].update(weight=1.0 if r34 else 8.0, warmup_epochs=1, max_mid_channel=512 if r34 else 256)
        terms["reviewkd"]["student_taps"] = STUDENT_PREACT[PAIRS[pair][1]]
    if method == "dist":
        terms["dist"].update(weight=2.0, beta=1.0, gamma=1.0, temperature=1.0)
    return expected


@pytest.mark.parametrize("name", FILES)
def test_recipe_composes_validates_and_follows_the_protocol(name, fake):
    method, teacher, student = ROWS[name]
    cfg = compose_cfg([f"experiments=imagenet/{name}"])
    cfg.paths.output_dir = "/tmp/x"
    validate(cfg)
    assert cfg.data._target_ == "kdlab.data.ImageNet" and cfg.data.val_fraction == 0
    assert (cfg.data.image_size, cfg.data.resize_size, cfg.data.batch_size) == (224, 256, 256)
    if method == "teacher":
        assert cfg.task == "teacher" and cfg.teacher.arch == teacher
        model, epochs, batch, milestones = cfg.teacher, cfg.teacher.max_epochs, cfg.teacher.batch_size, [30, 60]
        assert epochs == 90  # torchvision's recipe
    else:
        assert cfg.task == "distill" and cfg.student.arch == student and cfg.method.name == method
        model, epochs, batch, milestones = cfg.student, cfg.trainer.max_epochs, cfg.data.batch_size, [30, 60, 90]
        assert epochs == 100
        if teacher is not None:
            assert cfg.teacher.arch == teacher and Path(cfg.teacher.checkpoint).name == TV_FILES[teacher]
            pair = name.split("_", 1)[1]
            assert OmegaConf.to_container(cfg.method) == expected_method(method, pair)
    opt, sched = model.optimizer, model.scheduler
    assert (opt._target_, opt.lr, opt.momentum, opt.weight_decay) == ("torch.optim.SGD", 0.1, 0.9, 0.0001)
    assert sched._target_ == "torch.optim.lr_scheduler.MultiStepLR"
    assert (list(sched.milestones), sched.gamma, batch) == (milestones, 0.1, 256)
    assert model.kwargs.get("zero_init_last", False) is False  # torchvision's BN init (timm's default differs)


# The published numbers, read again from the sources (%): the mdistiller README ("On ImageNet"), the
# ReviewKD ImageNet README ("Results"), the DIST README ("Baseline settings"), torchdistill's benchmark
# table (imagenet-resnet18_kd.tsv: "Original work", "torchdistill") and the ND README ("1.2 ImageNet-1k").
PUBLISHED = {
    "kd_resnet34_resnet18": (71.03, "mdistiller README", 71.37),
    "kd_resnet50_mobilenetv1": (70.50, "mdistiller README", None),
    "at_resnet34_resnet18": (70.70, 'column "Original work"', 70.90),
    "at_resnet50_mobilenetv1": (None, "not found", None),
    "crd_resnet34_resnet18": (71.17, 'column "Original work"', 70.93),
    "crd_resnet50_mobilenetv1": (71.37, "ND README", None),
    "reviewkd_resnet34_resnet18": (71.61, "ReviewKD README", 71.64),
    "reviewkd_resnet50_mobilenetv1": (72.56, "ReviewKD README", None),
    "dkd_resnet34_resnet18": (71.70, "mdistiller README", None),
    "dkd_resnet50_mobilenetv1": (72.05, "mdistiller README", None),
    "dist_resnet34_resnet18": (72.07, "DIST README", 71.95),
    "dist_resnet50_mobilenetv1": (73.24, "DIST README", None),
}
BASELINES = {"resnet34": 73.31, "resnet50": 76.16, "resnet18": 69.75, "mobilenetv1": 68.87}
DIST_BASELINES = {"resnet18": 69.76, "mobilenetv1": 70.13}


def pct(x: float | None) -> float | None:
    return None if x is None else round(x / 100, 4)


@pytest.mark.parametrize("name", FILES)
def test_recipe_records_the_published_numbers(name):
    method, teacher, student = ROWS[name]
    published = OmegaConf.to_container(resolved(name).published, resolve=True)
    assert published["source"] and published["protocol"]
    if method == "teacher":
        assert published == {
            "teacher_acc": pct(BASELINES[teacher]),
            **{k: published[k] for k in ("source", "protocol")},
        }
        assert "DIST README" in published["source"] and "torchvision" in published["protocol"]
        return
    if method == "none":
        assert published["student_acc"] == pct(BASELINES[student]) and "ReviewKD README" in published["source"]
        return
    value, cited, rerun = PUBLISHED[name]
    assert published["method_acc"] == pct(value) and cited in published["source"]
    assert published["teacher_acc"] == pct(BASELINES[teacher])
    own = DIST_BASELINES[student] if method == "dist" else BASELINES[student]
    assert published["student_acc"] == pct(own)
    assert published.get("rerun_acc") == pct(rerun)
    if rerun is not None:
        assert "torchdistill" in published["rerun_source"]
    if method in ("kd", "dkd", "reviewkd") and value is not None and "ND README" not in cited:
        assert "best val/ epoch" in published["protocol"]  # mdistiller's best_acc, ReviewKD's best_prec1


def test_the_docs_table_is_the_recipes_numbers():
    text = (ROOT / "docs" / "imagenet.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \|[^|]+\|\s*([\d.]+|-)\s*\|[^|]*\|\s*([\d.]*)\s*\|$", text, flags=re.M)
    assert sorted(r[0] for r in rows) == FILES
    for name, value, rerun in rows:
        published = OmegaConf.to_container(resolved(name).published, resolve=True)
        key = {"teacher": "teacher_acc", "none": "student_acc"}.get(ROWS[name][0], "method_acc")
        assert published[key] == (None if value == "-" else pct(float(value))), name
        assert published.get("rerun_acc") == (pct(float(rerun)) if rerun else None), name


# ------------------------------------------------------------------------------------ one step each


@cache
def _teacher(arch: str) -> nn.Module:
    torch.manual_seed(1)
    return create_model(arch, 3, (3, 32, 32), zero_init_last=False)


@pytest.mark.parametrize("name", DISTILL)
def test_every_distillation_row_builds_its_terms_and_takes_a_step(name):
    """The row's student, teacher and terms as the run builds them (taps, probed connectors) on 32x32
    inputs, one batch, finite losses and gradients for every student parameter."""
    from kdlab.strategies.offline import OfflineDistillation

    method, teacher, student = ROWS[name]
    cfg = compose_cfg([f"experiments=imagenet/{name}"])
    torch.manual_seed(0)
    terms = instantiate(cfg.method.terms)
    model = create_model(student, 3, (3, 32, 32), **cfg.student.kwargs)
    module = OfflineDistillation(model, terms, torch.optim.SGD, 3, (3, 32, 32), teacher=_teacher(teacher)).train()
    if "crd" in terms:
        terms["crd"].prepare(torch.arange(3).repeat(4))
    x, y, index = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), torch.arange(4)
    step = module.losses(x, y, index)
    assert torch.isfinite(step.loss) and set(step.terms) == {f"loss_{t}" for t in terms}, step.terms
    step.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", FILES)
def test_recipe_runs_one_training_step_on_the_fake_folder(train, cache_dir, fake, name, caplog):
    method, teacher, student = ROWS[name]
    overrides = [
        f"experiments=imagenet/{name}",
        f"data.root={fake / 'imagenet'}",
        *SMALL,
        "data.batch_size=6",
        "teacher.batch_size=6",
        "trainer.limit_train_batches=1",
        "measure_speed=false",
    ]
    if teacher is not None:
        overrides.append(f"teacher.checkpoint={fake / 'teachers' / TV_FILES[teacher]}")
    with caplog.at_level("INFO", logger="kdlab"):
        r = train(overrides)
    try:
        assert r["data"] == "imagenet" and r["experiment"] == f"imagenet/{name}"
        assert r["published"] == OmegaConf.to_container(resolved(name).published, resolve=True)
        if method == "teacher":
            assert (
                r["task"] == "teacher" and r["teacher"]["arch"] == teacher and len(r["teacher"]["per_class_acc"]) == 3
            )
        else:
            assert r["student"]["arch"] == student and len(r["student"]["per_class_acc"]) == 3
            assert 0 <= r["student"]["test_acc"] <= 1
        if method not in ("teacher", "none"):
            assert r["teacher"]["arch"] == teacher and f"teacher: loading {fake / 'teachers'}" in caplog.text
    finally:
        shutil.rmtree(r["_dir"], ignore_errors=True)  # Lightning checkpoints of these models: ~350 MB a run
        shutil.rmtree(cache_dir, ignore_errors=True)  # the teacher a teacher row trained and cached
