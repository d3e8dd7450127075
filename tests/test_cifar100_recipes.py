"""Every CIFAR-100 recipe composes, and its resolved settings equal the table in its README."""

from pathlib import Path

import pytest

from kdlab import ROOT
from tests.conftest import compose_cfg

README = ROOT / "experiments" / "cifar100" / "README.md"


def table_rows() -> list[dict]:
    lines = [line for line in README.read_text().splitlines() if line.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in line.strip("|").split("|")))) for line in lines[1:]]


ROWS = table_rows()
FILES = sorted(p.stem for p in (ROOT / "experiments" / "cifar100").glob("*.yaml"))


def test_the_table_lists_every_recipe_file():
    assert sorted(r["file"] for r in ROWS) == FILES
    assert sum(r["method"] not in ("teacher", "none") for r in ROWS) == 11 * 6  # 11 pairs x 6 methods


def number(text: str):
    return int(text) if text.isdigit() else float(text)


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_recipe_resolves_to_its_table_row(row):
    cfg = compose_cfg([f"experiments=cifar100/{row['file']}"])
    assert cfg.data._target_ == "kdlab.data.CIFAR" and cfg.data.classes == 100
    if row["method"] == "teacher":
        model, epochs, batch = cfg.teacher, cfg.teacher.max_epochs, cfg.teacher.batch_size
        assert cfg.task == "teacher" and cfg.teacher.arch == row["teacher"]
    else:
        model, epochs, batch = cfg.student, cfg.trainer.max_epochs, cfg.data.batch_size
        assert cfg.task == "distill" and cfg.student.arch == row["student"] and cfg.method.name == row["method"]
        if row["teacher"] != "-":
            assert cfg.teacher.arch == row["teacher"]
    opt, sched = model.optimizer, model.scheduler
    assert opt._target_ == "torch.optim.SGD" and opt.lr == float(row["lr"])
    assert (opt.momentum, opt.weight_decay) == (0.9, 0.0005)
    assert sched._target_.endswith("MultiStepLR") and list(sched.milestones) == [150, 180, 210] and sched.gamma == 0.1
    assert (epochs, batch) == (int(row["epochs"]), int(row["batch"]))
    for item in row["weights"].split() if row["weights"] != "-" else []:
        key, value = item.split("=")
        term, attr = key.split(".")
        assert cfg.method.terms[term][attr] == number(value), key
    assert set(cfg.method.terms) == {i.split(".")[0] for i in row["weights"].split()} or row["weights"] == "-"
    for column, key in (
        ("published teacher", "teacher_acc"),
        ("published student", "student_acc"),
        ("published method", "method_acc"),
    ):
        expected = None if row[column] == "-" else round(float(row[column]) / 100, 4)
        assert cfg.published.get(key) == (pytest.approx(expected) if expected is not None else None), column


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
    row = next(row for row in ROWS if row["file"] == name)
    assert (r["student"]["arch"], r["teacher"]["arch"]) == (row["student"], row["teacher"])
