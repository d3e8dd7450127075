"""The deployable student: its weights alone (no teacher, heads, regressors or memory banks)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from kdlab.errors import KdlabError
from kdlab.models.checkpoint import save_weights

STUDENT_WEIGHTS, STUDENT_CONFIG, STUDENT_ONNX = "student.safetensors", "student.json", "student.onnx"


def export_student(
    model: nn.Module,
    arch: str,
    kwargs: dict,
    num_classes: int,
    input_shape,
    out_dir: Path,
    data: dict,
    onnx: bool = False,
) -> dict:
    """Write ``student.safetensors`` (with the metadata ``load_weights`` needs), ``student.json``
    (arch, kwargs, classes, input shape and the data config whose preprocessing the inputs
    need) and, with ``onnx``, ``student.onnx`` (dynamic batch). Returns what results.json records."""
    out_dir = Path(out_dir)
    model = model.cpu().eval()
    path = save_weights(model, out_dir / STUDENT_WEIGHTS, arch, num_classes, input_shape, kwargs)
    config = {
        "arch": arch,
        "kwargs": kwargs,
        "num_classes": num_classes,
        "input_shape": list(input_shape),
        "data": data,
    }
    (out_dir / STUDENT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    record = {"safetensors": str(path), "size_mb": round(path.stat().st_size / 1e6, 6), "onnx": None}
    if onnx:
        record["onnx"] = str(export_onnx(model, input_shape, out_dir / STUDENT_ONNX))
    return record


def export_onnx(model: nn.Module, input_shape, path: Path) -> Path:
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as e:
        raise KdlabError("ONNX export needs onnx and onnxscript: pip install -e '.[onnx]'") from e
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        model,
        (torch.zeros(2, *input_shape),),
        str(path),
        input_names=["x"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: batch}},
        dynamo=True,
        verbose=False,
    )
    return path
