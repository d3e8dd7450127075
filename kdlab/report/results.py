"""results.json — the record of one run that kdlab-compare, sweeps and the demo read back."""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

from kdlab.files import publish
from kdlab.models import count_params
from kdlab.report.metrics import (
    accuracy,
    agreement,
    expected_calibration_error,
    latency_ms,
    mean_kl,
    per_class_accuracy,
    predict,
    state_size_mb,
)

RESULTS_FILE = "results.json"
#: Keys every results.json has (see DESIGN.md); more may follow them.
REQUIRED_KEYS = (
    "task",
    "strategy",
    "method",
    "data",
    "seed",
    "teacher",
    "student",
    "fidelity",
    "bias",
    "calibration",
    "efficiency",
    "wall_s",
    "overrides",
    "wandb",
)


def _r(x: float | None, digits: int = 6) -> float | None:
    """Round for the record: float32 metrics carry noise past the 7th digit."""
    return None if x is None else round(x, digits)


def model_report(model: nn.Module, arch: str, datamodule) -> tuple[dict, Tensor]:
    """({arch, params, size_mb, test_acc, ece, per_class_acc}, test logits (n, c)) of a model on the test set."""
    logits, target = predict(model, datamodule)
    report = {
        "arch": arch,
        "params": count_params(model),
        "size_mb": _r(state_size_mb(model), 6),
        "test_acc": _r(accuracy(logits, target)),
        "ece": _r(expected_calibration_error(logits, target)),
        "per_class_acc": [_r(a, 4) for a in per_class_accuracy(logits, target, datamodule.num_classes)],
    }
    return report, logits


def speed(model: nn.Module | None, input_shape) -> dict:
    """CPU latency at batch 1 and 256 (median of repeats, ms) and throughput at 256 (inputs/s)."""
    if model is None:
        return {"b1": None, "b256": None, "throughput": None}
    b1 = latency_ms(model, input_shape, batch_size=1)
    b256 = latency_ms(model, input_shape, batch_size=256, repeats=10, warmup=2)
    return {"b1": _r(b1, 4), "b256": _r(b256, 4), "throughput": round(256 / (b256 / 1e3), 1)}


def bias_transfer(student: dict | None, teacher: dict | None, worst: int = 3) -> dict | None:
    """Per-class accuracy gaps (teacher - student) and the classes where the student falls furthest behind."""
    if not student or not teacher:
        return None
    gaps = [
        None if s is None or t is None else _r(t - s, 4)
        for s, t in zip(student["per_class_acc"], teacher["per_class_acc"])
    ]
    ranked = sorted((g, c) for c, g in enumerate(gaps) if g is not None)[::-1][:worst]
    return {
        "per_class_gap": gaps,
        "worst_classes": [
            {
                "class": c,
                "teacher": teacher["per_class_acc"][c],
                "student": student["per_class_acc"][c],
                "gap": g,
            }
            for g, c in ranked
        ],
    }


def evaluate(
    student: nn.Module | None,
    student_arch: str | None,
    teacher: nn.Module | None,
    teacher_arch: str | None,
    datamodule,
    measure_speed: bool = True,
) -> dict:
    """The teacher/student/fidelity/bias/calibration/efficiency sections of results.json
    (a section or model that does not apply is None). All on the test set; latency on the
    models' device, unless ``measure_speed`` is false (latencies and throughputs are then None)."""
    s, s_logits = model_report(student, student_arch, datamodule) if student is not None else (None, None)
    t, t_logits = model_report(teacher, teacher_arch, datamodule) if teacher is not None else (None, None)
    both = s is not None and t is not None
    shape = datamodule.input_shape
    s_speed, t_speed = (speed(m if measure_speed else None, shape) for m in (student, teacher))
    ratio = lambda a, b: _r(a / b, 4) if a is not None and b else None  # noqa: E731
    return {
        "teacher": t,
        "student": s,
        "fidelity": {
            "agreement": _r(agreement(s_logits, t_logits)),
            "kl": _r(mean_kl(t_logits, s_logits)),
            "retained": ratio(s["test_acc"], t["test_acc"]),  # the fraction of the teacher's accuracy kept
        }
        if both
        else None,
        "bias": bias_transfer(s, t),
        "calibration": {"ece": (s or t)["ece"], "teacher_ece": t["ece"] if t else None},
        "efficiency": {
            "param_ratio": _r(s["params"] / t["params"]) if both else None,
            "latency_ms": s_speed["b1"],
            "teacher_latency_ms": t_speed["b1"],
            "latency_ms_b256": s_speed["b256"],
            "teacher_latency_ms_b256": t_speed["b256"],
            "throughput": s_speed["throughput"],
            "teacher_throughput": t_speed["throughput"],
            "compression": ratio(t["params"], s["params"]) if both else None,  # teacher params / student params
            "speedup": ratio(t_speed["b1"], s_speed["b1"]),  # teacher latency / student latency, batch 1
            "speedup_b256": ratio(t_speed["b256"], s_speed["b256"]),
        },
    }


def best_checkpoint_accuracy(model: nn.Module, checkpoint: str | None, prefix: str, datamodule) -> float | None:
    """Test accuracy of ``model`` with the weights it has in the Lightning ``checkpoint`` (under
    ``prefix`` of its state_dict): the "best epoch" protocol, chosen on validation (the CRD/DKD
    tables take the best test epoch instead). None without that checkpoint."""
    if not checkpoint or not Path(checkpoint).is_file():
        return None
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    best = copy.deepcopy(model)
    best.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    logits, target = predict(best, datamodule)
    return _r(accuracy(logits, target))


def finite_or_null(value):
    """``value`` with every NaN / infinite float replaced by None (strict JSON has neither; a run
    without validation has no best validation accuracy)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(v) for v in value]
    return value


#: How far above chance (1 / classes, relative) a test accuracy still counts as chance level.
CHANCE_MARGIN = 0.2
#: A class the model gets right on more than this share of its test inputs is one it predicts.
PREDICTED = 0.05


def divergence_warning(results: dict, num_classes: int) -> str | None:
    """A warning when the trained model of a finished run (the student; the teacher for
    ``task=teacher``) is at chance level: its test accuracy within ``CHANCE_MARGIN`` of
    ``1 / num_classes``, or it predicts a single class for (almost) every input, which scores the
    share of that class however unbalanced the test set is (at most the majority-class rate).
    The loss stayed finite (a non-finite loss stops the run), so this is the divergence that would
    otherwise pass silently, e.g. ``student.optimizer.lr=1e6``. None for a run that learned."""
    role = "student" if results.get("student") else "teacher"
    trained = results.get(role) or {}
    acc = trained.get("test_acc")
    if acc is None or num_classes < 2:
        return None
    chance = 1.0 / num_classes
    per_class = [a for a in trained.get("per_class_acc") or [] if a is not None]
    predicted = sum(a > PREDICTED for a in per_class)
    collapsed = len(per_class) == num_classes and predicted <= 1
    if acc > chance * (1 + CHANCE_MARGIN) and not collapsed:
        return None
    how = "predicts one class for almost every input" if collapsed else "is no better than guessing"
    return (
        f"the {role} {how}: test accuracy {100 * acc:.1f}% with {num_classes} classes (chance "
        f"{100 * chance:.1f}%), though its loss stayed finite; the training diverged: lower "
        f"{role}.optimizer.lr or the loss weights, and check the data"
    )


def write_results(results: dict, output_dir: str | Path) -> Path:
    """Write results.json atomically into the run directory (strict JSON: no NaN or Infinity),
    with the mode of any other output (not the 0600 of a temporary file)."""
    path = Path(output_dir) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(finite_or_null(results), f, indent=2, allow_nan=False)
            f.write("\n")
        publish(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def read_results(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
