"""The CIFAR-100 recipes (experiments/cifar100/) follow the CRD / DKD benchmark protocol, carry the
papers' published numbers, and their README's table is the one kdlab.recipes generates from them."""

from functools import cache
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kdlab import ROOT
from kdlab.recipes import split_readme, table
from tests.conftest import compose_cfg

CRD = "CRD (Tian et al. 2020) Tables 1-2, reprinted in DKD (Zhao et al. 2022) Tables 1-2"
DKD = "DKD (Zhao et al. 2022) Tables 1-2 and the mdistiller README"
DIST = "not transcribed: see Huang et al. 2022"

# Published CIFAR-100 top-1 (%) of the teachers and of the students trained alone (CRD).
TEACHERS = dict(resnet56=72.34, resnet110=74.31, resnet32x4=79.42, wrn_40_2=75.61, vgg13=74.64, resnet50_cifar=79.34)
STUDENTS = dict(resnet20=69.06, resnet32=71.14, resnet8x4=72.50, wrn_16_2=73.26, wrn_40_1=71.98, vgg8=70.36)
STUDENTS |= dict(mobilenetv2=64.60, shufflenetv1=70.50, shufflenetv2=71.82)
METHODS = ("kd", "fitnet", "at", "crd", "dkd", "dist")
# Per pair: the published accuracy (%) of each method in METHODS (None: not transcribed), then
# DKD's beta for the pair (mdistiller's configs/cifar100/dkd/).
PAIRS = {
    ("resnet56", "resnet20"): (70.66, 69.21, 70.55, 71.16, 71.97, None, 2.0),
    ("resnet110", "resnet32"): (73.08, 71.06, 72.31, 73.48, 74.11, None, 2.0),
    ("resnet32x4", "resnet8x4"): (73.33, 73.50, 73.44, 75.51, 76.32, None, 8.0),
    ("wrn_40_2", "wrn_16_2"): (74.92, 73.58, 74.08, 75.48, 76.23, None, 6.0),
    ("wrn_40_2", "wrn_40_1"): (73.54, 72.24, 72.77, 74.14, 74.81, None, 6.0),
    ("vgg13", "vgg8"): (72.98, 71.02, 71.43, 73.94, 74.68, None, 6.0),
    ("vgg13", "mobilenetv2"): (67.37, 64.14, 59.40, 69.73, 69.71, None, 6.0),
    ("resnet50_cifar", "mobilenetv2"): (67.35, 63.16, 58.58, 69.11, 70.35, None, 8.0),
    ("resnet32x4", "shufflenetv1"): (74.07, 73.59, 71.73, 75.11, 76.45, None, 8.0),
    ("resnet32x4", "shufflenetv2"): (74.45, 73.54, 72.73, 75.65, 77.07, None, 8.0),
    ("wrn_40_2", "shufflenetv1"): (74.83, 73.73, 73.32, 76.05, 76.70, None, 8.0),
}
LR_001 = {"mobilenetv2", "shufflenetv1", "shufflenetv2"}  # students trained at lr 0.01, not 0.05

# Every file the folder should hold: name -> (method, or "teacher" for teacher_ files; teacher; student).
ROWS = {
    **{f"teacher_{t}": ("teacher", t, None) for t in TEACHERS},
    **{f"none_{s}": ("none", None, s) for s in STUDENTS},
    **{f"{m}_{t}_{s}": (m, t, s) for t, s in PAIRS for m in METHODS},
}
FILES = sorted(p.stem for p in (ROOT / "experiments" / "cifar100").glob("*.yaml"))


def arch(preset: str) -> str:
    return {"vgg13": "vgg13_cifar", "vgg8": "vgg8_cifar"}.get(preset, preset)


@cache
def resolved(name: str):
    return compose_cfg([f"experiments=cifar100/{name}"])


@cache
def method_defaults(method: str):
    return compose_cfg([f"method={method}"]).method


def test_the_folder_holds_every_row_and_nothing_else():
    assert FILES == sorted(ROWS)
    kinds = [method if method in ("teacher", "none") else "distill" for method, _, _ in ROWS.values()]
    assert (kinds.count("distill"), kinds.count("teacher"), kinds.count("none")) == (11 * 6, 6, 9)


@pytest.mark.parametrize("name", FILES)
def test_recipe_follows_the_protocol(name):
    assert name in ROWS, f"{name}.yaml is not a row of the benchmark"
    method, teacher, student = ROWS[name]
    cfg = resolved(name)
    assert cfg.data._target_ == "kdlab.data.CIFAR" and cfg.data.classes == 100
    if method == "teacher":
        assert cfg.task == "teacher" and cfg.teacher.arch == arch(teacher)
        model, epochs, batch, lr = cfg.teacher, cfg.teacher.max_epochs, cfg.teacher.batch_size, 0.05
    else:
        assert cfg.task == "distill" and cfg.student.arch == arch(student) and cfg.method.name == method
        assert teacher is None or cfg.teacher.arch == arch(teacher)
        model, epochs, batch = cfg.student, cfg.trainer.max_epochs, cfg.data.batch_size
        lr = 0.01 if student in LR_001 else 0.05
        expected = OmegaConf.to_container(method_defaults(method))  # its CIFAR-100 defaults, DKD's beta per pair
        if method == "dkd":
            expected["terms"]["dkd"]["beta"] = PAIRS[teacher, student][-1]
        assert OmegaConf.to_container(cfg.method) == expected
    opt, sched = model.optimizer, model.scheduler
    assert (opt._target_, opt.lr, opt.momentum, opt.weight_decay) == ("torch.optim.SGD", lr, 0.9, 0.0005)
    assert sched._target_ == "torch.optim.lr_scheduler.MultiStepLR"
    assert (list(sched.milestones), sched.gamma) == ([150, 180, 210], 0.1)
    assert (epochs, batch) == (240, 64)


@pytest.mark.parametrize("name", FILES)
def test_recipe_records_the_published_numbers(name):
    method, teacher, student = ROWS[name]
    if method == "teacher":
        expected = {"teacher_acc": TEACHERS[teacher], "source": CRD}
    elif method == "none":
        expected = {"student_acc": STUDENTS[student], "source": CRD}
    else:
        expected = {
            "teacher_acc": TEACHERS[teacher],
            "student_acc": STUDENTS[student],
            "method_acc": PAIRS[teacher, student][METHODS.index(method)],
            "source": {"dkd": DKD, "dist": DIST}.get(method, CRD),
        }
    expected = {k: round(v / 100, 4) if isinstance(v, float) else v for k, v in expected.items()}
    assert OmegaConf.to_container(resolved(name).published, resolve=True) == expected


def test_the_readme_table_is_generated_from_the_files():
    assert split_readme("cifar100")[1] == table("cifar100"), "run: python -m kdlab.recipes cifar100 --write"


def test_presets_name_their_models_in_the_zoo():
    import timm

    import kdlab.models  # noqa: F401  (registers the zoo)

    for group in ("teacher", "student"):
        for preset in Path(ROOT / "conf" / group).glob("*.yaml"):
            arch = compose_cfg([f"{group}={preset.stem}"])[group].arch
            assert timm.is_model(arch), f"{group}/{preset.name}: {arch}"


@pytest.mark.parametrize(
    "name",
    [
        "dkd_resnet32x4_resnet8x4",
        "crd_resnet32x4_shufflenetv2",
        "at_vgg13_mobilenetv2",
        "fitnet_wrn_40_2_shufflenetv1",
        "fitnet_resnet50_cifar_mobilenetv2",
        "dist_resnet56_resnet20",
        "kd_vgg13_vgg8",
    ],
)
def test_recipes_run_end_to_end_on_fake_cifar(train, tmp_path_factory, name):
    from kdlab.data.cifar import write_fake_cifar

    root = tmp_path_factory.getbasetemp() / "fake-cifar"
    if not (root / "cifar-100-python").exists():
        write_fake_cifar(root, classes=100, n_train=200, n_test=50)
    # FAST (conftest) already cuts the run to 3 batches of 1 epoch, teacher included
    # measure_speed=false: latency at batch 256 of a CIFAR teacher takes minutes on a CPU
    r = train(
        [
            f"experiments=cifar100/{name}",
            f"data.root={root}",
            "data.batch_size=16",
            "teacher.batch_size=16",
            "measure_speed=false",
        ]
    )
    assert (
        r["data"] == "cifar100"
        and r["experiment"] == f"cifar100/{name}"
        and r["published"]["source"]
        and len(r["student"]["per_class_acc"]) == 100
    )
    assert r["efficiency"]["latency_ms"] is None and r["efficiency"]["throughput"] is None  # measure_speed=false
    _, teacher, student = ROWS[name]
    assert (r["student"]["arch"], r["teacher"]["arch"]) == (arch(student), arch(teacher))
    assert r["published"] == OmegaConf.to_container(resolved(name).published, resolve=True)  # numbers, resolved
