"""The CIFAR-100 recipes (experiments/cifar100/) are the files kdlab.recipes generates, follow the
CRD / DKD benchmark protocol, carry the transcribed published numbers with their source and
protocol, cover every number of the sources and nothing else, and their README's tables are the
ones kdlab.recipes reads from them."""

import copy
from functools import cache
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from kdlab import ROOT
from kdlab import recipes as R
from tests.conftest import compose_cfg

FOLDER = ROOT / "experiments" / "cifar100"
FILES = sorted(p.stem for p in FOLDER.glob("*.yaml"))
CELLS = R.published_cells()  # (method, teacher, student) -> the cell a distillation recipe cites
PAIRS = R.pairs()
TEACHERS, STUDENTS = R.baselines("teacher"), R.baselines("student")
DKD_PAIRS = [(t, s) for m, t, s in CELLS if m == "dkd"]

# Every file the folder should hold: name -> (method, or "teacher" for teacher_ files; teacher; student).
ROWS = {
    **{f"teacher_{t}": ("teacher", t, None) for t in TEACHERS},
    **{f"none_{s}": ("none", None, s) for s in STUDENTS},
    **{f"{m}_{t}_{s}": (m, t, s) for m, t, s in CELLS},
    **{f"dist_{t}_{s}": ("dist", t, s) for t, s in DKD_PAIRS},
}

# Per-pair method values, restated from the authors' code (not read from kdlab.recipes):
# DKD's beta, mdistiller configs/cifar100/dkd/*.yaml (DKD.BETA, 8.0 where unset).
DKD_BETA = {
    ("resnet56", "resnet20"): 2.0,
    ("resnet110", "resnet32"): 2.0,
    ("resnet32x4", "resnet8x4"): 8.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0,
    ("vgg13", "vgg8"): 6.0,
    ("vgg13", "mobilenetv2"): 6.0,
    ("resnet50_cifar", "mobilenetv2"): 8.0,
    ("resnet32x4", "shufflenetv1"): 8.0,
    ("resnet32x4", "shufflenetv2"): 8.0,
    ("wrn_40_2", "shufflenetv1"): 8.0,
}
# ReviewKD's --kd-loss-weight, dvlab-research/ReviewKD CIFAR-100/script/reviewKD.sh.
REVIEWKD_WEIGHT = {
    ("wrn_40_2", "wrn_16_2"): 5.0,
    ("wrn_40_2", "wrn_40_1"): 5.0,
    ("wrn_40_2", "shufflenetv1"): 5.0,
    ("resnet32x4", "resnet8x4"): 5.0,
    ("resnet32x4", "shufflenetv1"): 5.0,
    ("resnet32x4", "shufflenetv2"): 8.0,
    ("resnet56", "resnet20"): 0.6,
    ("resnet110", "resnet32"): 1.0,
}
LR_001 = {"mobilenetv2", "shufflenetv1", "shufflenetv2"}  # students trained at lr 0.01, not 0.05
RESNET_WRN = {"resnet20", "resnet32", "resnet8x4", "wrn_16_2", "wrn_40_1"}  # RepDistiller pretrain.py's FT list


def arch(preset: str) -> str:
    return {"vgg13": "vgg13_cifar", "vgg8": "vgg8_cifar"}.get(preset, preset)


def resolved(name: str):
    return R.resolved("cifar100", name)  # composed once per process, shared with the README's tables


@cache
def method_defaults(method: str):
    return OmegaConf.to_container(compose_cfg([f"method={method}"]).method)


# ---------------------------------------------------------------- the transcription


def test_the_transcription_has_the_sources_tables():
    crd = [c for c in R.transcription() if c.source == "crd"]
    dkd = [c for c in R.transcription() if c.source == "dkd"]
    # the CRD README: 7 same-architecture pairs, 6 different-architecture ones (13, ResNet50 -> VGG8 and
    # ResNet110 -> ResNet20 included), 13 methods; FSP only in table 1, and not for WRN-40-2 -> WRN-40-1
    assert len(PAIRS) == 13 and ("resnet110", "resnet20") in PAIRS and ("resnet50_cifar", "vgg8") in PAIRS
    assert {c.method for c in crd} == {"teacher", "student", *R.CRD_METHODS}
    per_method = {m: {(c.teacher, c.student) for c in crd if c.method == m} for m in R.CRD_METHODS}
    assert all(len(per_method[m]) == 13 for m in R.CRD_METHODS if m != "fsp")
    assert per_method["fsp"] == {(c.teacher, c.student) for c in crd if c.table == 1} - {("wrn_40_2", "wrn_40_1")}
    assert all(c.value is not None for c in crd)
    # the DKD paper: 11 pairs, all among the CRD README's
    assert len(DKD_PAIRS) == 11 and set(DKD_PAIRS) <= set(PAIRS)
    assert not {(t, s) for t, s in PAIRS} - set(DKD_PAIRS) - {("resnet110", "resnet20"), ("resnet50_cifar", "vgg8")}
    assert {c.method for c in dkd} == {"kd", *R.DKD_METHODS}
    # DKD's KD row reprints the CRD README's (a check on both transcriptions)
    crd_kd = {(c.teacher, c.student): c.value for c in crd if c.method == "kd"}
    assert all(crd_kd[c.teacher, c.student] == c.value for c in dkd if c.method == "kd")
    # every DKD number cites where it was read; the DKD row the mdistiller README
    assert all(c.via for c in dkd if c.value is not None)
    assert all(c.via == ("mdistiller",) and c.value is not None for c in dkd if c.method == "dkd")


def test_spot_checks_against_the_sources():
    """A few numbers, read again from the CRD README and the mdistiller README."""
    assert CELLS["crd", "resnet110", "resnet20"].value == 71.46
    assert CELLS["kd", "resnet50_cifar", "vgg8"].value == 73.81
    assert CELLS["fsp", "wrn_40_2", "wrn_16_2"].value == 72.91
    assert CELLS["nst", "resnet50_cifar", "vgg8"].value == 71.28
    assert CELLS["ab", "resnet32x4", "shufflenetv2"].value == 74.31
    assert CELLS["vid", "wrn_40_2", "wrn_40_1"].value == 73.30
    assert CELLS["dkd", "resnet32x4", "shufflenetv2"].value == 77.07
    assert CELLS["dkd", "resnet50_cifar", "mobilenetv2"].value == 70.35
    assert ("fsp", "wrn_40_2", "wrn_40_1") not in CELLS and ("fsp", "vgg13", "mobilenetv2") not in CELLS
    assert ("dkd", "resnet110", "resnet20") not in CELLS and ("ofd", "resnet50_cifar", "vgg8") not in CELLS
    assert TEACHERS["resnet50_cifar"] == (79.34, [2]) and STUDENTS["vgg8"] == (70.36, [1, 2])


def test_presets_carry_the_published_baselines():
    for group, table in (("teacher", TEACHERS), ("student", STUDENTS)):
        for preset, (value, _) in table.items():
            assert compose_cfg([f"{group}={preset}"])[group].published_acc == round(value / 100, 4), preset


# ---------------------------------------------------------------- the files


def test_the_folder_holds_every_number_of_the_sources_and_nothing_else():
    assert FILES == sorted(ROWS)
    kinds = [m if m in ("teacher", "none", "dist") else "distill" for m, _, _ in ROWS.values()]
    # CRD README: 7 x 13 - 1 (FSP WRN-40-1) + 6 x 12 (no FSP); DKD paper: 11 x 3; DIST: 11
    assert [kinds.count(k) for k in ("distill", "dist", "teacher", "none")] == [90 + 72 + 33, 11, 6, 9]


def test_the_files_are_the_generated_ones():
    files = R.cifar100_files()
    assert sorted(files) == FILES
    stale = [name for name, text in files.items() if (FOLDER / f"{name}.yaml").read_text() != text]
    assert not stale, f"run: python -m kdlab.recipes cifar100 --write ({len(stale)} differ, e.g. {stale[:3]})"


def expected_method(method: str, teacher: str, student: str) -> dict:
    """The method's CIFAR-100 defaults with the values its authors set for the pair."""
    expected = copy.deepcopy(method_defaults(method))
    terms = expected["terms"]
    if method == "dkd":
        terms["dkd"]["beta"] = DKD_BETA[teacher, student]
    if method in ("ab", "fsp"):
        terms[method]["init_lr"] = 0.01 if student in LR_001 else 0.05
    if method == "ft":
        terms["ft"]["init_lr"] = 0.01 if student in RESNET_WRN | LR_001 else 0.05
    if method == "reviewkd" and (teacher, student) in REVIEWKD_WEIGHT:
        terms["reviewkd"]["weight"] = REVIEWKD_WEIGHT[teacher, student]
    return expected


@pytest.mark.parametrize("name", FILES)
def test_recipe_follows_the_protocol(name):
    assert name in ROWS, f"{name}.yaml is not a row of the benchmark"
    method, teacher, student = ROWS[name]
    cfg = resolved(name)
    assert cfg.data._target_ == "kdlab.data.CIFAR" and cfg.data.classes == 100
    assert cfg.data.val_fraction == 0  # the papers train on all 50,000 training images
    if method == "teacher":
        assert cfg.task == "teacher" and cfg.teacher.arch == arch(teacher)
        model, epochs, batch, lr = cfg.teacher, cfg.teacher.max_epochs, cfg.teacher.batch_size, 0.05
    else:
        assert cfg.task == "distill" and cfg.student.arch == arch(student) and cfg.method.name == method
        assert teacher is None or cfg.teacher.arch == arch(teacher)
        model, epochs, batch = cfg.student, cfg.trainer.max_epochs, cfg.data.batch_size
        lr = 0.01 if student in LR_001 else 0.05
        assert OmegaConf.to_container(cfg.method) == expected_method(method, teacher, student)
    opt, sched = model.optimizer, model.scheduler
    assert (opt._target_, opt.lr, opt.momentum, opt.weight_decay) == ("torch.optim.SGD", lr, 0.9, 0.0005)
    assert sched._target_ == "torch.optim.lr_scheduler.MultiStepLR"
    assert (list(sched.milestones), sched.gamma) == ([150, 180, 210], 0.1)
    assert (epochs, batch) == (240, 64)


@pytest.mark.parametrize("name", FILES)
def test_recipe_records_the_published_numbers(name):
    method, teacher, student = ROWS[name]
    crd = {"protocol": R.CRD_PROTOCOL}
    if method == "teacher":
        expected = {"teacher_acc": TEACHERS[teacher][0], **crd}
    elif method == "none":
        expected = {"student_acc": STUDENTS[student][0], **crd}
    else:
        expected = {"teacher_acc": TEACHERS[teacher][0], "student_acc": STUDENTS[student][0]}
        if method == "dist":
            expected |= {"method_acc": None, "source": R.DIST_SOURCE, "protocol": "not transcribed"}
        else:
            cell = CELLS[method, teacher, student]
            expected |= {"method_acc": cell.value, "source": R.cited(cell), "protocol": R.protocol(cell)}
    expected = {k: round(v / 100, 4) if isinstance(v, float) else v for k, v in expected.items()}
    published = OmegaConf.to_container(resolved(name).published, resolve=True)
    source = published.pop("source")
    assert published == {k: v for k, v in expected.items() if k != "source"}
    if method in ("teacher", "none"):
        role = "Teacher" if method == "teacher" else "Student"
        assert source.startswith("CRD README (HobbitLong/RepDistiller README.md)") and source.endswith(f"row {role}")
    else:
        assert source == expected["source"]
        family = "CRD README" if method in R.CRD_METHODS else "DKD (Zhao" if method in R.DKD_METHODS else "not"
        assert family in source
    if method in ("dkd",):  # DKD's numbers are mdistiller's best test epoch
        assert "best test epoch" in published["protocol"]


def test_the_readme_tables_are_generated_from_the_files():
    assert R.split_readme("cifar100")[1] == R.table("cifar100"), "run: python -m kdlab.recipes cifar100 --write"


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
        and r["published"]["protocol"]
        and len(r["student"]["per_class_acc"]) == 100
    )
    assert r["efficiency"]["latency_ms"] is None and r["efficiency"]["throughput"] is None  # measure_speed=false
    _, teacher, student = ROWS[name]
    assert (r["student"]["arch"], r["teacher"]["arch"]) == (arch(student), arch(teacher))
    assert r["published"] == OmegaConf.to_container(resolved(name).published, resolve=True)  # numbers, resolved


@pytest.mark.slow  # every distillation row, CIFAR-size models on the CPU: about 2.5 minutes
@pytest.mark.parametrize("name", [n for n in FILES if not n.startswith(("teacher_", "none_"))])
def test_every_row_builds_its_taps_and_gives_finite_losses_and_gradients(name):
    """The row's models and terms as the run builds them (taps, probed connectors), one batch of
    each phase (a term's initialisation phase, then the student's), and a backward pass."""
    from kdlab.config import instantiate
    from kdlab.models import create_model
    from kdlab.strategies.offline import OfflineDistillation

    cfg = compose_cfg([f"experiments=cifar100/{name}"])
    terms = instantiate(cfg.method.terms)
    student = create_model(cfg.student.arch, 100, (3, 32, 32), **cfg.student.kwargs)
    teacher = create_model(cfg.teacher.arch, 100, (3, 32, 32), **cfg.teacher.kwargs)
    module = OfflineDistillation(student, terms, torch.optim.SGD, 100, (3, 32, 32), teacher=teacher).train()
    if "crd" in terms:
        terms["crd"].prepare(torch.arange(100).repeat(10))
    x, y, index = torch.randn(4, 3, 32, 32), torch.arange(4), torch.arange(4)
    for phase in [n for n, t in terms.items() if t.init_phase() is not None] + [None]:
        module.phase = phase
        step = module.losses(x, y, index)
        assert torch.isfinite(step.loss), step.terms
        step.loss.backward()
