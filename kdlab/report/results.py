"""results.json — the record of one run that kdlab-compare, sweeps and the demo read back."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from torch import Tensor, nn

from kdlab.models import count_params
from kdlab.report.metrics import accuracy, agreement, expected_calibration_error, latency_ms, mean_kl, predict

RESULTS_FILE = "results.json"
#: Keys every results.json has (see DESIGN.md); more may follow them.
REQUIRED_KEYS = (
    "task", "strategy", "method", "data", "seed", "teacher", "student", "fidelity",
    "calibration", "efficiency", "wall_s", "overrides", "wandb",
)  # fmt: skip


def _r(x: float | None, digits: int = 6) -> float | None:
    """Round for the record: float32 metrics carry noise past the 7th digit."""
    return None if x is None else round(x, digits)


def model_report(model: nn.Module, arch: str, datamodule) -> tuple[dict, Tensor]:
    """({arch, params, test_acc, ece}, test logits (n, c)) of a model on the test set."""
    logits, target = predict(model, datamodule)
    report = {
        "arch": arch,
        "params": count_params(model),
        "test_acc": _r(accuracy(logits, target)),
        "ece": _r(expected_calibration_error(logits, target)),
    }
    return report, logits


def evaluate(
    student: nn.Module | None,
    student_arch: str | None,
    teacher: nn.Module | None,
    teacher_arch: str | None,
    datamodule,
) -> dict:
    """The teacher/student/fidelity/calibration/efficiency sections of results.json
    (a section or model that does not apply is None)."""
    s, s_logits = model_report(student, student_arch, datamodule) if student is not None else (None, None)
    t, t_logits = model_report(teacher, teacher_arch, datamodule) if teacher is not None else (None, None)
    both = s is not None and t is not None
    shape = datamodule.input_shape
    return {
        "teacher": t,
        "student": s,
        "fidelity": {
            "agreement": _r(agreement(s_logits, t_logits)),
            "kl": _r(mean_kl(t_logits, s_logits)),
        }
        if both
        else None,
        "calibration": {"ece": (s or t)["ece"], "teacher_ece": t["ece"] if t else None},
        "efficiency": {
            "param_ratio": _r(s["params"] / t["params"]) if both else None,
            "latency_ms": _r(latency_ms(student, shape), 4) if student is not None else None,
            "teacher_latency_ms": _r(latency_ms(teacher, shape), 4) if teacher is not None else None,
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
