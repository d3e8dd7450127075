"""kdlab-compare: every results.json below the given paths, grouped, as a table, a CSV and plots.

    kdlab-compare outputs/                                      # runs, multiruns and sweeps alike
    kdlab-compare outputs/multirun/2026-11-23 --by method,strategy --metric student.test_acc
    kdlab-compare outputs/ --format markdown                    # a table to paste into docs or a paper
    kdlab-compare --wandb ENTITY/PROJECT                        # the same fields from W&B (needs a login)

Groups are runs that agree on the ``--by`` keys (dotted paths into results.json); seeds and
repeats within a group give mean ± std and the count. Writes ``comparison.csv`` and three
PNG plots into ``--out`` (default: the first path): accuracy against parameters with the
Pareto front and the teachers, accuracy per group with error bars, and student against
teacher accuracy per class for the best group.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kdlab.errors import KdlabError, did_you_mean, one_line_errors
from kdlab.report.results import RESULTS_FILE

DEFAULT_BY = "data,strategy,method,student.arch"
DEFAULT_METRIC = "student.test_acc"
COLUMNS = (
    "student.test_acc",
    "student.test_acc_best_epoch",  # the best test epoch (data.val_fraction=0), the DKD / mdistiller numbers' protocol
    "student.test_acc_best_val",
    "published.method_acc",
    "published.student_acc",
    "teacher.test_acc",
    "published.teacher_acc",
    "fidelity.retained",
    "fidelity.agreement",
    "fidelity.kl",
    "calibration.ece",
    "student.params",
    "efficiency.compression",
    "efficiency.latency_ms",
    "efficiency.speedup",
)
#: The columns of the terminal table (comparison.csv and --format markdown have them all).
SHORT = (
    "student.test_acc",
    "student.test_acc_best_epoch",
    "published.method_acc",
    "published.student_acc",
    "teacher.test_acc",
    "fidelity.agreement",
    "calibration.ece",
    "student.params",
    "efficiency.latency_ms",
)
PERCENT = ("acc", "agreement", "retained", "ece")


def get(record: dict, dotted: str):
    """The value at a dotted path of a results dict, or None."""
    value = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


#: The numbers of a model's section that the table, the CSV and the plots read.
MODEL_NUMBERS = ("params", "test_acc", "test_acc_best_epoch", "test_acc_best_val", "val_acc_best", "ece", "size_mb")
SECTIONS = ("fidelity", "calibration", "efficiency", "published")


def _kind(value) -> str:
    return {list: "a list", dict: "a mapping", str: "a str", bool: "a bool"}.get(type(value), type(value).__name__)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def problem(record) -> str | None:
    """Why a results.json cannot be compared (a field of an unexpected type), or None."""
    if not isinstance(record, dict):
        return f"holds {_kind(record)}, not a mapping"
    if not (record.get("student") or record.get("teacher")):
        return "no student or teacher section"
    for role in ("student", "teacher"):
        section = record.get(role)
        if section is None:
            continue
        if not isinstance(section, dict):
            return f"{role} is {_kind(section)}, not a mapping"
        for key in MODEL_NUMBERS:
            if section.get(key) is not None and not _is_number(section[key]):
                return f"{role}.{key} is {_kind(section[key])}, not a number"
        classes = section.get("per_class_acc")
        if classes is not None and (
            not isinstance(classes, list) or not all(c is None or _is_number(c) for c in classes)
        ):
            return f"{role}.per_class_acc is not a list of numbers"
    s, t = record.get("student"), record.get("teacher")
    if s and t and s.get("per_class_acc") and t.get("per_class_acc"):
        if len(s["per_class_acc"]) != len(t["per_class_acc"]):
            n, m = len(s["per_class_acc"]), len(t["per_class_acc"])
            return f"student.per_class_acc has {n} classes, teacher.per_class_acc {m}"
    for name in SECTIONS:
        section = record.get(name)
        if section is not None and not isinstance(section, dict):
            return f"{name} is {_kind(section)}, not a mapping"
    return None


def find_results(paths: Iterable[str | Path]) -> tuple[list[dict], list[tuple[Path, str]]]:
    """Every readable results.json below ``paths`` (each tagged with ``_path``), and the skipped ones
    with why (not JSON, or a field of an unexpected type: ``problem``)."""
    found, skipped = [], []
    for root in map(Path, paths):
        if not root.exists():
            raise KdlabError(f"{root} does not exist; give a folder of runs (or a results.json)")
        files = [root] if root.is_file() else sorted(root.rglob(RESULTS_FILE))
        for f in files:
            try:
                record = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                skipped.append((f, f"not JSON ({e})"))
                continue
            except (OSError, UnicodeDecodeError) as e:
                skipped.append((f, f"unreadable ({type(e).__name__}: {e})"))
                continue
            why = problem(record)
            if why is not None:
                skipped.append((f, why))
                continue
            record["_path"] = str(f)
            found.append(record)
    return found, skipped


def _hashable(value):
    """A group key part: lists and mappings (``--by student``) as their JSON text."""
    return json.dumps(value, sort_keys=True) if isinstance(value, list | dict) else value


def group(records: list[dict], by: list[str]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(_hashable(get(r, k)) for k in by), []).append(r)
    return groups


def mean_std(values: list) -> tuple[float | None, float | None]:
    values = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(groups: dict[tuple, list[dict]], by: list[str], columns: Iterable[str]) -> list[dict]:
    """One row per group: the ``by`` keys, ``n``, and ``<column>_mean`` / ``<column>_std``."""
    rows = []
    for key, records in groups.items():
        row = dict(zip(by, key))
        row["n"] = len(records)
        row["seeds"] = ",".join(str(s) for s in sorted({r.get("seed") for r in records}, key=str))
        for col in columns:
            row[f"{col}_mean"], row[f"{col}_std"] = mean_std([get(r, col) for r in records])
        rows.append(row)
    return rows


def fmt(col: str, mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    if any(p in col.rsplit(".", 1)[-1] for p in PERCENT):  # test_acc, test_acc_best_val, ece, ...
        return f"{100 * mean:.1f} ± {100 * std:.1f}"
    if col.endswith("params"):
        return f"{mean:,.0f}"
    return f"{mean:.3g} ± {std:.2g}" if std else f"{mean:.3g}"


def write_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def label(row: dict, by: list[str]) -> str:
    return " / ".join(str(row[k]) for k in by if row[k] is not None) or "all"


def markdown(rows: list[dict], by: list[str], columns: list[str]) -> str:
    head = [*by, "n", *columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = (
            [str(row[k]) for k in by] + [str(row["n"])] + [fmt(c, row[f"{c}_mean"], row[f"{c}_std"]) for c in columns]
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def has_per_class(records: list[dict]) -> bool:
    """Whether every run of a group has per-class accuracies of student and teacher, all of one length."""
    lists = [(r.get(role) or {}).get("per_class_acc") for r in records for role in ("student", "teacher")]
    return all(lists) and len({len(c) for c in lists}) == 1


def plot(groups: dict[tuple, list[dict]], rows: list[dict], by: list[str], metric: str, out: Path) -> list[Path]:
    """accuracy_vs_params.png, accuracy_by_group.png, per_class.png (what the data allows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    # 1. metric against student parameters, the Pareto front, and the teachers
    points = [
        (row["student.params_mean"], row[f"{metric}_mean"], row[f"{metric}_std"], label(row, by))
        for row in rows
        if row["student.params_mean"] and row[f"{metric}_mean"] is not None
    ]
    if points:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for x, y, err, name in points:
            ax.errorbar(x, y, yerr=err, fmt="o", capsize=3)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        front, best = [], -math.inf
        for x, y, _, _ in sorted(points, key=lambda p: (p[0], -p[1])):
            if y > best:
                front.append((x, y))
                best = y
        ax.step(*zip(*front), where="post", color="tab:green", label="Pareto front")
        teachers = {
            (r["teacher"].get("arch"), r["teacher"]["params"]): r["teacher"]["test_acc"]
            for rs in groups.values()
            for r in rs
            if r.get("teacher") and r["teacher"].get("params") and r["teacher"].get("test_acc") is not None
        }
        for (arch, params), acc in teachers.items():
            ax.scatter(params, acc, marker="*", s=160, color="tab:red", zorder=3, label=f"teacher {arch}")
        ax.set_xscale("log")
        ax.set_xlabel("student parameters")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(out / "accuracy_vs_params.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    # 2. metric per group with error bars
    ranked = sorted((r for r in rows if r[f"{metric}_mean"] is not None), key=lambda r: r[f"{metric}_mean"])
    if ranked:
        fig, ax = plt.subplots(figsize=(7, 0.4 * len(ranked) + 1.5))
        ax.barh(
            [label(r, by) for r in ranked],
            [r[f"{metric}_mean"] for r in ranked],
            xerr=[r[f"{metric}_std"] for r in ranked],
            capsize=3,
            color="tab:blue",
        )
        ax.set_xlabel(f"{metric} (mean ± std, n per bar in comparison.csv)")
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        written.append(out / "accuracy_by_group.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    # 3. per-class accuracy, student against teacher, for the best group that has both
    best = next((r for r in ranked[::-1] if has_per_class(groups[tuple(r[k] for k in by)])), None)
    if best is not None:
        records = groups[tuple(best[k] for k in by)]
        n = len(records[0]["student"]["per_class_acc"])
        s_mean = [mean_std([r["student"]["per_class_acc"][c] for r in records])[0] or 0.0 for c in range(n)]
        t_mean = [mean_std([r["teacher"]["per_class_acc"][c] for r in records])[0] or 0.0 for c in range(n)]
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * n + 2), 4))
        xs = range(n)
        ax.bar([x - 0.2 for x in xs], t_mean, width=0.4, label="teacher", color="tab:red")
        ax.bar([x + 0.2 for x in xs], s_mean, width=0.4, label=f"student ({label(best, by)})", color="tab:blue")
        ax.set_xlabel("class")
        ax.set_ylabel("test accuracy")
        ax.set_xticks(list(xs)[:: max(1, n // 20)])
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        written.append(out / "per_class.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


def section(summary: dict, name: str) -> dict:
    """The ``name/...`` metrics of a W&B summary as a results.json section."""
    return {k.split("/", 1)[1]: v for k, v in summary.items() if k.startswith(name + "/")}


def from_wandb(path: str) -> list[dict]:
    """results-like dicts from the runs of a W&B project (what kdlab logs: config, tags, test/* metrics)."""
    import wandb

    records = []
    for run in wandb.Api().runs(path):
        cfg, summary = dict(run.config), dict(run.summary)
        tag = {t.split(":", 1)[0]: t.split(":", 1)[1] for t in run.tags if ":" in t}
        student = {
            "arch": get(cfg, "student.arch"),
            "params": summary.get("params/student"),
            "test_acc": summary.get("test/student_acc"),
        }
        teacher = (
            {
                "arch": get(cfg, "teacher.arch"),
                "params": summary.get("params/teacher"),
                "test_acc": summary.get("test/teacher_acc"),
            }
            if "test/teacher_acc" in summary
            else None
        )
        records.append(
            {
                "task": cfg.get("task"),
                "strategy": tag.get("strategy"),
                "method": tag.get("method") or get(cfg, "method.name"),
                "data": tag.get("data"),
                "seed": cfg.get("seed"),
                "student": student if student["test_acc"] is not None else None,
                "teacher": teacher,
                "fidelity": section(summary, "fidelity"),
                "calibration": section(summary, "calibration"),
                "efficiency": section(summary, "efficiency"),
                "_path": f"wandb:{path}/{run.id}",
            }
        )
    return [r for r in records if r["student"] or r["teacher"]]


class Parser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are kdlab's one line (exit code 1), not usage + error."""

    def error(self, message: str):
        raise KdlabError(f"{message}; see kdlab-compare --help")


def numeric_fields(records: list[dict]) -> list[str]:
    """The dotted paths of every number in the records (what --metric can name)."""
    out: dict[str, None] = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif _is_number(v) and not str(k).startswith("_"):
                out[f"{prefix}{k}"] = None

    for r in records:
        walk(r, "")
    return list(out)


def output_folder(args) -> Path:
    """--out (default: the first path if it is a folder, else here), created; refused in one line
    when it is a file or cannot be made."""
    out = (
        Path(args.out)
        if args.out
        else (Path(args.paths[0]) if args.paths and Path(args.paths[0]).is_dir() else Path("."))
    )
    if out.exists() and not out.is_dir():
        raise KdlabError(f"--out {out} is an existing file; give a folder (comparison.csv and the plots go there)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KdlabError(f"cannot make --out {out} ({type(e).__name__}: {e.strerror or e}); give another folder") from e
    return out


def compare(argv: list[str] | None = None) -> list[dict]:
    parser = Parser(prog="kdlab-compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help="folders (or results.json files) to search")
    parser.add_argument("--by", default=DEFAULT_BY, help=f"comma-separated keys to group by (default {DEFAULT_BY})")
    parser.add_argument("--metric", default=DEFAULT_METRIC, help="the column to rank and plot")
    parser.add_argument("--format", choices=("table", "markdown"), default="table")
    parser.add_argument("--out", help="where comparison.csv and the plots go (default: the first path)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs from W&B instead of (or besides) paths")
    args = parser.parse_args(argv)
    if not args.paths and not args.wandb:
        raise KdlabError("give folders with results.json files, or --wandb ENTITY/PROJECT")
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    records, skipped = find_results(args.paths)
    for path, why in skipped:
        console.print(f"skipped {path}: {why}", style="yellow")
    if args.wandb:
        records += from_wandb(args.wandb)
    if not records:
        where = ", ".join(args.paths) or args.wandb
        if skipped:
            first = f"{skipped[0][0]}: {skipped[0][1]}"
            raise KdlabError(
                f"no readable results.json under {where} ({len(skipped)} skipped: {first}); "
                "fix or remove the files named, or give other folders"
            )
        raise KdlabError(f"no results.json found under {where}")
    fields = numeric_fields(records)
    if args.metric != DEFAULT_METRIC and args.metric not in fields:  # a name given by hand that nothing has
        raise KdlabError(
            f"--metric {args.metric} is in no results.json{did_you_mean(args.metric, fields, n=3)}; "
            "name a number of results.json by its dotted path"
        )
    by = [k.strip() for k in args.by.split(",") if k.strip()]
    columns = [args.metric, *[c for c in COLUMNS if c != args.metric]]
    groups = group(records, by)
    rows = sorted(summarize(groups, by, columns), key=lambda r: -(r[f"{args.metric}_mean"] or -math.inf))
    out = output_folder(args)
    csv_path = write_csv(rows, out / "comparison.csv")
    pngs = plot(groups, rows, by, args.metric, out)
    filled = [c for c in columns if any(row[f"{c}_mean"] is not None for row in rows)]  # no all-empty columns
    if args.format == "markdown":
        print(markdown(rows, by, filled))
    else:
        table = Table(
            title=f"{len(records)} runs in {len(rows)} groups (mean ± std over seeds; accuracies in %)",
            title_justify="left",
        )
        shown = [c for c in [args.metric, *[c for c in SHORT if c != args.metric]] if c in filled]
        for col in [*by, "n", *shown]:
            table.add_column(
                col.split(".", 1)[1] if col.startswith(("efficiency.", "fidelity.", "calibration.")) else col
            )
        for row in rows:
            table.add_row(
                *[str(row[k]) for k in by], str(row["n"]), *[fmt(c, row[f"{c}_mean"], row[f"{c}_std"]) for c in shown]
            )
        console.print(table)
    console.print(f"written: {csv_path}, " + ", ".join(str(p) for p in pngs), style="dim")
    return rows


def cli() -> None:
    with one_line_errors("kdlab-compare"):
        compare(sys.argv[1:])


if __name__ == "__main__":
    cli()
