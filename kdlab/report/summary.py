"""The short, readable summary printed at the end of a run."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _num(x, fmt: str = "{:,}") -> str:
    return "-" if x is None else fmt.format(x)


def print_summary(results: dict, results_path, console: Console | None = None) -> None:
    # long paths stay on one line; logs (no terminal) get room for the whole table
    console = console or Console(soft_wrap=True, width=None if sys.stdout.isatty() else 120)
    title = f"kdlab {results['task']}: {results['data']}"
    if results["task"] == "distill":
        title += f", {results['strategy']} / {results['method']}, seed {results['seed']}"
    table = Table(title=title, title_justify="left")
    for col in (
        "model",
        "arch",
        "params",
        "MB",
        "test acc",
        "val acc (best)",
        "ECE",
        "ms b=1",
        "inputs/s b=256",
    ):
        table.add_column(col, justify="left" if col in ("model", "arch") else "right")
    eff = results["efficiency"]
    speed = {
        "teacher": (eff.get("teacher_latency_ms"), eff.get("teacher_throughput")),
        "student": (eff.get("latency_ms"), eff.get("throughput")),
    }
    for role in ("teacher", "student"):
        r = results.get(role)
        if r:
            latency, throughput = speed[role]
            table.add_row(
                role,
                r["arch"],
                _num(r["params"]),
                _num(r.get("size_mb"), "{:.3g}"),
                _pct(r["test_acc"]),
                _pct(r.get("val_acc_best")),
                _num(r.get("ece"), "{:.3f}"),
                _num(latency, "{:.2f}"),
                _num(throughput, "{:,.0f}"),
            )
    console.print(table)
    fid = results.get("fidelity")
    if fid:
        console.print(
            f"keeps {_pct(fid.get('retained'))} of the teacher's accuracy, agrees on {_pct(fid['agreement'])}, "
            f"KL(teacher||student) {fid['kl']:.3f}; compression {_num(eff.get('compression'), '{:.2f}')}x "
            f"(teacher/student parameters), speed-up {_num(eff.get('speedup'), '{:.2f}')}x at batch 1"
        )
    bias = results.get("bias")
    if bias and bias["worst_classes"]:
        worst = ", ".join(f"{w['class']} ({100 * w['gap']:+.1f})" for w in bias["worst_classes"])
        console.print(f"classes where the student trails the teacher most (points): {worst}")
    export = results.get("export")
    if export:
        console.print(
            f"student exported: {export['safetensors']} ({export['size_mb']:.3g} MB)"
            + (f", {export['onnx']}" if export.get("onnx") else "")
        )
    for warning in results.get("warnings") or []:  # e.g. a run that diverged (kdlab.report.divergence_warning)
        console.print(f"warning: {warning}", style="bold yellow")
    console.print(f"wall {results['wall_s']:.1f} s; results: {results_path}")
    wandb = results.get("wandb")
    if wandb:
        sync = f" (upload: wandb sync {wandb['run_dir']})" if wandb["mode"] == "offline" else ""
        console.print(f"W&B {wandb['mode']} run {wandb['run_dir']}{sync}")
