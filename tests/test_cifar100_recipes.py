"""The CIFAR-100 recipes (experiments/cifar100/) are the files kdlab.recipes generates, follow the
CRD / DKD benchmark protocol, carry the transcribed published numbers with their source and
protocol, cover every number of the sources and nothing else, and their README's tables are the
ones kdlab.recipes reads from them. The 2022-2024 rows (LS-KD's table, KD+DOT, SimKD) likewise,
with the values their authors set per pair restated here from the sources."""

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

NEW = R.new_cells()  # (kind, teacher, student) -> the number a 2022-2024 recipe cites

# Every file the folder should hold: name -> (method, or "teacher" for teacher_ files; teacher; student).
BENCH_ROWS = {
    **{f"teacher_{t}": ("teacher", t, None) for t in TEACHERS},
    **{f"none_{s}": ("none", None, s) for s in STUDENTS},
    **{f"{m}_{t}_{s}": (m, t, s) for m, t, s in CELLS},
    **{f"dist_{t}_{s}": ("dist", t, s) for t, s in DKD_PAIRS},
}
# The 2022-2024 rows: name -> (recipe kind, teacher, student).
NEW_ROWS = {f"{k}_{t}_{s}": (k, t, s) for k, t, s in NEW}
ROWS = {**BENCH_ROWS, **NEW_ROWS}
BENCH_FILES = [f for f in FILES if f in BENCH_ROWS]
NEW_FILES = [f for f in FILES if f not in BENCH_ROWS]

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
LR_001 = {"mobilenetv2", "shufflenetv1", "shufflenetv2", "shufflenetv2_1_5"}  # students trained at lr 0.01, not 0.05
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
    kinds = [m if m in ("teacher", "none", "dist") else "distill" for m, _, _ in BENCH_ROWS.values()]
    # CRD README: 7 x 13 - 1 (FSP WRN-40-1) + 6 x 12 (no FSP); DKD paper: 11 x 3; DIST: 11
    assert [kinds.count(k) for k in ("distill", "dist", "teacher", "none")] == [90 + 72 + 33, 11, 6, 9]
    # LS-KD README: 14 pairs x 6 rows (KD+LS, CTKD, CTKD+LS, DKD+LS, MLKD, MLKD+LS); DOT: 3; SimKD: 3 x 3 factors
    kinds = [k for k, _, _ in NEW_ROWS.values()]
    assert {k: kinds.count(k) for k in R.NEW_KINDS} == {
        **dict.fromkeys(("kd_ls", "ctkd", "ctkd_ls", "dkd_ls", "mlkd", "mlkd_ls"), 14),
        "kd_dot": 3,
        **dict.fromkeys(("simkd", "simkd_f4", "simkd_f8"), 3),
    }


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


@pytest.mark.parametrize("name", BENCH_FILES)
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


@pytest.mark.parametrize("name", BENCH_FILES)
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
@pytest.mark.parametrize("name", [n for n in BENCH_FILES if not n.startswith(("teacher_", "none_"))])
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


# ---------------------------------------------------------------- the 2022-2024 rows

# Restated from the sources (not read from kdlab.recipes). LS-KD (sunshangquan/logit-standardization-KD):
# the README's tables 1-2 in their column order, and the name of the log each "+Ours" number links to,
# KD_TYPE,TEACHER,STUDENT,BASE_TEMPERATURE,KD_WEIGHT[,DKD BETA]: (T, weight[, beta]) per pair.
LS_PAIRS = [
    ("resnet32x4", "resnet8x4"),
    ("vgg13", "vgg8"),
    ("wrn_40_2", "wrn_40_1"),
    ("wrn_40_2", "wrn_16_2"),
    ("resnet56", "resnet20"),
    ("resnet110", "resnet32"),
    ("resnet110", "resnet20"),
    ("resnet32x4", "shufflenetv2"),
    ("resnet32x4", "wrn_16_2"),
    ("resnet32x4", "wrn_40_2"),
    ("wrn_40_2", "resnet8x4"),
    ("wrn_40_2", "mobilenetv2"),
    ("vgg13", "mobilenetv2"),
    ("resnet50_cifar", "mobilenetv2"),
]
KD_LS = dict(zip(LS_PAIRS, [(2, 9), (3, 9), (2, 9), (2, 9), (2, 9), (2, 9), (4, 12)] + [(2, 9), (3, 9), (3, 9)]
                 + [(2, 9), (3, 9), (3, 9), (3, 1)]))  # fmt: skip
# DKD+LS: beta 8.0 where the log name has none (configs/cifar100/dkd/*.yaml set none: mdistiller's default)
DKD_LS = dict(zip(LS_PAIRS, [(2, 9, 8), (2, 15, 2), (2, 12, 2), (2, 12, 2), (3, 18, 2), (2, 15, 2), (2, 15, 2)]
                  + [(2, 9, 8), (2, 9, 2), (2, 9, 8), (2, 18, 2), (2, 15, 2), (3, 9, 2), (2, 15, 2)]))  # fmt: skip
# MLKD+LS: no log for ResNet56 -> ResNet20 and WRN-40-2 -> MobileNetV2: tools/train.py's defaults, 2 and 9
MLKD_LS = {**dict.fromkeys(LS_PAIRS, (2, 9)), **dict.fromkeys([LS_PAIRS[1], LS_PAIRS[7], LS_PAIRS[12]], (2, 6))}
# (lr, epochs): MLKD's configs/cifar100/ours/*.yaml where it has the pair, else LS-KD's configs/cifar100/mlkd
MLKD_SCHEDULE = {
    **dict.fromkeys(LS_PAIRS[:6], (0.025, 240)),
    ("resnet32x4", "shufflenetv2"): (0.01, 960),
    ("vgg13", "mobilenetv2"): (0.01, 480),
    ("resnet50_cifar", "mobilenetv2"): (0.01, 480),
    **dict.fromkeys([LS_PAIRS[6], LS_PAIRS[8], LS_PAIRS[9], LS_PAIRS[10]], (0.025, 480)),
    ("wrn_40_2", "mobilenetv2"): (0.005, 480),
}
MLKD_LS_SCHEDULE = {  # LS-KD's configs/cifar100/mlkd/*.yaml (their logs print the same lr and epochs)
    **dict.fromkeys(LS_PAIRS, (0.025, 480)),
    ("vgg13", "vgg8"): (0.01, 480),
    ("resnet32x4", "shufflenetv2"): (0.01, 960),
    ("wrn_40_2", "mobilenetv2"): (0.005, 480),
    ("vgg13", "mobilenetv2"): (0.01, 480),
    ("resnet50_cifar", "mobilenetv2"): (0.01, 480),
}
DOT_LR = {("resnet32x4", "resnet8x4"): 0.05, ("vgg13", "vgg8"): 0.05, ("resnet32x4", "shufflenetv2"): 0.01}
SIMKD = {"simkd": 2, "simkd_f4": 4, "simkd_f8": 8}
SIMKD_STUDENTS = {"resnet8x4": 73.09, "vgg8": 70.46, "shufflenetv2_1_5": 74.15}  # the SimKD README's Student row
METHOD_OF = {"kd_ls": "kd", "dkd_ls": "dkd", "ctkd": "ctkd", "ctkd_ls": "ctkd", "mlkd": "mlkd", "mlkd_ls": "mlkd"}
METHOD_OF |= {"kd_dot": "kd", **dict.fromkeys(SIMKD, "simkd")}


def expected_new(kind: str, teacher: str, student: str) -> dict:
    """(key -> value) a 2022-2024 recipe sets, restated from the sources: dotted keys from the top."""
    pair, terms = (teacher, student), "method.terms"
    if kind == "kd_ls":
        t, w = KD_LS[pair]
        return {f"{terms}.kd.standardize": True, f"{terms}.kd.temperature": t, f"{terms}.kd.weight": w}
    if kind == "dkd_ls":
        t, w, beta = DKD_LS[pair]
        return {
            f"{terms}.dkd.standardize": True,
            f"{terms}.dkd.temperature": t,
            f"{terms}.dkd.alpha": w,
            f"{terms}.dkd.beta": beta * w,
        }
    if kind == "ctkd_ls":
        return {f"{terms}.kd.standardize": True, f"{terms}.kd.weight": 9}
    if kind in ("mlkd", "mlkd_ls"):
        lr, epochs = (MLKD_SCHEDULE if kind == "mlkd" else MLKD_LS_SCHEDULE)[pair]
        out = {"data.strong_view": True, "student.optimizer.lr": lr, "student.max_epochs": epochs}
        if kind == "mlkd_ls":
            t, w = MLKD_LS[pair]
            out |= {f"{terms}.mlkd.standardize": True, f"{terms}.mlkd.temperature": t, f"{terms}.mlkd.weight": w}
        return out
    if kind == "kd_dot":
        return {
            "student.optimizer._target_": "kdlab.optim.DOT",
            "student.optimizer._partial_": True,
            "student.optimizer.lr": DOT_LR[pair],
            "student.optimizer.momentum": 0.9,
            "student.optimizer.delta": 0.075,
            "student.optimizer.weight_decay": 0.0005,
        }
    if kind in SIMKD:
        return {f"{terms}.simkd.factor": SIMKD[kind]}
    return {}  # ctkd: the method preset as it is


def flat(node, prefix: str = "") -> dict:
    """A nested dict as {dotted key: value}."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_the_new_transcription_agrees_with_the_tables_it_reprints():
    ls = {(c.method, c.teacher, c.student): c.value for n, t in R.LSKD_README.items() for c in R.parse(t, "ls", n)}
    assert {(t, s) for _, t, s in ls} == set(LS_PAIRS) and {m for m, _, _ in ls} == {*R.LSKD_ROW_NAMES, "kd", "dkd"}
    # its KD row is the CRD README's, its DKD row mdistiller's, where those have the pair (DKD WRN-40-2 -> WRN-16-2:
    # 76.24 in the LS-KD README, 76.23 in mdistiller's)
    kd = [(t, s) for m, t, s in ls if m == "kd" and ("kd", t, s) in CELLS]
    assert len(kd) == 10 and all(ls["kd", t, s] == CELLS["kd", t, s].value for t, s in kd)
    dkd = [(t, s) for m, t, s in ls if m == "dkd" and ("dkd", t, s) in CELLS]
    assert len(dkd) == 9
    assert {(t, s) for t, s in dkd if ls["dkd", t, s] != CELLS["dkd", t, s].value} == {("wrn_40_2", "wrn_16_2")}
    # the CTKD README's +CTKD row is the LS-KD README's CTKD row on its 6 pairs
    ctkd = [c for c in R.parse(R.CTKD_README, "ctkd", 1) if c.method == "ctkd"]
    assert len(ctkd) == 6 and all(ls["ctkd", c.teacher, c.student] == c.value for c in ctkd)
    # DOT's KD row is the CRD README's; SimKD's teacher is the CRD README's ResNet32x4
    assert all(
        c.value == CELLS["kd", c.teacher, c.student].value for c in R.parse(R.DOT_README, "d", 1) if c.method == "kd"
    )
    assert {c.value for c in R.parse(R.SIMKD_README, "s", 1) if c.method == "teacher"} == {TEACHERS["resnet32x4"][0]}
    assert R.simkd_baselines() == SIMKD_STUDENTS
    # every recipe kind cites the rows of its source, nothing else
    assert {k for k, _, _ in NEW} == set(R.NEW_KINDS) and len(R.NEW_LABELS) == len(set(R.NEW_LABELS))


def test_new_spot_checks_against_the_sources():
    """A few numbers, read again from the LS-KD, mdistiller and SimKD READMEs."""
    assert NEW["kd_ls", "resnet32x4", "resnet8x4"].value == 76.62
    assert NEW["dkd_ls", "resnet50_cifar", "mobilenetv2"].value == 70.45
    assert NEW["ctkd", "wrn_40_2", "resnet8x4"].value == 74.61
    assert NEW["ctkd_ls", "resnet110", "resnet20"].value == 71.39
    assert NEW["mlkd", "resnet32x4", "wrn_40_2"].value == 79.26
    assert NEW["mlkd_ls", "resnet56", "resnet20"].value == 72.33
    assert NEW["kd_dot", "vgg13", "vgg8"].value == 73.77
    assert NEW["simkd", "resnet32x4", "shufflenetv2_1_5"].value == 79.54
    assert NEW["simkd_f8", "resnet32x4", "resnet8x4"].value == 76.73


@pytest.mark.parametrize("name", NEW_FILES)
def test_new_recipe_file_sets_the_authors_values_and_cites_its_number(name):
    """The file as written (no composition): its defaults, the values it sets, its published block."""
    assert name in NEW_ROWS, f"{name}.yaml is not a row of the 2022-2024 tables"
    kind, teacher, student = NEW_ROWS[name]
    text = OmegaConf.to_container(OmegaConf.load(FOLDER / f"{name}.yaml"))
    assert text.pop("defaults") == [
        "/benchmark/crd_cifar100/distill",
        {"override /teacher": teacher},
        {"override /student": student},
        {"override /method": METHOD_OF[kind]},
    ]
    published = text.pop("published")
    assert flat(text) == expected_new(kind, teacher, student)
    cell = NEW[kind, teacher, student]
    expected = {"method_acc": round(cell.value / 100, 4), "source": cell.source, "protocol": cell.protocol}
    if kind in SIMKD:
        expected["student_acc"] = round(SIMKD_STUDENTS[student] / 100, 4)
    assert published == expected
    family = {"kd_dot": "the mdistiller README", **dict.fromkeys(SIMKD, "the SimKD README")}
    assert published["source"].startswith(family.get(kind, "the LS-KD README"))
    assert "not stated" in published["protocol"]
    if kind in ("mlkd", "mlkd_ls"):
        assert "strong" in published["protocol"]
    if kind == "ctkd" and (teacher, student) in {(c.teacher, c.student) for c in R.parse(R.CTKD_README, "c", 1)}:
        assert "the CTKD README" in published["source"]


def test_new_student_presets():
    """WRN-40-2 as a student (the CRD README's WRN-40-2 trained alone, 75.61); ShuffleNetV2 x1.5 (SimKD's
    ShuffleV2_1_5: stage widths 176/352/704, 1024 features, lr 0.01) with the SimKD README's baseline."""
    from kdlab.models import create_model

    wrn = compose_cfg(["student=wrn_40_2"]).student
    assert (wrn.arch, wrn.published_acc, wrn.optimizer.lr, wrn.max_epochs) == ("wrn_40_2", 0.7561, 0.05, 240)
    shn = compose_cfg(["student=shufflenetv2_1_5"]).student
    assert (shn.arch, list(shn.kwargs.widths), shn.optimizer.lr) == ("shufflenetv2", [176, 352, 704, 1024], 0.01)
    assert shn.published_acc == 0.7415
    model = create_model(shn.arch, 100, (3, 32, 32), **shn.kwargs)
    assert model.num_features == 1024
    with torch.no_grad():
        model.eval()
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 100)
        x = torch.relu(model.bn1(model.conv1(torch.zeros(1, 3, 32, 32))))
        stages = [x := layer(x) for layer in (model.layer1, model.layer2, model.layer3)]
    assert [tuple(f.shape[1:]) for f in stages] == [(176, 16, 16), (352, 8, 8), (704, 4, 4)]


@pytest.mark.parametrize("name", NEW_FILES)
def test_new_recipe_composes_with_its_method(name):
    """The file composed as kdlab-train composes it, then validated (every term argument exists and
    type-checks, MLKD has its strong view, DOT its optimizer): needs the methods' presets
    (conf/method/{ctkd,mlkd,simkd}.yaml) and classes."""
    from kdlab.config import validate

    kind, teacher, student = NEW_ROWS[name]
    cfg = resolved(name)
    assert cfg.task == "distill" and cfg.method.name == METHOD_OF[kind]
    assert cfg.student.arch == arch(student if student != "shufflenetv2_1_5" else "shufflenetv2")
    assert cfg.teacher.arch == arch(teacher)
    expected = copy.deepcopy(method_defaults(METHOD_OF[kind]))
    values = expected_new(kind, teacher, student)
    for key, value in values.items():
        if key.startswith("method."):
            node = expected
            *parents, leaf = key.split(".")[1:]
            for part in parents:
                node = node[part]
            node[leaf] = value
    assert OmegaConf.to_container(cfg.method) == expected
    lr = values.get("student.optimizer.lr", 0.01 if student in LR_001 else 0.05)
    epochs = values.get("student.max_epochs", 240)
    opt, sched = cfg.student.optimizer, cfg.student.scheduler
    assert (opt.lr, opt.momentum, opt.weight_decay, cfg.trainer.max_epochs, cfg.data.batch_size) == (
        lr,
        0.9,
        0.0005,
        epochs,
        64,
    )
    assert opt._target_ == values.get("student.optimizer._target_", "torch.optim.SGD")
    assert (list(sched.milestones), sched.gamma, cfg.data.val_fraction) == ([150, 180, 210], 0.1, 0)
    assert bool(cfg.data.get("strong_view")) == (kind in ("mlkd", "mlkd_ls"))
    if kind in SIMKD:  # the SimKD loss alone: no cross-entropy, no KD
        assert list(cfg.method.terms) == ["simkd"] and cfg.method.terms.simkd.weight == 1.0
    published = OmegaConf.to_container(cfg.published, resolve=True)
    assert published["teacher_acc"] == round(TEACHERS[teacher][0] / 100, 4)
    baseline = SIMKD_STUDENTS[student] if kind in SIMKD else STUDENTS.get(student, (75.61,))[0]  # wrn_40_2: 75.61
    assert published["student_acc"] == round(baseline / 100, 4)
    cfg = copy.deepcopy(cfg)  # the composed config is shared (R.resolved caches it)
    cfg.paths.output_dir = "unused"
    validate(cfg)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("ctkd_ls_resnet56_resnet20", marks=pytest.mark.slow),  # CTKD runs end to end on MNIST-1D
        "mlkd_ls_resnet56_resnet20",
        "kd_dot_vgg13_vgg8",
        pytest.param("simkd_resnet32x4_resnet8x4", marks=pytest.mark.slow),  # SimKD: on MNIST-1D and digits
    ],
)
def test_new_recipes_run_end_to_end_on_fake_cifar(train, tmp_path_factory, name):
    """One row per new mechanism runs (3 batches, FAST): the learned temperature, the strong view, the DOT
    optimizer, SimKD's deployable student (arch simkd)."""
    from kdlab.data.cifar import write_fake_cifar

    root = tmp_path_factory.getbasetemp() / "fake-cifar"
    if not (root / "cifar-100-python").exists():
        write_fake_cifar(root, classes=100, n_train=200, n_test=50)
    overrides = [f"data.root={root}", "data.batch_size=16", "teacher.batch_size=16", "measure_speed=false"]
    r = train([f"experiments=cifar100/{name}", *overrides])
    kind, teacher, student = NEW_ROWS[name]
    assert r["experiment"] == f"cifar100/{name}" and len(r["student"]["per_class_acc"]) == 100
    assert r["student"]["arch"] == ("simkd" if kind in SIMKD else arch(student)) and r["teacher"]["arch"] == arch(
        teacher
    )
    assert r["published"] == OmegaConf.to_container(resolved(name).published, resolve=True)
