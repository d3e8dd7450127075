"""results.json — the record of one run that kdlab-compare, sweeps and the demo read back."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from torch import nn

from kdlab.models import count_params
from kdlab.report.metrics import accuracy, agreement, expected_calibration_error, latency_ms, mean_kl, predict

RESULTS_FILE = "results.json"
#: Keys every results.json has (see DESIGN.md); more may follow them.
REQUIRED_KEYS = (
    "task", "strategy", "method", "data", "seed", "teacher", "student", "fidelity",
    "calibration", "efficiency", "wall_s", "overrides", "wandb",
)  # fmt: skip


def model_report(model: nn.Module | None, arch: str | None, datamodule) -> tuple[dict | None, dict]:
    """({arch, params, test_acc, ece}, {"logits": ...}) of a model on the test set; (None, {}) without one."""
    if model is None:
        return None, {}
    logits, target = predict(model, datamodule)
    report = {
        "arch": arch,
        "params": count_params(model),
        "test_acc": accuracy(logits, target),
        "ece": expected_calibration_error(logits, target),
    }
    return report, {"logits": logits, "target": target}


def evaluate(
    student: nn.Module | None,
    student_arch: str | None,
    teacher: nn.Module | None,
    teacher_arch: str | None,
    datamodule,
) -> dict:
    """The teacher/student/fidelity/calibration/efficiency sections of results.json."""
    s, s_out = model_report(student, student_arch, datamodule)
    t, t_out = model_report(teacher, teacher_arch, datamodule)
    shape = datamodule.input_shape
    fidelity = None
    if s and t:
        fidelity = {
            "agreement": agreement(s_out["logits"], t_out["logits"]),
            "kl": mean_kl(t_out["logits"], s_out["logits"]),
        }
    return {
        "teacher": t,
        "student": s,
        "fidelity": fidelity,
        "calibration": {"ece": (s or t)["ece"], "teacher_ece": t["ece"] if t else None},
        "efficiency": {
            "param_ratio": s["params"] / t["params"] if s and t else None,
            "latency_ms": latency_ms(student, shape) if student is not None else None,
            "teacher_latency_ms": latency_ms(teacher, shape) if teacher is not None else None,
        },
    }


def write_results(results: dict, output_dir: str | Path) -> Path:
    """Write results.json atomically into the run directory."""
    path = Path(output_dir) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json.tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_results(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
