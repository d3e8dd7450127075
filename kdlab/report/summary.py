"""The short, readable summary printed at the end of a run."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _num(x, fmt: str = "{:,}") -> str:
    return "-" if x is None else fmt.format(x)


def print_summary(results: dict, results_path, console: Console | None = None) -> None:
    console = console or Console(soft_wrap=True)  # long paths stay on one line
    title = f"kdlab {results['task']}: {results['data']}"
    if results["task"] == "distill":
        title += f", {results['strategy']} / {results['method']}, seed {results['seed']}"
    table = Table(title=title, title_justify="left")
    for col in ("model", "arch", "params", "test acc", "val acc (best)", "ECE", "latency b=1"):
        table.add_column(col, justify="left" if col in ("model", "arch") else "right")
    eff = results["efficiency"]
    for role, latency in (("teacher", eff["teacher_latency_ms"]), ("student", eff["latency_ms"])):
        r = results.get(role)
        if r:
            table.add_row(
                role,
                r["arch"],
                _num(r["params"]),
                _pct(r["test_acc"]),
                _pct(r.get("val_acc_best")),
                _num(r.get("ece"), "{:.3f}"),
                _num(latency, "{:.2f} ms"),
            )
    console.print(table)
    fid = results.get("fidelity")
    if fid:
        console.print(
            f"agreement with teacher {_pct(fid['agreement'])}, KL(teacher||student) {fid['kl']:.3f}, "
            f"param ratio {eff['param_ratio']:.2f}"
        )
    console.print(f"wall {results['wall_s']:.1f} s; results: {results_path}")
    wandb = results.get("wandb")
    if wandb:
        sync = f" (upload: wandb sync {wandb['run_dir']})" if wandb["mode"] == "offline" else ""
        console.print(f"W&B {wandb['mode']} run {wandb['run_dir']}{sync}")
