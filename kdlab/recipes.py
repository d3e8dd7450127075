"""The table of a dataset's recipes, read from the recipe files themselves.

    python -m kdlab.recipes cifar100           # print the markdown table
    python -m kdlab.recipes cifar100 --write   # rewrite it in experiments/cifar100/README.md

Each file under ``experiments/<dataset>/`` is composed exactly as ``kdlab-train
experiments=<dataset>/<file>`` composes it, and its row is read from that resolved config (what
the presets, the benchmark pieces and the file add up to), so the table cannot drift from the
files. In the README the table sits between the lines ``<!-- recipes:begin -->`` and
``<!-- recipes:end -->``.
"""

from __future__ import annotations

import argparse

from omegaconf import DictConfig

from kdlab import ROOT
from kdlab.config import compose

BEGIN, END = "<!-- recipes:begin -->", "<!-- recipes:end -->"


def recipe_names(dataset: str) -> list[str]:
    """The recipe files of ``experiments/<dataset>/``, without their .yaml."""
    return sorted(p.stem for p in (ROOT / "experiments" / dataset).glob("*.yaml"))


def row(name: str, cfg: DictConfig) -> dict[str, str]:
    """One recipe's columns. A teacher row (``task: teacher``) reports the teacher's own
    optimizer, epochs and batch; any other row the student's, and the method's terms."""
    trains_teacher = cfg.task == "teacher"
    has_teacher = not trains_teacher and cfg.method.name != "none"
    model = cfg.teacher if trains_teacher else cfg.student
    terms = [
        f"{term}.{key}={value}"
        for term, args in cfg.method.terms.items()
        for key, value in args.items()
        if not key.startswith("_") and value is not None
    ]
    published = cfg.get("published") or {}

    def pct(key: str) -> str:
        value = published.get(key)
        return "-" if value is None else f"{100 * value:.2f}"

    return {
        "file": name,
        "teacher": cfg.teacher.arch if trains_teacher or has_teacher else "-",
        "student": "-" if trains_teacher else cfg.student.arch,
        "method": "teacher" if trains_teacher else cfg.method.name,
        "lr": str(model.optimizer.lr),
        "epochs": str(cfg.teacher.max_epochs if trains_teacher else cfg.trainer.max_epochs),
        "batch": str(cfg.teacher.batch_size if trains_teacher else cfg.data.batch_size),
        "weights": "-" if trains_teacher else " ".join(terms),
        "published teacher": pct("teacher_acc"),
        "published student": pct("student_acc"),
        "published method": pct("method_acc"),
        "source": published.get("source") or "-",
    }


def rows(dataset: str) -> list[dict[str, str]]:
    """Every recipe of ``dataset``: teachers, then students alone, then the distillation rows
    grouped by teacher -> student pair."""
    out = [row(name, compose([f"experiments={dataset}/{name}"])[0]) for name in recipe_names(dataset)]
    kind = {"teacher": 0, "none": 1}
    return sorted(out, key=lambda r: (kind.get(r["method"], 2), r["file"].partition("_")[2], r["file"]))


def table(dataset: str) -> str:
    """The markdown table of ``dataset``'s recipes, one row per file."""
    body = rows(dataset)
    lines = [list(body[0]), ["---"] * len(body[0])] + [list(r.values()) for r in body]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def split_readme(dataset: str) -> tuple[str, str, str]:
    """``experiments/<dataset>/README.md`` as (text before the table, the table, text after it)."""
    path = ROOT / "experiments" / dataset / "README.md"
    text = path.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise SystemExit(f"{path}: needs one {BEGIN} line and one {END} line around the table")
    head, rest = text.split(BEGIN)
    current, tail = rest.split(END)
    return head + BEGIN + "\n", current.strip(), "\n" + END + tail


def write(dataset: str) -> None:
    """Replace the README's table with the one the recipe files give now."""
    head, current, tail = split_readme(dataset)
    new = table(dataset)
    (ROOT / "experiments" / dataset / "README.md").write_text(head + new + tail)
    print(f"experiments/{dataset}/README.md: table {'unchanged' if new == current else 'rewritten'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", help="a folder of experiments/, e.g. cifar100")
    parser.add_argument("--write", action="store_true", help="rewrite the table in that folder's README.md")
    args = parser.parse_args(argv)
    if args.write:
        write(args.dataset)
    else:
        print(table(args.dataset))


if __name__ == "__main__":
    main()
