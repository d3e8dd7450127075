"""The recipe files of a dataset, and the tables of them in its README.

    python -m kdlab.recipes cifar100           # print the README's tables
    python -m kdlab.recipes cifar100 --write   # regenerate experiments/cifar100/*.yaml, then the README's tables

CIFAR-100 (the CRD / DKD benchmark) has one file per teacher -> student pair x method for every
number of the published tables, one per teacher and one per student trained alone. They are
generated from the transcription below (``CRD_README``, ``DKD_TABLES``: the published tables as
printed, each row citing where it was read) and the per-pair method values (``per_pair``): plain
files, one per row, that say everything particular to their row. The 2022-2024 methods (logit
standardization's table: KD+LS, DKD+LS, CTKD, CTKD+LS, MLKD, MLKD+LS; KD+DOT; SimKD) likewise, from
``LSKD_README``, ``CTKD_README``, ``DOT_README``, ``SIMKD_README`` and the per-pair tables after them
(``LSKD_LOGS``, ``MLKD_CONFIGS``, ``LSKD_MLKD_CONFIGS``, ``DOT_CONFIGS``, ``SIMKD_FACTORS``), read by
``recipe_values``: every value a file sets cites the file it was read in. Change a recipe here, then
``--write``; tests/test_cifar100_recipes.py fails while a file differs from what this module writes.

The README's tables are read from the files themselves: each file is composed exactly as
``kdlab-train experiments=<dataset>/<file>`` composes it, so the tables cannot drift from the
files. In the README they sit between the lines ``<!-- recipes:begin -->`` and ``<!-- recipes:end -->``.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from functools import cache

from omegaconf import DictConfig, OmegaConf

from kdlab import ROOT
from kdlab.config import compose

BEGIN, END = "<!-- recipes:begin -->", "<!-- recipes:end -->"

# --------------------------------------------------------------------------------------------
# The transcription. Top-1 accuracy (%) on the CIFAR-100 test set, as printed. The first two
# lines of a table name its columns (teacher over student, kdlab preset names); then one row per
# method. "N/A": the source prints no accuracy there. "?": the source has a number there that
# was not transcribed (the recipe exists, with published.method_acc null). A method absent from a
# table has no number for those pairs, and no recipe. "#" starts a note on where a row was read.
# --------------------------------------------------------------------------------------------

#: The CRD README (HobbitLong/RepDistiller README.md, as of commit dcc0432, the last to change its
#: tables; "Benchmark Results on CIFAR-100"): table 1, teacher and student of the same
#: architectural type; table 2, of different types. FSP WRN-40-2 -> WRN-40-1 is N/A (printed 0.00
#: before dcc0432): FSP compares Gram matrices of equal channel counts, and WRN-40-1 has half of
#: WRN-40-2's. Table 2 has no FSP row. RepDistiller's ResNet50 is kdlab's resnet50_cifar.
CRD_README = {
    1: """
            wrn_40_2  wrn_40_2  resnet56  resnet110  resnet110  resnet32x4  vgg13
            wrn_16_2  wrn_40_1  resnet20  resnet20   resnet32   resnet8x4   vgg8
teacher     75.61     75.61     72.34     74.31      74.31      79.42       74.64
student     73.26     71.98     69.06     69.06      71.14      72.50       70.36
kd          74.92     73.54     70.66     70.67      73.08      73.33       72.98
fitnet      73.58     72.24     69.21     68.99      71.06      73.50       71.02
at          74.08     72.77     70.55     70.22      72.31      73.44       71.43
sp          73.83     72.43     69.67     70.04      72.69      72.94       72.68
cc          73.56     72.21     69.63     69.48      71.48      72.97       70.71
vid         74.11     73.30     70.38     70.16      72.61      73.09       71.23
rkd         73.35     72.22     69.61     69.25      71.82      71.90       71.48
pkt         74.54     73.45     70.34     70.25      72.61      73.64       72.88
ab          72.50     72.38     69.47     69.53      70.98      73.17       70.94
ft          73.25     71.59     69.84     70.22      72.37      72.86       70.58
fsp         72.91     N/A       69.95     70.11      71.89      72.62       70.23
nst         73.68     72.24     69.60     69.53      71.96      73.30       71.53
crd         75.48     74.14     71.16     71.46      73.48      75.51       73.94
""",
    2: """
            vgg13        resnet50_cifar  resnet50_cifar  resnet32x4    resnet32x4    wrn_40_2
            mobilenetv2  mobilenetv2     vgg8            shufflenetv1  shufflenetv2  shufflenetv1
teacher     74.64        79.34           79.34           79.42         79.42         75.61
student     64.60        64.60           70.36           70.50         71.82         70.50
kd          67.37        67.35           73.81           74.07         74.45         74.83
fitnet      64.14        63.16           70.69           73.59         73.54         73.73
at          59.40        58.58           71.84           71.73         72.73         73.32
sp          66.30        68.08           73.34           73.48         74.56         74.52
cc          64.86        65.43           70.25           71.14         71.29         71.38
vid         65.56        67.57           70.30           73.38         73.40         73.61
rkd         64.52        64.43           71.50           72.28         73.21         72.21
pkt         67.13        66.52           73.01           74.10         74.69         73.89
ab          66.06        67.20           70.65           73.55         74.31         73.34
ft          61.78        60.99           70.29           71.75         72.50         72.03
nst         58.16        64.96           71.28           74.12         74.68         74.89
crd         69.73        69.11           74.30           75.11         75.65         76.05
""",
}

#: DKD (Zhao et al., CVPR 2022), Table 1 (same architectures) and Table 2 (different ones). The
#: paper's text could not be read here: its KD and DKD rows are read from the mdistiller README
#: (megvii-research/mdistiller README.md, commit a08d46f; its second table heads the last column
#: "ResNet32x4 / MobileNet-V2", but KD 74.45 there is the CRD README's ShuffleNetV2 number: the pair is
#: ResNet32x4 -> ShuffleNetV2), its OFD and ReviewKD rows from reprints of the paper's tables,
#: cited per row; "?" where no reprint was found. The paper's FitNet, RKD and CRD rows reprint
#: the CRD paper's (mdistiller issue #34: "We simply reported the results in CRD's original
#: paper"); their recipes cite the CRD README, as do the teacher and student accuracies. Only DKD, OFD and
#: ReviewKD recipes cite these tables; the KD rows are here to check the reprint against the CRD
#: README (tests/test_cifar100_recipes.py). The reprints are not error-free (ND prints KD ResNet50 ->
#: MobileNetV2 as 67.65 where the CRD README has 67.35; MSC prints DKD WRN-40-2 -> WRN-16-2 as 76.24
#: where the mdistiller README has 76.23): a number read in two of them must agree in both.
DKD_TABLES = {
    1: """
            resnet56  resnet110  resnet32x4  wrn_40_2  wrn_40_2  vgg13
            resnet20  resnet32   resnet8x4   wrn_16_2  wrn_40_1  vgg8
kd          70.66     73.08      73.33       74.92     73.54     72.98   # mdistiller
dkd         71.97     74.11      76.32       76.23     74.81     74.68   # mdistiller
ofd         70.98     ?          74.95       ?         74.33     ?       # ND
reviewkd    71.89     ?          75.63       ?         75.09     ?       # ND
reviewkd    71.89     73.89      75.63       76.12     75.09     74.84   # MSC
""",
    2: """
            resnet32x4    wrn_40_2      vgg13        resnet50_cifar  resnet32x4
            shufflenetv1  shufflenetv1  mobilenetv2  mobilenetv2     shufflenetv2
kd          74.07         74.83         67.37        67.35           74.45   # mdistiller
dkd         76.45         76.70         69.71        70.35           77.07   # mdistiller
ofd         75.98         ?             ?            69.04           76.82   # ND
reviewkd    77.45         ?             ?            69.89           77.78   # ND
reviewkd    77.45         ?             70.37        69.89           ?       # MSC
""",
}

#: The reprints the DKD rows above were read from ("#" notes). A method with a row per reprint
#: takes each number from every row that has it (they must agree), and cites those.
REPRINTS = {
    "mdistiller": "the mdistiller README (megvii-research/mdistiller README.md)",
    "ND": "WangYZ1608/Knowledge-Distillation-via-ND README.md",
    "MSC": 'a third-party project specification (MSC-KD "Engineering Specification", section 7, "Benchmark reference numbers")',
}

CRD_SOURCE = "CRD README (HobbitLong/RepDistiller README.md), CIFAR-100 table {table} ({kind} architecture)"
DKD_SOURCE = "DKD (Zhao et al., CVPR 2022) Table {table} ({kind} architectures), as reprinted in {via}"
#: What the published numbers are, by source (published.protocol). "not stated": the sources read
#: do not say.
CRD_PROTOCOL = (
    "last epoch, trained on all 50,000 training images (RepDistiller train_student.py and train_teacher.py: "
    '"The results reported in the paper/README is from the last epoch"); runs averaged: not stated in the README'
)
DKD_PROTOCOL = (
    "best test epoch, trained on all 50,000 training images (mdistiller, the paper's code, reports best_acc, "
    "the highest test accuracy over the epochs); runs averaged: not stated in the sources read"
)
REPRINT_PROTOCOL = (
    "not stated in the sources read (a reprint of the DKD paper's table; mdistiller's trainer and ReviewKD's "
    "CIFAR-100 train.py both report the best test epoch, trained on all 50,000 training images)"
)

#: kdlab's method names, in the order of the README's columns: the CRD README's 13 methods, then
#: the DKD paper's, then DIST (whose CIFAR-100 numbers are not transcribed).
CRD_METHODS = ("kd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst", "crd")
DKD_METHODS = ("ofd", "reviewkd", "dkd")
METHODS = (*CRD_METHODS, *DKD_METHODS, "dist")
#: DIST rows (Huang et al., NeurIPS 2022): one per pair of the DKD tables, no published number here.
DIST_SOURCE = "not transcribed: see Huang et al. 2022"

TITLES = {
    "kd": "Hinton KD",
    "fitnet": "FitNets",
    "at": "Attention transfer (AT)",
    "sp": "Similarity-preserving KD (SP)",
    "cc": "Correlation congruence (CC)",
    "vid": "Variational information distillation (VID)",
    "rkd": "Relational KD (RKD)",
    "pkt": "Probabilistic knowledge transfer (PKT)",
    "ab": "Activation boundaries (AB)",
    "ft": "Factor transfer (FT)",
    "fsp": "Flow of solution procedure (FSP)",
    "nst": "Neuron selectivity transfer (NST)",
    "crd": "CRD",
    "ofd": "Overhaul of feature distillation (OFD)",
    "reviewkd": "ReviewKD",
    "dkd": "DKD",
    "dist": "DIST",
}
NAMES = {
    "resnet20": "ResNet20",
    "resnet32": "ResNet32",
    "resnet56": "ResNet56",
    "resnet110": "ResNet110",
    "resnet8x4": "ResNet8x4",
    "resnet32x4": "ResNet32x4",
    "resnet50_cifar": "ResNet50",
    "wrn_16_2": "WRN-16-2",
    "wrn_40_1": "WRN-40-1",
    "wrn_40_2": "WRN-40-2",
    "vgg8": "VGG8",
    "vgg13": "VGG13",
    "mobilenetv2": "MobileNetV2 (x0.5)",
    "shufflenetv1": "ShuffleNetV1",
    "shufflenetv2": "ShuffleNetV2",
    "shufflenetv2_1_5": "ShuffleNetV2 (x1.5)",
}
#: Students trained at lr 0.01 rather than 0.05 (their presets; RepDistiller train_student.py).
LR_001 = ("mobilenetv2", "shufflenetv1", "shufflenetv2")

# --------------------------------------------------------------------------------------------
# Per-pair method values: where the authors changed a method's hyper-parameters for a pair.
# --------------------------------------------------------------------------------------------

#: DKD's beta per pair: mdistiller configs/cifar100/dkd/<file>.yaml (DKD.BETA; 8.0 where unset,
#: the CFG default), and the file it is read from.
DKD_BETA = {
    ("resnet56", "resnet20"): (2.0, "res56_res20"),
    ("resnet110", "resnet32"): (2.0, "res110_res32"),
    ("resnet32x4", "resnet8x4"): (8.0, "res32x4_res8x4"),
    ("wrn_40_2", "wrn_16_2"): (6.0, "wrn40_2_wrn_16_2"),
    ("wrn_40_2", "wrn_40_1"): (6.0, "wrn40_2_wrn_40_1"),
    ("vgg13", "vgg8"): (6.0, "vgg13_vgg8"),
    ("vgg13", "mobilenetv2"): (6.0, "vgg13_mv2"),
    ("resnet50_cifar", "mobilenetv2"): (8.0, "res50_mv2"),
    ("resnet32x4", "shufflenetv1"): (8.0, "res32x4_shuv1"),
    ("resnet32x4", "shufflenetv2"): (8.0, "res32x4_shuv2"),
    ("wrn_40_2", "shufflenetv1"): (8.0, "wrn40_2_shuv1"),
}
#: ReviewKD's loss weight per pair: dvlab-research/ReviewKD CIFAR-100/script/reviewKD.sh
#: (--kd-loss-weight). Pairs it does not list keep the method's default.
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
#: RepDistiller helper/pretrain.py: the init phase of AB, FT and FSP runs SGD at the student's lr
#: (opt.learning_rate: 0.05, 0.01 for MobileNetV2 / ShuffleNet), except FT with a ResNet or WRN
#: student, at 0.01.
FT_LR_001_STUDENTS = ("resnet20", "resnet32", "resnet8x4", "wrn_16_2", "wrn_40_1")


def init_lr(method: str, student: str) -> float:
    """The lr of the init phase RepDistiller runs for ``method`` (ab, ft, fsp) with ``student``."""
    if method == "ft" and student in FT_LR_001_STUDENTS:
        return 0.01
    return 0.01 if student in LR_001 else 0.05


def per_pair(method: str, teacher: str, student: str) -> list[tuple[str, float, str]]:
    """The method values a recipe sets for its pair: (key under method.terms, value, where from)."""
    if method == "dkd":
        beta, name = DKD_BETA[teacher, student]
        return [("dkd.beta", beta, f"mdistiller configs/cifar100/dkd/{name}.yaml")]
    if method in ("ab", "ft", "fsp"):
        why = "RepDistiller helper/pretrain.py: " + (
            "0.01 for a ResNet / WRN student"
            if method == "ft" and student in FT_LR_001_STUDENTS
            else "the student's lr"
        )
        return [(f"{method}.init_lr", init_lr(method, student), why)]
    if method == "reviewkd" and (teacher, student) in REVIEWKD_WEIGHT:
        return [("reviewkd.weight", REVIEWKD_WEIGHT[teacher, student], "ReviewKD CIFAR-100/script/reviewKD.sh")]
    return []


# --------------------------------------------------------------------------------------------
# Reading the transcription
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One number of a published table: ``value`` in % (None: "?", present but not transcribed)."""

    source: str  # "crd" or "dkd"
    table: int
    teacher: str
    student: str
    method: str
    value: float | None
    via: tuple[str, ...] = ()  # the REPRINTS keys the number was read from (DKD tables)


def parse(text: str, source: str, table: int) -> list[Cell]:
    """The cells of one transcribed table, one per row and pair; N/A cells are left out."""
    lines = [line for line in text.strip("\n").splitlines() if line.strip()]
    teachers, students = lines[0].split(), lines[1].split()
    if len(teachers) != len(students):
        raise ValueError(f"{source} table {table}: {len(teachers)} teachers, {len(students)} students")
    cells = []
    for line in lines[2:]:
        body, _, note = line.partition("#")
        method, *values = body.split()
        if len(values) != len(teachers):
            raise ValueError(f"{source} table {table}, row {method}: {len(values)} values for {len(teachers)} pairs")
        via = tuple(note.split())
        if any(v not in REPRINTS for v in via):
            raise ValueError(f"{source} table {table}, row {method}: unknown reprint in {note!r}")
        for t, s, v in zip(teachers, students, values):
            if v != "N/A":
                cells.append(Cell(source, table, t, s, method, None if v == "?" else float(v), via))
    return cells


@cache
def transcription() -> tuple[Cell, ...]:
    """Every cell of the transcribed tables, CRD README first. Rows of one method from several
    reprints merge: a number read in more than one must agree, and cites every reprint it was read in."""
    merged: dict[tuple, Cell] = {}
    tables = [("crd", n, text) for n, text in CRD_README.items()] + [("dkd", n, text) for n, text in DKD_TABLES.items()]
    for source, n, text in tables:
        for c in parse(text, source, n):
            key = (c.source, c.table, c.method, c.teacher, c.student)
            old = merged.get(key)
            if old is None or old.value is None:
                merged[key] = c if c.value is not None or old is None else old
            elif c.value is not None:
                if c.value != old.value:
                    raise ValueError(f"{key}: {old.value} in {old.via}, {c.value} in {c.via}")
                merged[key] = Cell(*key[:2], c.teacher, c.student, c.method, c.value, old.via + c.via)
    return tuple(merged.values())


def pairs() -> list[tuple[str, str]]:
    """The teacher -> student presets of the CRD README, in its order."""
    return list(dict.fromkeys((c.teacher, c.student) for c in transcription() if c.source == "crd"))


def cited(cell: Cell) -> str:
    """published.source of a cell."""
    kind = {1: "same", 2: "different"}[cell.table]
    if cell.source == "crd":
        return CRD_SOURCE.format(table=cell.table, kind=kind)
    if cell.value is None:
        return (
            f"not transcribed (no copy of the table read here has it): DKD (Zhao et al., CVPR 2022) Table {cell.table}"
        )
    return DKD_SOURCE.format(table=cell.table, kind=kind, via=" and ".join(REPRINTS[k] for k in cell.via))


def protocol(cell: Cell) -> str:
    """published.protocol of a cell."""
    if cell.source == "crd":
        return CRD_PROTOCOL
    if cell.value is None:
        return "not transcribed"
    return DKD_PROTOCOL if "mdistiller" in cell.via else REPRINT_PROTOCOL


def published_cells() -> dict[tuple[str, str, str], Cell]:
    """The cell each distillation recipe cites, by (method, teacher, student): the CRD README for its
    methods, the DKD tables for DKD, OFD and ReviewKD."""
    out = {}
    for c in transcription():
        if (c.source == "crd" and c.method in CRD_METHODS) or (c.source == "dkd" and c.method in DKD_METHODS):
            out[c.method, c.teacher, c.student] = c
    return out


def baselines(role: str) -> dict[str, tuple[float, list[int]]]:
    """The CRD README's teacher (``role="teacher"``) or student accuracies: arch -> (%, tables)."""
    out: dict[str, tuple[float, list[int]]] = {}
    for c in transcription():
        if c.source == "crd" and c.method == role:
            arch = c.teacher if role == "teacher" else c.student
            value, tables = out.get(arch, (c.value, []))
            if value != c.value:
                raise ValueError(f"CRD README: {role} {arch} is {value} in one column and {c.value} in another")
            out[arch] = (value, sorted({*tables, c.table}))
    return out


# --------------------------------------------------------------------------------------------
# Writing the CIFAR-100 recipe files
# --------------------------------------------------------------------------------------------

HEADER = (
    "# Generated by `python -m kdlab.recipes cifar100 --write` from kdlab/recipes.py (the transcription of\n"
    "# the published tables, the per-pair method values): change it there, not here.\n"
)


def quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def fraction(percent: float | None) -> str:
    return "null" if percent is None else f"{round(percent / 100, 4)}"


def distill_file(method: str, teacher: str, student: str) -> str:
    lines = [
        "# @package _global_",
        f"# {TITLES[method]}: {NAMES[teacher]} -> {NAMES[student]} on CIFAR-100, the CRD / DKD benchmark recipe.",
        HEADER.rstrip("\n"),
        "defaults:",
        "  - /benchmark/crd_cifar100/distill",
        f"  - override /teacher: {teacher}",
        f"  - override /student: {student}",
        f"  - override /method: {method}",
    ]
    values = per_pair(method, teacher, student)
    if values:
        lines += ["method:", "  terms:"]
        for term in dict.fromkeys(key.split(".")[0] for key, _, _ in values):
            lines.append(f"    {term}:")
            for key, value, why in values:
                if key.split(".")[0] == term:
                    lines.append(f"      {key.split('.', 1)[1]}: {value}    # {why}")
    elif method == "reviewkd":
        lines.append("# ReviewKD's script gives no loss weight for this pair: the method's default.")
    if method == "dist":
        value, source, proto = "null", DIST_SOURCE, "not transcribed"
    else:
        cell = published_cells()[method, teacher, student]
        value, source, proto = fraction(cell.value), cited(cell), protocol(cell)
    lines += ["published:", f"  method_acc: {value}", f"  source: {quote(source)}", f"  protocol: {quote(proto)}"]
    return "\n".join(lines) + "\n"


def baseline_text(head: list[str], source: str, protocol: str) -> str:
    """A baseline recipe file: ``head`` (comments and defaults), then where its published number comes from."""
    lines = ["# @package _global_", *head, "published:", f"  source: {quote(source)}", f"  protocol: {quote(protocol)}"]
    return "\n".join(lines) + "\n"


def baseline_file(role: str, arch: str) -> str:
    value, tables = baselines(role)[arch]
    source = f"CRD README (HobbitLong/RepDistiller README.md), CIFAR-100 table{'s' if len(tables) > 1 else ''} "
    source += " and ".join(map(str, tables)) + f", row {role.capitalize()}"
    if role == "teacher":
        head = [
            f"# Train the {NAMES[arch]} teacher on CIFAR-100 (cached for every recipe that distils from it).",
            HEADER.rstrip("\n"),
            "defaults:",
            "  - /benchmark/crd_cifar100/teacher",
            f"  - override /teacher: {arch}",
        ]
    else:
        head = [
            f"# {NAMES[arch]} trained alone on CIFAR-100 (the student baseline).",
            HEADER.rstrip("\n"),
            "defaults:",
            "  - /benchmark/crd_cifar100/baseline",
            f"  - override /student: {arch}",
        ]
    return baseline_text(head, source, CRD_PROTOCOL)


def cifar100_files() -> dict[str, str]:
    """Every CIFAR-100 recipe file: name (no .yaml) -> text."""
    files = {f"teacher_{t}": baseline_file("teacher", t) for t in baselines("teacher")}
    files |= {f"none_{s}": baseline_file("student", s) for s in baselines("student")}
    for method, teacher, student in published_cells():
        files[f"{method}_{teacher}_{student}"] = distill_file(method, teacher, student)
    for c in transcription():
        if c.source == "dkd" and c.method == "dkd":  # DIST: one row per pair of the DKD tables
            files[f"dist_{c.teacher}_{c.student}"] = distill_file("dist", c.teacher, c.student)
    files |= new_cifar100_files()
    return dict(sorted(files.items()))


# --------------------------------------------------------------------------------------------
# The 2022-2024 methods on CIFAR-100: logit standardization (Sun et al., CVPR 2024: KD+LS, DKD+LS,
# CTKD+LS, MLKD+LS, with CTKD and MLKD alone beside them), DOT (Zhao et al., ICCV 2023: KD+DOT) and
# SimKD (Chen et al., CVPR 2022). One file per number of the tables below; the values a file sets
# come from the per-pair tables after them, each value citing the file it was read in.
# --------------------------------------------------------------------------------------------

#: The LS-KD README (sunshangquan/logit-standardization-KD README.md at f6e5aa5, "Results and Logs"):
#: table 1, teacher and student of identical structures; table 2, of distinct ones. Rows as printed
#: ("+Ours" is "_ls" here; "SHN-V2" is ShuffleNetV2, "MN-V2" MobileNetV2 (x0.5), "ResNet50" resnet50_cifar).
#: Its KD and DKD rows reprint the CRD README's and mdistiller's on their pairs (checked in
#: tests/test_cifar100_recipes.py; the README prints DKD WRN-40-2 -> WRN-16-2 as 76.24, mdistiller
#: 76.23): they have recipes only where those have. The README does not say where its CTKD and MLKD
#: rows come from; its "+Ours" rows link a training log each (LSKD_LOGS), but for MLKD+LS ResNet56 ->
#: ResNet20 and WRN-40-2 -> MobileNetV2.
LSKD_README = {
    1: """
            resnet32x4  vgg13  wrn_40_2  wrn_40_2  resnet56  resnet110  resnet110
            resnet8x4   vgg8   wrn_40_1  wrn_16_2  resnet20  resnet32   resnet20
kd          73.33       72.98  73.54     74.92     70.66     73.08      70.67
kd_ls       76.62       74.36  74.37     76.11     71.43     74.17      71.48
ctkd        73.39       73.52  73.93     75.45     71.19     73.52      70.99
ctkd_ls     76.67       74.47  74.58     76.08     71.34     74.01      71.39
dkd         76.32       74.68  74.81     76.24     71.97     74.11      71.06
dkd_ls      77.01       74.81  74.89     76.39     72.32     74.29      71.85
mlkd        77.08       75.18  75.35     76.63     72.19     74.11      71.89
mlkd_ls     78.28       75.22  75.56     76.95     72.33     74.32      72.27
""",
    2: """
            resnet32x4    resnet32x4  resnet32x4  wrn_40_2   wrn_40_2     vgg13        resnet50_cifar
            shufflenetv2  wrn_16_2    wrn_40_2    resnet8x4  mobilenetv2  mobilenetv2  mobilenetv2
kd          74.45         74.90       77.70       73.97      68.36        67.37        67.35
kd_ls       75.56         75.26       77.92       77.11      69.23        68.61        69.02
ctkd        75.37         74.57       77.66       74.61      68.34        68.50        68.67
ctkd_ls     76.18         75.16       77.99       77.03      69.53        68.98        69.36
dkd         77.07         75.70       78.46       75.56      69.28        69.71        70.35
dkd_ls      77.37         76.19       78.95       76.75      70.01        69.98        70.45
mlkd        78.44         76.52       79.26       77.33      70.78        70.57        71.04
mlkd_ls     78.76         77.53       79.66       77.68      71.61        70.94        71.19
""",
}
#: The CTKD README (zhengli97/CTKD README.md at 7d52522, "Main Results", CIFAR-100): its +CTKD row is
#: the LS-KD README's CTKD row on these pairs (checked); it prints KD ResNet110 -> ResNet20 as 70.66
#: (the CRD README: 70.67).
CTKD_README = """
            resnet56  resnet110  resnet110  wrn_40_2  wrn_40_2  vgg13
            resnet20  resnet32   resnet20   wrn_16_2  wrn_40_1  vgg8
kd          70.66     73.08      70.66      74.92     73.54     72.98
ctkd        71.19     73.52      70.99      75.45     73.93     73.52
"""
#: The mdistiller README (megvii-research/mdistiller README.md at a08d46f, "DOT: A Distillation-Oriented
#: Trainer", "On CIFAR-100"; its KD row is the CRD README's).
DOT_README = """
            resnet32x4  vgg13  resnet32x4
            resnet8x4   vgg8   shufflenetv2
kd          73.33       72.98  74.45
kd_dot      75.12       73.77  75.55
"""
#: The SimKD README (DefangChen/SimKD README.md at 2b389c3, "Some results on CIFAR-100"): the teacher
#: ResNet-32x4 and its own student baselines, and the rows "SimKD (f=8)", "(f=4)", "(f=2)" (f: the
#: projector's bottleneck factor; 2 is train_student.py's default -f). ShuffleNetV2x1.5 is
#: SimKD's ShuffleV2_1_5 (kdlab: student=shufflenetv2_1_5). Its other rows (KD ... SemCKD) are the
#: authors' re-runs of other methods: not transcribed.
SIMKD_README = """
            resnet32x4  resnet32x4  resnet32x4
            resnet8x4   vgg8        shufflenetv2_1_5
teacher     79.42       79.42       79.42
student     73.09       70.46       74.15
simkd_f8    76.73       74.74       78.96
simkd_f4    77.88       75.62       79.48
simkd       78.08       75.76       79.54
"""

#: The recipe kinds (file-name prefixes) of these tables: (method preset, README label, title).
NEW_KINDS = {
    "kd_ls": ("kd", "kd+LS", "KD + logit standardization (Sun et al., CVPR 2024)"),
    "ctkd": ("ctkd", "ctkd", "CTKD, curriculum temperature (Li et al., AAAI 2023)"),
    "ctkd_ls": ("ctkd", "ctkd+LS", "CTKD + logit standardization (Sun et al., CVPR 2024)"),
    "dkd_ls": ("dkd", "dkd+LS", "DKD + logit standardization (Sun et al., CVPR 2024)"),
    "mlkd": ("mlkd", "mlkd", "MLKD, multi-level logit distillation (Jin et al., CVPR 2023)"),
    "mlkd_ls": ("mlkd", "mlkd+LS", "MLKD + logit standardization (Sun et al., CVPR 2024)"),
    "kd_dot": ("kd", "kd+DOT", "KD trained with DOT, the distillation-oriented trainer (Zhao et al., ICCV 2023)"),
    "simkd": ("simkd", "simkd f=2", "SimKD, the reused teacher classifier (Chen et al., CVPR 2022), factor 2"),
    "simkd_f4": ("simkd", "simkd f=4", "SimKD, the reused teacher classifier (Chen et al., CVPR 2022), factor 4"),
    "simkd_f8": ("simkd", "simkd f=8", "SimKD, the reused teacher classifier (Chen et al., CVPR 2022), factor 8"),
}
#: The README labels of these rows, in the order of its second table's columns.
NEW_LABELS = tuple(label for _, label, _ in NEW_KINDS.values())

# ---- the values each recipe sets, and where they were read ------------------------------------

LSKD = "sunshangquan/logit-standardization-KD"
#: The log each "+Ours" number of the LS-KD README links to, logs/<path>.txt: "The name of each log
#: file is formated with KD_TYPE,TEACHER,STUDENT,BASE_TEMPERATURE,KD_WEIGHT.txt. The possible third
#: value for DKD is the value of BETA." (the README). The base temperature and the KD weight are
#: tools/train.py's --base-temp and --kd-weight (CTKD/: -a). None: the README links no log (MLKD+LS
#: ResNet56 -> ResNet20, WRN-40-2 -> MobileNetV2); the recipe then takes the README's usage line and
#: tools/train.py's defaults, --base-temp 2 --kd-weight 9. The README's link for CTKD+LS WRN-40-2 ->
#: WRN-40-1 reads "ogs/CTKD/..." (a typo for logs/). The cross-entropy's weight is not in the names:
#: 0.1 (KD.LOSS.CE_WEIGHT, LS-KD's mdistiller/engine/cfg.py since 2024-03-10; 1 before): the KD+LS
#: ResNet50 -> MobileNetV2 log's first epoch (train_loss 1.51 at 5.11% training accuracy) rules out
#: a weight of 1 there. The KD+LS and DKD+LS logs train 240 epochs at the student preset's lr (0.05;
#: 0.01 for MobileNetV2 / ShuffleNetV2), the MLKD+LS logs the epochs and lr of LSKD_MLKD_CONFIGS (all
#: printed per epoch); the CTKD+LS logs (JSON, no lr) 240 epochs.
LSKD_LOGS: dict[tuple[str, str, str], str | None] = {
    ("kd_ls", "resnet32x4", "resnet8x4"): "KD/kd,resnet32x4,resnet8x4,2,9",
    ("kd_ls", "vgg13", "vgg8"): "KD/kd,vgg13,vgg8,3,9",
    ("kd_ls", "wrn_40_2", "wrn_40_1"): "KD/kd,wrn_40_2,wrn_40_1,2,9",
    ("kd_ls", "wrn_40_2", "wrn_16_2"): "KD/kd,wrn_40_2,wrn_16_2,2,9",
    ("kd_ls", "resnet56", "resnet20"): "KD/kd,resnet56,resnet20,2,9",
    ("kd_ls", "resnet110", "resnet32"): "KD/kd,resnet110,resnet32,2,9",
    ("kd_ls", "resnet110", "resnet20"): "KD/kd,resnet110,resnet20,4,12",
    ("kd_ls", "resnet32x4", "shufflenetv2"): "KD/kd,resnet32x4,ShuffleV2,2,9",
    ("kd_ls", "resnet32x4", "wrn_16_2"): "KD/kd,resnet32x4,wrn_16_2,3,9",
    ("kd_ls", "resnet32x4", "wrn_40_2"): "KD/kd,resnet32x4,wrn_40_2,3,9",
    ("kd_ls", "wrn_40_2", "resnet8x4"): "KD/kd,wrn_40_2,resnet8x4,2,9",
    ("kd_ls", "wrn_40_2", "mobilenetv2"): "KD/kd,wrn_40_2,MobileNetV2,3,9",
    ("kd_ls", "vgg13", "mobilenetv2"): "KD/kd,vgg13,MobileNetV2,3,9",
    ("kd_ls", "resnet50_cifar", "mobilenetv2"): "KD/kd,ResNet50,MobileNetV2,3,1",
    ("ctkd_ls", "resnet32x4", "resnet8x4"): "CTKD/ctkd,resnet32x4,resnet8x4,2,9",
    ("ctkd_ls", "vgg13", "vgg8"): "CTKD/ctkd,vgg13,vgg8,2,9",
    ("ctkd_ls", "wrn_40_2", "wrn_40_1"): "CTKD/ctkd,wrn_40_2,wrn_40_1,2,9",
    ("ctkd_ls", "wrn_40_2", "wrn_16_2"): "CTKD/ctkd,wrn_40_2,wrn_16_2,2,9",
    ("ctkd_ls", "resnet56", "resnet20"): "CTKD/ctkd,resnet56,resnet20,2,9",
    ("ctkd_ls", "resnet110", "resnet32"): "CTKD/ctkd,resnet110,resnet32,2,9",
    ("ctkd_ls", "resnet110", "resnet20"): "CTKD/ctkd,resnet110,resnet20,2,9",
    ("ctkd_ls", "resnet32x4", "shufflenetv2"): "CTKD/ctkd,resnet32x4,ShuffleV2,2,9",
    ("ctkd_ls", "resnet32x4", "wrn_16_2"): "CTKD/ctkd,resnet32x4,wrn_16_2,2,9",
    ("ctkd_ls", "resnet32x4", "wrn_40_2"): "CTKD/ctkd,resnet32x4,wrn_40_2,2,9",
    ("ctkd_ls", "wrn_40_2", "resnet8x4"): "CTKD/ctkd,wrn_40_2,resnet8x4,2,9",
    ("ctkd_ls", "wrn_40_2", "mobilenetv2"): "CTKD/ctkd,wrn_40_2,MobileNetV2,2,9",
    ("ctkd_ls", "vgg13", "mobilenetv2"): "CTKD/ctkd,vgg13,MobileNetV2,2,9",
    ("ctkd_ls", "resnet50_cifar", "mobilenetv2"): "CTKD/ctkd,ResNet50,MobileNetV2,2,9",
    ("dkd_ls", "resnet32x4", "resnet8x4"): "DKD/dkd,resnet32x4,resnet8x4,2,9",
    ("dkd_ls", "vgg13", "vgg8"): "DKD/dkd,vgg13,vgg8,2,15,2.0",
    ("dkd_ls", "wrn_40_2", "wrn_40_1"): "DKD/dkd,wrn_40_2,wrn_40_1,2,12,2.0",
    ("dkd_ls", "wrn_40_2", "wrn_16_2"): "DKD/dkd,wrn_40_2,wrn_16_2,2,12,2.0",
    ("dkd_ls", "resnet56", "resnet20"): "DKD/dkd,resnet56,resnet20,3,18,2.0",
    ("dkd_ls", "resnet110", "resnet32"): "DKD/dkd,resnet110,resnet32,2,15,2.0",
    ("dkd_ls", "resnet110", "resnet20"): "DKD/dkd,resnet110,resnet20,2,15,2.0",
    ("dkd_ls", "resnet32x4", "shufflenetv2"): "DKD/dkd,resnet32x4,ShuffleV2,2,9",
    ("dkd_ls", "resnet32x4", "wrn_16_2"): "DKD/dkd,resnet32x4,wrn_16_2,2,9,2.0",
    ("dkd_ls", "resnet32x4", "wrn_40_2"): "DKD/dkd,resnet32x4,wrn_40_2,2,9,8.0",
    ("dkd_ls", "wrn_40_2", "resnet8x4"): "DKD/dkd,wrn_40_2,resnet8x4,2,18,2.0",
    ("dkd_ls", "wrn_40_2", "mobilenetv2"): "DKD/dkd,wrn_40_2,MobileNetV2,2,15,2.0",
    ("dkd_ls", "vgg13", "mobilenetv2"): "DKD/dkd,vgg13,MobileNetV2,3,9,2.0",
    ("dkd_ls", "resnet50_cifar", "mobilenetv2"): "DKD/dkd,ResNet50,MobileNetV2,2,15,2.0",
    ("mlkd_ls", "resnet32x4", "resnet8x4"): "MLKD/mlkd,resnet32x4,resnet8x4,2,9",
    ("mlkd_ls", "vgg13", "vgg8"): "MLKD/mlkd,vgg13,vgg8,2,6",
    ("mlkd_ls", "wrn_40_2", "wrn_40_1"): "MLKD/mlkd,wrn_40_2,wrn_40_1,2,9",
    ("mlkd_ls", "wrn_40_2", "wrn_16_2"): "MLKD/mlkd,wrn_40_2,wrn_16_2,2,9",
    ("mlkd_ls", "resnet56", "resnet20"): None,
    ("mlkd_ls", "resnet110", "resnet32"): "MLKD/mlkd,res110,res32,2,9",
    ("mlkd_ls", "resnet110", "resnet20"): "MLKD/mlkd,res110,res20,2,9",
    ("mlkd_ls", "resnet32x4", "shufflenetv2"): "MLKD/mlkd,resnet32x4,ShuffleV2,2,6",
    ("mlkd_ls", "resnet32x4", "wrn_16_2"): "MLKD/mlkd,resnet32x4,wrn_16_2,2,9",
    ("mlkd_ls", "resnet32x4", "wrn_40_2"): "MLKD/mlkd,resnet32x4,wrn_40_2,2,9",
    ("mlkd_ls", "wrn_40_2", "resnet8x4"): "MLKD/mlkd,wrn_40_2,resnet8x4,2,9",
    ("mlkd_ls", "wrn_40_2", "mobilenetv2"): None,
    ("mlkd_ls", "vgg13", "mobilenetv2"): "MLKD/mlkd,vgg13,MobileNetV2,2,6",
    ("mlkd_ls", "resnet50_cifar", "mobilenetv2"): "MLKD/mlkd,res50,mv2,2,9",
}
#: DKD.BETA of LS-KD's configs/cifar100/dkd/<file>.yaml for the DKD+LS logs whose name gives none
#: (8.0: the file sets none, mdistiller/engine/cfg.py's default).
LSKD_DKD_BETA = {
    ("resnet32x4", "resnet8x4"): (8.0, "resnet32x4_resnet8x4"),
    ("resnet32x4", "shufflenetv2"): (8.0, "resnet32x4_ShuffleV2"),
}
#: MLKD's schedule per pair (SOLVER.LR, SOLVER.EPOCHS; every file: SGD, batch 64, momentum 0.9,
#: weight decay 5e-4, lr x0.1 at epochs 150, 180 and 210 whatever the epochs), from the file named:
#: MLKD's own (Jin-Ying/Multi-Level-Logit-Distillation configs/cifar100/ours/<file>.yaml, which the
#: MLKD rows follow where it has the pair) and LS-KD's (configs/cifar100/mlkd/<file>.yaml, which the
#: MLKD+LS rows follow: their logs print the same lr and epochs, and the MLKD rows on the pairs MLKD's
#: repository lacks). (file, lr, epochs).
MLKD_CONFIGS = {
    ("resnet32x4", "resnet8x4"): ("res32x4_res8x4", 0.025, 240),
    ("vgg13", "vgg8"): ("vgg13_vgg8", 0.025, 240),
    ("wrn_40_2", "wrn_40_1"): ("wrn40_2_wrn_40_1", 0.025, 240),
    ("wrn_40_2", "wrn_16_2"): ("wrn40_2_wrn_16_2", 0.025, 240),
    ("resnet56", "resnet20"): ("res56_res20", 0.025, 240),
    ("resnet110", "resnet32"): ("res110_res32", 0.025, 240),
    ("resnet32x4", "shufflenetv2"): ("res32x4_shuv2", 0.01, 960),
    ("vgg13", "mobilenetv2"): ("vgg13_mv2", 0.01, 480),
    ("resnet50_cifar", "mobilenetv2"): ("res50_mv2", 0.01, 480),
}
LSKD_MLKD_CONFIGS = {
    ("resnet32x4", "resnet8x4"): ("resnet32x4_resnet8x4", 0.025, 480),
    ("vgg13", "vgg8"): ("vgg13_vgg8", 0.01, 480),
    ("wrn_40_2", "wrn_40_1"): ("wrn_40_2_wrn_40_1", 0.025, 480),
    ("wrn_40_2", "wrn_16_2"): ("wrn_40_2_wrn_16_2", 0.025, 480),
    ("resnet56", "resnet20"): ("resnet56_resnet20", 0.025, 480),
    ("resnet110", "resnet32"): ("resnet110_resnet32", 0.025, 480),
    ("resnet110", "resnet20"): ("resnet110_resnet20", 0.025, 480),
    ("resnet32x4", "shufflenetv2"): ("resnet32x4_ShuffleV2", 0.01, 960),
    ("resnet32x4", "wrn_16_2"): ("resnet32x4_wrn_16_2", 0.025, 480),
    ("resnet32x4", "wrn_40_2"): ("resnet32x4_wrn_40_2", 0.025, 480),
    ("wrn_40_2", "resnet8x4"): ("wrn_40_2_resnet8x4", 0.025, 480),
    ("wrn_40_2", "mobilenetv2"): ("wrn_40_2_MobileNetV2", 0.005, 480),
    ("vgg13", "mobilenetv2"): ("vgg13_MobileNetV2", 0.01, 480),
    ("resnet50_cifar", "mobilenetv2"): ("ResNet50_MobileNetV2", 0.01, 480),
}
#: KD+DOT: mdistiller configs/cifar100/dot/<file>.yaml (SOLVER.LR, SOLVER.DOT.DELTA; TRAINER "dot";
#: DISTILLER.TYPE "KD" at mdistiller's KD defaults, the kd preset's; SGD momentum 0.9, weight decay
#: 5e-4, batch 64, 240 epochs, lr x0.1 at 150, 180, 210, as the benchmark). (file, lr, delta).
DOT_CONFIGS = {
    ("resnet32x4", "resnet8x4"): ("res32x4_res8x4", 0.05, 0.075),
    ("vgg13", "vgg8"): ("vgg13_vgg8", 0.05, 0.075),
    ("resnet32x4", "shufflenetv2"): ("res32x4_shuv2", 0.01, 0.075),
}
#: SimKD's factor per recipe kind (the README's rows; train_student.py -f).
SIMKD_FACTORS = {"simkd": 2, "simkd_f4": 4, "simkd_f8": 8}

# ---- where the numbers come from, and what they are --------------------------------------------

LSKD_SOURCE = (
    'the LS-KD README (sunshangquan/logit-standardization-KD README.md, "Results and Logs"), table {table} '
    '({kind} structures), row "{row}"'
)
LSKD_ROW_NAMES = {"ctkd": "CTKD", "mlkd": "MLKD", "kd_ls": "KD+Ours", "ctkd_ls": "CTKD+Ours"}
LSKD_ROW_NAMES |= {"dkd_ls": "DKD+Ours", "mlkd_ls": "MLKD+Ours"}
CTKD_SOURCE = 'the CTKD README (zhengli97/CTKD README.md, "Main Results", CIFAR-100), row "+CTKD"'
DOT_SOURCE = (
    'the mdistiller README (megvii-research/mdistiller README.md, "DOT: A Distillation-Oriented Trainer", '
    '"On CIFAR-100"), row "KD+DOT"'
)
SIMKD_SOURCE = 'the SimKD README (DefangChen/SimKD README.md, "Some results on CIFAR-100"), row "SimKD (f={factor})"'
LSKD_PROTOCOL = (
    'averaged over runs, how many not stated (the README: "Due to average operation and randomness, there may be '
    'slight differences between the reported results and the logged results"); which epoch: not stated (each linked '
    "log, one run (two for CTKD+LS ResNet32x4 -> ShuffleNetV2 / WRN-16-2 / WRN-40-2), ends with best_acc, the highest "
    "test accuracy over the epochs, within 0.9 points of the README's number); trained on all 50,000 training images"
)
CTKD_PROTOCOL = (
    "not stated in the READMEs (CTKD's train_student.py records best_acc, the highest test accuracy over the "
    "epochs, beside each epoch's test_acc); runs averaged: not stated; trained on all 50,000 training images"
)
MLKD_PROTOCOL = (
    "not stated in the LS-KD README, which does not say where its MLKD row comes from (MLKD's trainer, "
    "mdistiller's, writes best_acc, the highest test accuracy over the epochs); runs averaged: not stated; trained "
    "on all 50,000 training images, each batch under a weak and a strong (RandAugment) augmentation"
)
DOT_PROTOCOL = (
    "best test epoch, trained on all 50,000 training images (mdistiller's trainer, its DOT trainer included, "
    "reports best_acc, the highest test accuracy over the epochs); runs averaged: not stated in the README"
)
SIMKD_PROTOCOL = (
    "not stated in the README (the authors' train_student.py keeps best_acc, the highest test accuracy over the "
    "epochs, and saves that epoch's student and projector); runs averaged: not stated; trained on all 50,000 "
    "training images"
)

#: What a file says about its row besides its values (comment lines), by kind.
NEW_NOTES = {
    "kd_ls": [
        "LS-KD's KD+LS (tools/train.py --logit-stand --base-temp T --kd-weight w): KD on Z-scored logits at",
        "temperature T, weight w; CE 0.1 (mdistiller/engine/cfg.py KD.LOSS.CE_WEIGHT, the kd preset's).",
    ],
    "dkd_ls": [
        "LS-KD's DKD+LS (tools/train.py at 6b58661, 2024-05-18: DKD.ALPHA x w, DKD.BETA x w, DKD.T = T; CE 1.0,",
        "20-epoch warm-up, the dkd preset's). Its code before that commit set beta = (alpha x w) x w and the",
        "temperature on KD.TEMPERATURE, which DKD does not read (DKD.T stays 4); which code ran the published",
        "numbers is not stated (the log names record BETA, which only the later code reads).",
    ],
    "ctkd": [
        "CTKD's own CIFAR-100 settings (zhengli97/CTKD scripts/run_cifar_distill.sh, train_student.py): CE 0.1,",
        "KD 0.9, a global temperature t_start + t_end * sigmoid(t), t_start 1, t_end 20, learned through a",
        "gradient reversal whose strength follows a cosine from 0 to 1 over 10 epochs (the ctkd preset's).",
    ],
    "ctkd_ls": [
        "LS-KD's CTKD+LS (CTKD/scripts/run_cifar_distill.sh: -r 0.1 -a 9, global temperature, cosine decay 0 -> -1",
        "over 10 epochs). CTKD/train_student.py standardizes unless --logit_stand is given (its criterion_div =",
        "DistillKL() if opt.logit_stand else DistillKL_logit_stand()); the script gives none. The logs' base",
        "temperature 2 (--kd_T) is not read while the temperature is learned (helper/loops.py); their",
        "temperatures span 2.001-30.4, outside the script's t_start 1 / t_end 20 range [1, 21]: the range",
        "used is not stated, the recipe keeps the ctkd preset's.",
    ],
    "mlkd": [
        "MLKD's own settings (Jin-Ying/Multi-Level-Logit-Distillation: CE 0.1 on each view, KD 0.9, T 4, the",
        "mlkd preset's); every batch also under a strong augmentation (tools/train_ours.py, get_dataset_strong).",
    ],
    "mlkd_ls": [
        "LS-KD's MLKD+LS (tools/train.py --logit-stand --base-temp T --kd-weight w: KD.TEMPERATURE T,",
        "KD.LOSS.KD_WEIGHT w; CE 0.1 on each view); every batch also under a strong augmentation.",
    ],
    "kd_dot": [
        "KD (the kd preset: CE 0.1, KD 0.9, T 4, mdistiller's KD) trained with DOT: the task loss's gradient",
        "and KD's get their own momentum, 0.9 - delta and 0.9 + delta (mdistiller/engine/trainer.py DOT).",
    ],
    "simkd": ["SimKD's loss alone (train_student.py -c 0 -d 0 -b 1: no cross-entropy, no KD; the simkd preset's)."],
}
NEW_NOTES["simkd_f4"] = NEW_NOTES["simkd_f8"] = NEW_NOTES["simkd"]


def lskd_log(kind: str, teacher: str, student: str) -> tuple[float, float, float | None, str]:
    """(base temperature, KD weight, DKD's beta or None, where read) of an LS-KD "+Ours" recipe."""
    log = LSKD_LOGS[kind, teacher, student]
    if log is None:
        return 2.0, 9.0, None, f"no log linked: the LS-KD README's usage line and {LSKD} tools/train.py defaults"
    t, w, *beta = log.split(",")[3:]
    return float(t), float(w), float(beta[0]) if beta else None, f"{LSKD} logs/{log}.txt"


def recipe_values(kind: str, teacher: str, student: str) -> list[tuple[str, object, str]]:
    """The values a 2022-2024 recipe sets: (dotted key, value, where it was read)."""
    pair = (teacher, student)
    out: list[tuple[str, object, str]] = []
    if kind in ("mlkd", "mlkd_ls"):
        out.append(("data.strong_view", True, "MLKD trains on a weak and a strong view of each batch"))
        if kind == "mlkd" and pair in MLKD_CONFIGS:
            file, lr, epochs = MLKD_CONFIGS[pair]
            where = f"Jin-Ying/Multi-Level-Logit-Distillation configs/cifar100/ours/{file}.yaml"
        else:
            file, lr, epochs = LSKD_MLKD_CONFIGS[pair]
            where = f"{LSKD} configs/cifar100/mlkd/{file}.yaml"
        lacks = "; MLKD's repository has no config for this pair" if kind == "mlkd" and pair not in MLKD_CONFIGS else ""
        out += [("student.optimizer.lr", lr, f"{where} (SOLVER.LR{lacks})")]
        out += [("student.max_epochs", epochs, f"{where} (SOLVER.EPOCHS{lacks})")]
    if kind == "kd_dot":
        file, lr, delta = DOT_CONFIGS[pair]
        where = f"mdistiller configs/cifar100/dot/{file}.yaml"
        out += [
            ("student.optimizer._target_", "kdlab.optim.DOT", f"{where} (SOLVER.TRAINER: dot)"),
            ("student.optimizer._partial_", True, "the optimizer gets the parameters when the run is built"),
            ("student.optimizer.lr", lr, f"{where} (SOLVER.LR)"),
            ("student.optimizer.momentum", 0.9, f"{where} (SOLVER.MOMENTUM)"),
            ("student.optimizer.delta", delta, f"{where} (SOLVER.DOT.DELTA)"),
            ("student.optimizer.weight_decay", 0.0005, f"{where} (SOLVER.WEIGHT_DECAY)"),
        ]
    if kind in ("kd_ls", "dkd_ls", "ctkd_ls", "mlkd_ls"):
        t, w, beta, where = lskd_log(kind, teacher, student)
        term = {"kd_ls": "kd", "dkd_ls": "dkd", "ctkd_ls": "kd", "mlkd_ls": "mlkd"}[kind]
        standardized = "CTKD/train_student.py DistillKL_logit_stand" if kind == "ctkd_ls" else "--logit-stand"
        out.append((f"method.terms.{term}.standardize", True, f"{standardized} ({where})"))
        if kind in ("kd_ls", "mlkd_ls"):
            out += [
                (f"method.terms.{term}.temperature", t, f"--base-temp {t:g} ({where})"),
                (f"method.terms.{term}.weight", w, f"--kd-weight {w:g} ({where})"),
            ]
        if kind == "ctkd_ls":
            out.append(("method.terms.kd.weight", w, f"-a {w:g} (CTKD/scripts/run_cifar_distill.sh; {where})"))
        if kind == "dkd_ls":
            if beta is None:
                beta, file = LSKD_DKD_BETA[pair]
                beta_where = f"DKD.BETA {beta:g} ({LSKD} configs/cifar100/dkd/{file}.yaml sets none: cfg.py's)"
            else:
                beta_where = f"BETA {beta:g} (the log name's third value)"
            out += [
                ("method.terms.dkd.temperature", t, f"--base-temp {t:g} -> DKD.T ({where})"),
                ("method.terms.dkd.alpha", 1.0 * w, f"DKD.ALPHA 1.0 x --kd-weight {w:g} ({where})"),
                ("method.terms.dkd.beta", beta * w, f"{beta_where}, x --kd-weight {w:g}"),
            ]
    if kind in SIMKD_FACTORS:
        out.append(
            ("method.terms.simkd.factor", SIMKD_FACTORS[kind], f'SimKD README row "SimKD (f={SIMKD_FACTORS[kind]})"')
        )
    return out


@dataclass(frozen=True)
class NewCell:
    """One number of the 2022-2024 tables: the recipe kind, pair, value (%), source and protocol."""

    kind: str
    teacher: str
    student: str
    value: float
    source: str
    protocol: str


@cache
def new_cells() -> dict[tuple[str, str, str], NewCell]:
    """The number each 2022-2024 recipe cites, by (kind, teacher, student)."""
    out: dict[tuple[str, str, str], NewCell] = {}
    ctkd = {(c.teacher, c.student): c.value for c in parse(CTKD_README, "ctkd", 1) if c.method == "ctkd"}
    for n, text in LSKD_README.items():
        for c in parse(text, "lskd", n):
            if c.method not in LSKD_ROW_NAMES:
                continue
            kind = {1: "identical", 2: "distinct"}[n]
            source = LSKD_SOURCE.format(table=n, kind=kind, row=LSKD_ROW_NAMES[c.method])
            proto = {"ctkd": CTKD_PROTOCOL, "mlkd": MLKD_PROTOCOL}.get(c.method, LSKD_PROTOCOL)
            if c.method == "ctkd" and (c.teacher, c.student) in ctkd:
                if ctkd[c.teacher, c.student] != c.value:
                    raise ValueError(
                        f"CTKD {c.teacher} -> {c.student}: {c.value} (LS-KD), {ctkd[c.teacher, c.student]}"
                    )
                source += f" and {CTKD_SOURCE}"
            if c.method == "mlkd_ls":
                proto += "; each batch under a weak and a strong (RandAugment) augmentation"
            out[c.method, c.teacher, c.student] = NewCell(c.method, c.teacher, c.student, c.value, source, proto)
    for c in parse(DOT_README, "dot", 1):
        if c.method == "kd_dot":
            out[c.method, c.teacher, c.student] = NewCell(
                c.method, c.teacher, c.student, c.value, DOT_SOURCE, DOT_PROTOCOL
            )
    for c in parse(SIMKD_README, "simkd", 1):
        if c.method in SIMKD_FACTORS:
            source = SIMKD_SOURCE.format(factor=SIMKD_FACTORS[c.method])
            out[c.method, c.teacher, c.student] = NewCell(
                c.method, c.teacher, c.student, c.value, source, SIMKD_PROTOCOL
            )
    return out


def simkd_baselines() -> dict[str, float]:
    """The SimKD README's own student baselines (row Student), by student preset."""
    return {c.student: c.value for c in parse(SIMKD_README, "simkd", 1) if c.method == "student"}


def _yaml_scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def nested_lines(values: list[tuple[str, object, str]]) -> list[str]:
    """YAML lines setting each dotted key of ``values`` to its value, commented with where it was read."""
    lines: list[str] = []
    opened: list[str] = []
    for key, value, why in values:
        *parents, leaf = key.split(".")
        common = 0
        while common < min(len(opened), len(parents)) and opened[common] == parents[common]:
            common += 1
        for depth in range(common, len(parents)):
            lines.append("  " * depth + f"{parents[depth]}:")
        opened = parents
        lines.append("  " * len(parents) + f"{leaf}: {_yaml_scalar(value)}    # {why}")
    return lines


def new_distill_file(kind: str, teacher: str, student: str) -> str:
    method, _, title = NEW_KINDS[kind]
    cell = new_cells()[kind, teacher, student]
    lines = [
        "# @package _global_",
        f"# {title}: {NAMES[teacher]} -> {NAMES[student]} on CIFAR-100.",
        HEADER.rstrip("\n"),
        *(f"# {note}" for note in NEW_NOTES[kind]),
    ]
    own = {"ctkd": {(c.teacher, c.student) for c in parse(CTKD_README, "ctkd", 1)}, "mlkd": set(MLKD_CONFIGS)}
    if kind in own and (teacher, student) not in own[kind]:
        lines.append(f"# Who ran {kind.upper()} on this pair for the LS-KD README, with which settings: not stated.")
    lines += [
        "defaults:",
        "  - /benchmark/crd_cifar100/distill",
        f"  - override /teacher: {teacher}",
        f"  - override /student: {student}",
        f"  - override /method: {method}",
    ]
    lines += nested_lines(recipe_values(kind, teacher, student))
    lines.append("published:")
    if kind in SIMKD_FACTORS:
        baseline = simkd_baselines()[student]
        lines.append(
            f"  student_acc: {fraction(baseline)}    # the student trained alone, as the same source prints it"
        )
    lines += [
        f"  method_acc: {fraction(cell.value)}",
        f"  source: {quote(cell.source)}",
        f"  protocol: {quote(cell.protocol)}",
    ]
    return "\n".join(lines) + "\n"


def new_cifar100_files() -> dict[str, str]:
    """The 2022-2024 recipe files: name (no .yaml) -> text."""
    return {f"{k}_{t}_{s}": new_distill_file(k, t, s) for k, t, s in new_cells()}


# --------------------------------------------------------------------------------------------
# ImageNet: ResNet-34 -> ResNet-18 and ResNet-50 -> MobileNet-V1 (the CRD / DKD / ReviewKD / DIST
# benchmark), experiments/imagenet/. Top-1 accuracy (%) on the ILSVRC 2012 validation set, as printed
# in the sources read (the DKD, CRD and OFD papers' own tables could not be read here: their numbers
# are taken from the READMEs that print them, each cited). One file per pair x method, one per
# teacher (trains it from scratch with torchvision's recipe) and one per student trained alone.
# --------------------------------------------------------------------------------------------

#: file-name stem of a pair -> (teacher preset, student preset); the names in the files.
IMAGENET_PAIRS = {
    "resnet34_resnet18": ("resnet34_imagenet", "resnet18_imagenet"),
    "resnet50_mobilenetv1": ("resnet50_imagenet", "mobilenetv1_imagenet"),
}
IMAGENET_METHODS = ("kd", "at", "crd", "reviewkd", "dkd", "dist")
IMAGENET_NAMES = {
    "resnet34_imagenet": "ResNet-34",
    "resnet50_imagenet": "ResNet-50",
    "resnet18_imagenet": "ResNet-18",
    "mobilenetv1_imagenet": "MobileNet-V1",
}
#: The sources read, and what their numbers are (published.protocol).
IMAGENET_SOURCES = {
    "mdistiller": (
        'the mdistiller README (megvii-research/mdistiller README.md, "Decoupled Knowledge Distillation", '
        '"On ImageNet")',
        "best val/ epoch: mdistiller's trainer (mdistiller/engine/trainer.py) reports best_acc, the highest "
        "val/ top-1 over the epochs, trained on all of train/; runs averaged: not stated",
    ),
    "reviewkd": (
        'the ReviewKD README (dvlab-research/ReviewKD ImageNet/README.md, "Results")',
        "best val/ epoch: ReviewKD's ImageNet/imagenet_amp.py prints best_prec1, the highest val/ top-1 over "
        "the epochs, trained on all of train/; runs averaged: not stated",
    ),
    "dist": (
        'the DIST README (hunto/DIST_KD README.md, ImageNet "Baseline settings")',
        "not stated in the README (trained on all of train/, evaluated on val/; a training log per row is "
        "linked there)",
    ),
    "torchdistill": (
        "torchdistill's ImageNet benchmark table (yoshitomo-matsubara/torchdistill "
        'docs/source/_static/benchmarks/imagenet-resnet18_kd.tsv), column "Original work"',
        "the original paper's number as torchdistill lists it; which epoch and how many runs: not stated there",
    ),
    "nd": (
        'the ND README (WangYZ1608/Knowledge-Distillation-via-ND README.md, "1.2 ImageNet-1k" comparison '
        "table, which does not say where it took the number)",
        "not stated in the README (a comparison table reprinting other papers' numbers)",
    ),
}
#: The paper each method's number is the result of, for published.source.
IMAGENET_PAPERS = {
    "kd": "KD (Hinton et al. 2015) as run by mdistiller (DKD, Zhao et al., CVPR 2022)",
    "at": "AT (Zagoruyko & Komodakis, ICLR 2017)",
    "crd": "CRD (Tian et al., ICLR 2020)",
    "reviewkd": "ReviewKD (Chen et al., CVPR 2021)",
    "dkd": "DKD (Zhao et al., CVPR 2022)",
    "dist": "DIST (Huang et al., NeurIPS 2022)",
}
#: (method, pair) -> (published top-1 %, or None: not found in a source read; the sources printing it).
#: A number read in several sources agrees in all of them (test_imagenet.py); where a reprint
#: disagrees with the authors' own README the README is cited and the reprint noted here: the ND
#: README prints ReviewKD ResNet-34 -> ResNet-18 as 71.62 (ReviewKD's README: 71.61) and, as "KD",
#: 70.66 for ResNet-34 -> ResNet-18 (CRD's KD baseline, not mdistiller's KD row, 71.03).
IMAGENET_PUBLISHED = {
    ("kd", "resnet34_resnet18"): (71.03, ("mdistiller",)),
    ("kd", "resnet50_mobilenetv1"): (70.50, ("mdistiller", "nd")),
    ("at", "resnet34_resnet18"): (70.70, ("torchdistill",)),
    # AT ResNet-50 -> MobileNet-V1 (printed in the OFD and DKD papers' tables, which could not be read
    # here) is in none of the READMEs read: no number.
    ("at", "resnet50_mobilenetv1"): (None, ()),
    ("crd", "resnet34_resnet18"): (71.17, ("torchdistill", "nd")),
    ("crd", "resnet50_mobilenetv1"): (71.37, ("nd",)),
    ("reviewkd", "resnet34_resnet18"): (71.61, ("reviewkd", "torchdistill")),
    ("reviewkd", "resnet50_mobilenetv1"): (72.56, ("reviewkd", "nd")),
    ("dkd", "resnet34_resnet18"): (71.70, ("mdistiller", "nd")),
    ("dkd", "resnet50_mobilenetv1"): (72.05, ("mdistiller", "nd")),
    ("dist", "resnet34_resnet18"): (72.07, ("dist", "torchdistill")),
    ("dist", "resnet50_mobilenetv1"): (73.24, ("dist",)),
}
#: Teacher and student accuracies a row's source prints besides the presets' (published_acc): the
#: DIST README trains its own baselines, "ResNet-18 (69.76)" and "MobileNet V1 (70.13)".
IMAGENET_OWN_BASELINES = {"dist": {"resnet34_resnet18": 69.76, "resnet50_mobilenetv1": 70.13}}
#: torchdistill's re-runs (the same recipe, its own code): README tables of
#: configs/official/ilsvrc2012/yoshitomo-matsubara/{rrpr2020,nlp-oss2023}/README.md and the "torchdistill"
#: column of docs/source/_static/benchmarks/imagenet-resnet18_kd.tsv; ResNet-34 -> ResNet-18 only.
TORCHDISTILL_RERUNS = {"kd": 71.37, "at": 70.90, "crd": 70.93, "reviewkd": 71.64, "dist": 71.95}
TORCHDISTILL_SOURCE = (
    "torchdistill's ImageNet benchmark table (yoshitomo-matsubara/torchdistill "
    'docs/source/_static/benchmarks/imagenet-resnet18_kd.tsv), column "torchdistill" (configs in '
    "configs/official/ilsvrc2012 and configs/sample/ilsvrc2012): one run of its own code and config, "
    "the checkpoint of the best val/ top-1 (examples/torchvision/image_classification.py)"
)
#: Teacher rows: torchvision's weights, as the benchmark prints their accuracy; student rows: the
#: students trained alone, as the ReviewKD README prints them ("Baseline").
IMAGENET_BASELINES = {
    "teacher": {
        "resnet34_imagenet": ("resnet34", 'the DIST README (hunto/DIST_KD README.md), "ResNet-34 (73.31)"'),
        "resnet50_imagenet": (
            "resnet50",
            'the DIST README (hunto/DIST_KD README.md), "ResNet-50 (76.16)"; the OFD README '
            "(clovaai/overhaul-distillation ImageNet/README.md): 23.84 top-1 error",
        ),
    },
    "student": {
        "resnet18_imagenet": (
            "resnet18",
            'the ReviewKD README (dvlab-research/ReviewKD ImageNet/README.md), "Baseline"',
        ),
        "mobilenetv1_imagenet": (
            "mobilenetv1",
            'the ReviewKD README (dvlab-research/ReviewKD ImageNet/README.md), "Baseline"; the OFD README '
            "(clovaai/overhaul-distillation ImageNet/README.md): 31.13 top-1 error",
        ),
    },
}
IMAGENET_BASELINE_PROTOCOL = {
    "teacher": (
        "torchvision's pretrained weights (IMAGENET1K_V1; torchvision's own metadata: acc@1 73.314 for "
        "ResNet-34, 76.130 for ResNet-50), evaluated on val/ at 224 (Resize 256, CenterCrop 224); which "
        "epoch of torchvision's training: not stated"
    ),
    "student": "trained alone on all of train/, evaluated on val/; which epoch and how many runs: not stated in the README",
}

_MDISTILLER = "mdistiller configs/imagenet/{pair}/{method}.yaml"
_MD_PAIR = {"resnet34_resnet18": "r34_r18", "resnet50_mobilenetv1": "r50_mv1"}
#: ReviewKD's student maps before their last activation (mdistiller REVIEWKD.STU_PREACT: True on ImageNet;
#: ReviewKD's extract_feature(preReLU=True)): the student's pre-activation stages, then its pooled feature.
_REVIEWKD_STUDENT_TAPS = {
    "resnet34_resnet18": [f"layer{i}.1.act2:input" for i in (1, 2, 3, 4)] + ["pre_logits"],
    "resnet50_mobilenetv1": [f"model.{i}.4" for i in (3, 5, 11, 13)] + ["pre_logits"],
}


def imagenet_values(method: str, pair: str) -> list[tuple[str, object, str]]:
    """The method values an ImageNet recipe sets (key under method.terms, value, where from): the
    reference code's ImageNet settings, where they differ from the method preset's (CIFAR) defaults."""
    md = _MDISTILLER.format(pair=_MD_PAIR[pair], method=method)
    if method == "kd":
        return [
            ("ce.weight", 0.5, f"{md} (KD.LOSS.CE_WEIGHT)"),
            ("kd.weight", 0.5, f"{md} (KD.LOSS.KD_WEIGHT)"),
            ("kd.temperature", 1.0, f"{md} (KD.TEMPERATURE)"),
        ]
    if method == "dkd":
        beta = {"resnet34_resnet18": 0.5, "resnet50_mobilenetv1": 2.0}[pair]
        return [
            ("dkd.beta", beta, f"{md} (DKD.BETA)"),
            ("dkd.temperature", 1.0, f"{md} (DKD.T)"),
            ("dkd.warmup_epochs", 1, f"{md} (DKD.WARMUP)"),
        ]
    if method == "reviewkd":
        weight, mid = {"resnet34_resnet18": (1.0, 512), "resnet50_mobilenetv1": (8.0, 256)}[pair]
        return [
            ("reviewkd.weight", weight, f"{md} (REVIEWKD_WEIGHT); ReviewKD ImageNet/README.md --review-kd-loss-weight"),
            ("reviewkd.warmup_epochs", 1, f"{md} (WARMUP_EPOCHS); ReviewKD's ImageNet script has no warm-up"),
            ("reviewkd.max_mid_channel", mid, "ReviewKD ImageNet/models/reviewkd.py (mid_channel)"),
            ("reviewkd.student_taps", _REVIEWKD_STUDENT_TAPS[pair], f"{md} (STU_PREACT: True)"),
        ]
    if method == "dist":
        why = "image_classification_sota configs/strategies/distill/resnet_dist.yaml and lib/models/losses/kd_loss.py"
        return [
            ("dist.weight", 2.0, f"{why} (kd_loss_weight)"),
            ("dist.beta", 1.0, f"{why} (DIST(beta=1, gamma=1, tau=1))"),
            ("dist.gamma", 1.0, why),
            ("dist.temperature", 1.0, why),
        ]
    return []


#: What an ImageNet recipe says about its method besides its values (a comment line each).
IMAGENET_NOTES = {
    "kd": "mdistiller trains KD at batch 512, lr 0.2: this recipe under the linear scaling rule.",
    "at": (
        "AT: the method preset's values are mdistiller's on ImageNet too (CFG.AT: CE 1.0, weight 1000, p 2); "
        "mdistiller trains it at batch 512, lr 0.2 (this recipe, linearly scaled)."
    ),
    "crd": (
        "CRD: the method preset's values are mdistiller's on ImageNet too (CFG.CRD: 128-d embeddings, 16384 "
        "negatives, NCE T 0.07, momentum 0.5, CE 1.0, weight 0.8; batch 256, lr 0.1)."
    ),
    "reviewkd": "ReviewKD: batch 256, lr 0.1 as mdistiller; the teacher's pre-activation stages (the preset's default).",
    "dkd": "DKD (alpha 1.0, CE 1.0 as the preset): mdistiller trains it at batch 512, lr 0.2 (linearly scaled).",
    "dist": "DIST: CE 1.0 (ori_loss_weight); batch 32 x 8 GPUs, lr 0.1 in the reference.",
}
IMAGENET_AT_PAIRING = (
    "mdistiller's r50_mv1/at.yaml pairs MobileNet stages 2-4 with ResNet-50 stages 1-3 (its MobileNetV1 "
    "returns no stem map); here stages of the same stride are paired (the AT preset's default)."
)

IMAGENET_HEADER = (
    "# Generated by `python -m kdlab.recipes imagenet --write` from kdlab/recipes.py (the published numbers\n"
    "# read from the sources, the method values of the reference code): change it there, not here.\n"
)


def _yaml_value(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(quote(str(v)) for v in value) + "]"
    return str(value)


def imagenet_distill_file(method: str, pair: str) -> str:
    teacher, student = IMAGENET_PAIRS[pair]
    lines = [
        "# @package _global_",
        f"# {TITLES[method]}: {IMAGENET_NAMES[teacher]} -> {IMAGENET_NAMES[student]} on ImageNet, the CRD / DKD "
        "ImageNet benchmark recipe.",
        IMAGENET_HEADER.rstrip("\n"),
        f"# {IMAGENET_NOTES[method]}",
    ]
    if method == "at" and pair == "resnet50_mobilenetv1":
        lines.append(f"# {IMAGENET_AT_PAIRING}")
    lines += [
        "defaults:",
        "  - /benchmark/imagenet/distill",
        f"  - override /teacher: {teacher}",
        f"  - override /student: {student}",
        f"  - override /method: {method}",
    ]
    values = imagenet_values(method, pair)
    if values:
        lines += ["method:", "  terms:"]
        for term in dict.fromkeys(key.split(".")[0] for key, _, _ in values):
            lines.append(f"    {term}:")
            for key, value, why in values:
                if key.split(".")[0] == term:
                    lines.append(f"      {key.split('.', 1)[1]}: {_yaml_value(value)}    # {why}")
    value, read_in = IMAGENET_PUBLISHED[method, pair]
    if value is None:
        source = f"not found in the sources read: {IMAGENET_PAPERS[method]}, ImageNet {pair}"
        proto = "not found"
    else:
        source = f"{IMAGENET_PAPERS[method]}, as printed in " + " and in ".join(IMAGENET_SOURCES[k][0] for k in read_in)
        proto = IMAGENET_SOURCES[read_in[0]][1]
    lines += ["published:"]
    own = IMAGENET_OWN_BASELINES.get(method, {}).get(pair)
    if own is not None:
        lines.append(f"  student_acc: {fraction(own)}    # the student trained alone, as the same source prints it")
    lines += [f"  method_acc: {fraction(value)}", f"  source: {quote(source)}", f"  protocol: {quote(proto)}"]
    if pair == "resnet34_resnet18" and method in TORCHDISTILL_RERUNS:
        lines += [
            f"  rerun_acc: {fraction(TORCHDISTILL_RERUNS[method])}",
            f"  rerun_source: {quote(TORCHDISTILL_SOURCE)}",
        ]
    return "\n".join(lines) + "\n"


def imagenet_baseline_file(role: str, preset: str) -> str:
    name, source = IMAGENET_BASELINES[role][preset]
    if role == "teacher":
        head = [
            f"# Train the {IMAGENET_NAMES[preset]} teacher on ImageNet from scratch with torchvision's recipe (cached",
            "# for every recipe that sets teacher.checkpoint=null; the distillation recipes load torchvision's weights).",
            IMAGENET_HEADER.rstrip("\n"),
            "defaults:",
            "  - /benchmark/imagenet/teacher",
            f"  - override /teacher: {preset}",
        ]
    else:
        head = [
            f"# {IMAGENET_NAMES[preset]} trained alone on ImageNet (the student baseline).",
            IMAGENET_HEADER.rstrip("\n"),
            "defaults:",
            "  - /benchmark/imagenet/baseline",
            f"  - override /student: {preset}",
        ]
    return baseline_text(head, source, IMAGENET_BASELINE_PROTOCOL[role])


def imagenet_files() -> dict[str, str]:
    """Every ImageNet recipe file: name (no .yaml) -> text."""
    files = {}
    for pair, (teacher, student) in IMAGENET_PAIRS.items():
        files[f"teacher_{IMAGENET_BASELINES['teacher'][teacher][0]}"] = imagenet_baseline_file("teacher", teacher)
        files[f"none_{IMAGENET_BASELINES['student'][student][0]}"] = imagenet_baseline_file("student", student)
        for method in IMAGENET_METHODS:
            files[f"{method}_{pair}"] = imagenet_distill_file(method, pair)
    return dict(sorted(files.items()))


GENERATORS = {"cifar100": cifar100_files, "imagenet": imagenet_files}


def write_files(dataset: str) -> None:
    """Write the generated recipe files of ``dataset``; remove generated files it no longer has."""
    folder = ROOT / "experiments" / dataset
    files = GENERATORS[dataset]()
    changed = 0
    for name, text in files.items():
        path = folder / f"{name}.yaml"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed += 1
    stale = [p for p in folder.glob("*.yaml") if p.stem not in files and "kdlab.recipes" in p.read_text()]
    for p in stale:
        p.unlink()
    print(f"experiments/{dataset}: {len(files)} recipe files, {changed} written, {len(stale)} removed")


# --------------------------------------------------------------------------------------------
# The README's tables, read from the files
# --------------------------------------------------------------------------------------------


def recipe_names(dataset: str) -> list[str]:
    """The recipe files of ``experiments/<dataset>/``, without their .yaml."""
    return sorted(p.stem for p in (ROOT / "experiments" / dataset).glob("*.yaml"))


@cache
def composed(dataset: str, name: str) -> tuple[DictConfig, dict]:
    """The config ``kdlab-train experiments=<dataset>/<name>`` runs with, and the preset Hydra chose
    for each group (composed once per process; do not modify them)."""
    return compose([f"experiments={dataset}/{name}"])


def resolved(dataset: str, name: str) -> DictConfig:
    """The config ``kdlab-train experiments=<dataset>/<name>`` runs with (composed once per process;
    do not modify it)."""
    return composed(dataset, name)[0]


#: Term options that modify a method and are off unless a recipe says so: shown only when on.
MODIFIERS = ("standardize",)


@cache
def preset_arch(group: str, preset: str) -> str | None:
    """The arch ``conf/<group>/<preset>.yaml`` names (read from the file)."""
    return OmegaConf.load(ROOT / "conf" / group / f"{preset}.yaml").get("arch")


def model_name(group: str, preset: str | None, arch: str) -> str:
    """How the tables name a teacher or student: its arch, or its preset where another preset of the
    group builds the same arch with other arguments (shufflenetv2_1_5: a wider shufflenetv2)."""
    if preset is None or preset == arch:
        return arch
    others = [p.stem for p in (ROOT / "conf" / group).glob("*.yaml") if p.stem != preset]
    return preset if any(preset_arch(group, other) == arch for other in others) else arch


def label(cfg: DictConfig) -> str:
    """A distillation row's method as the tables name it: the method preset, "+LS" when a term
    standardizes the logits, "+DOT" when the student trains with DOT, SimKD's factor."""
    name = str(cfg.method.name)
    terms = cfg.method.terms
    if any(isinstance(args, DictConfig) and args.get("standardize") is True for args in terms.values()):
        name += "+LS"
    if str(OmegaConf.select(cfg, "student.optimizer._target_", default="")).endswith(".DOT"):
        name += "+DOT"
    factor = OmegaConf.select(cfg, "method.terms.simkd.factor", default=None)
    if name == "simkd" and factor is not None:
        name += f" f={factor}"
    return name


def notes(cfg: DictConfig) -> str:
    """What else a row trains with: a strong view of the data, an optimizer other than SGD."""
    out = []
    if cfg.data.get("strong_view"):
        out.append("strong view")
    optimizer = cfg.student.optimizer
    if str(optimizer._target_) != "torch.optim.SGD":
        extra = f" delta={optimizer.delta}" if "delta" in optimizer else ""
        out.append(f"{str(optimizer._target_).rpartition('.')[2]}{extra}")
    return "; ".join(out) or "-"


def _arguments(prefix: str, args: DictConfig):
    """(dotted path, key, value) of each argument of a term, a nested node's (CTKD's curriculum) too;
    Hydra's own keys (``_target_``) left out."""
    for key, value in args.items():
        if str(key).startswith("_"):
            continue
        if isinstance(value, DictConfig):
            yield from _arguments(f"{prefix}.{key}", value)
        else:
            yield f"{prefix}.{key}", key, value


def row(name: str, cfg: DictConfig, choices: dict | None = None) -> dict[str, str]:
    """One recipe's columns. A teacher row (``task: teacher``) reports the teacher's own
    optimizer, epochs and batch; any other row the student's, and the method's terms.
    ``choices``: the presets Hydra chose (names a preset that shares its arch, see ``model_name``)."""
    trains_teacher = cfg.task == "teacher"
    has_teacher = not trains_teacher and cfg.method.name != "none"
    model = cfg.teacher if trains_teacher else cfg.student
    choices = choices or {}
    terms = [
        f"{path}={value}"
        for term, args in cfg.method.terms.items()
        for path, key, value in _arguments(str(term), args)
        if value is not None and not (key in MODIFIERS and value is False)
    ]
    published = cfg.get("published") or {}

    def pct(key: str) -> str:
        value = published.get(key)
        return "-" if value is None else f"{100 * value:.2f}"

    return {
        "file": name,
        "teacher": model_name("teacher", choices.get("teacher"), cfg.teacher.arch)
        if trains_teacher or has_teacher
        else "-",
        "student": "-" if trains_teacher else model_name("student", choices.get("student"), cfg.student.arch),
        "method": "teacher" if trains_teacher else label(cfg),
        "lr": str(model.optimizer.lr),
        "epochs": str(cfg.teacher.max_epochs if trains_teacher else cfg.trainer.max_epochs),
        "batch": str(cfg.teacher.batch_size if trains_teacher else cfg.data.batch_size),
        "weights": "-" if trains_teacher else " ".join(terms),
        "notes": "-" if trains_teacher else notes(cfg),
        "published teacher": pct("teacher_acc"),
        "published student": pct("student_acc"),
        "published method": pct("method_acc"),
        "source": published.get("source") or "-",
    }


def rows(dataset: str) -> list[dict[str, str]]:
    """Every recipe of ``dataset``: teachers, then students alone, then the distillation rows
    grouped by teacher -> student pair. The notes column only where a row has a note."""
    out = [row(name, *composed(dataset, name)) for name in recipe_names(dataset)]
    if all(r["notes"] == "-" for r in out):
        for r in out:
            del r["notes"]
    kind = {"teacher": 0, "none": 1}
    return sorted(out, key=lambda r: (kind.get(r["method"], 2), r["teacher"], r["student"], r["file"]))


def markdown(body: list[dict[str, str]]) -> str:
    lines = [list(body[0]), ["---"] * len(body[0])] + [list(r.values()) for r in body]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def pivot(
    body: list[dict[str, str]], methods: tuple[str, ...] | None = None, order: list[tuple[str, str]] | None = None
) -> str:
    """The published accuracies of the distillation rows: one row per teacher -> student pair, one
    column per method, and the pair's published teacher and student (the value most of its rows
    give: a source's own baseline, as SimKD's, shows in its files). "n/t": a recipe whose number is
    not transcribed; blank: no recipe (the sources have no number there). ``methods``: the columns
    (default: every method of ``body``, METHODS' first); ``order``: the pairs' (default: the CRD
    README's, then the others sorted)."""
    distill = [r for r in body if r["method"] not in ("teacher", "none")]
    if methods is None:
        methods = tuple(m for m in METHODS if any(r["method"] == m for r in distill))
        methods += tuple(sorted({r["method"] for r in distill} - set(methods)))
    else:
        methods = tuple(m for m in methods if any(r["method"] == m for r in distill))
        distill = [r for r in distill if r["method"] in methods]
    cells: dict[tuple[str, str], dict[str, str]] = {}
    given: dict[tuple[str, str, str], Counter] = {}
    for r in distill:
        pair = cells.setdefault((r["teacher"], r["student"]), {})
        pair[r["method"]] = "n/t" if r["published method"] == "-" else r["published method"]
        for role in ("teacher", "student"):
            if r[f"published {role}"] != "-":
                given.setdefault((r["teacher"], r["student"], role), Counter())[r[f"published {role}"]] += 1
    for (t, s, role), counts in given.items():
        cells[t, s][role] = counts.most_common(1)[0][0]
    if order is None:
        order = [
            (model_name("teacher", t, arch_of(t, "teacher")), model_name("student", s, arch_of(s, "student")))
            for t, s in pairs()
        ]
    rank = {pair: i for i, pair in enumerate(order)}
    keys = sorted(cells, key=lambda k: (rank.get(k, len(rank)), k))
    head = ["teacher -> student", "teacher", "student", *methods]
    lines = [head, ["---"] * len(head)]
    lines += [
        [
            f"{t} -> {s}",
            cells[t, s].get("teacher", "-"),
            cells[t, s].get("student", "-"),
            *(cells[t, s].get(m, "") for m in methods),
        ]
        for t, s in keys
    ]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def new_pairs() -> list[tuple[str, str]]:
    """The pairs of the 2022-2024 tables as the tables name them: the LS-KD README's, then DOT's and SimKD's."""
    out = [
        (model_name("teacher", t, arch_of(t, "teacher")), model_name("student", s, arch_of(s, "student")))
        for t, s in dict.fromkeys((c.teacher, c.student) for c in new_cells().values())
    ]
    return list(dict.fromkeys(out))


def sources(body: list[dict[str, str]], dataset: str) -> str:
    """Where the published numbers come from (one line per source, with the rows citing it) and
    what they are (its protocol, numbered below the table)."""
    groups: dict[str, tuple[str, set[str]]] = {}
    for r in body:
        published = resolved(dataset, r["file"]).get("published") or {}
        source, proto = published.get("source") or "-", published.get("protocol") or "-"
        groups.setdefault(source, (proto, set()))[1].add(r["method"])
    protocols = list(dict.fromkeys(proto for proto, _ in groups.values()))
    lines = [["source", "rows", "protocol"], ["---"] * 3]
    lines += [[s, ", ".join(sorted(ms)), f"P{protocols.index(p) + 1}"] for s, (p, ms) in sorted(groups.items())]
    table = "\n".join("| " + " | ".join(line) + " |" for line in lines)
    return table + "\n\n" + "\n".join(f"- P{i}: {p}" for i, p in enumerate(protocols, 1))


def arch_of(preset: str, group: str) -> str:
    """The arch a teacher or student preset names (vgg13 -> vgg13_cifar)."""
    return resolved_preset(group, preset)


@cache
def resolved_preset(group: str, preset: str) -> str:
    return compose([f"{group}={preset}"])[0][group].arch


#: The caption of the second table of published numbers (the 2022-2024 methods).
NEW_CAPTION = (
    "The 2022-2024 methods: published top-1 accuracy (%) by pair (+LS: logit standardization; +DOT: trained "
    "with the DOT optimizer; f: SimKD's projector factor; the MLKD rows train on a strong view too; teacher and "
    "student: the presets' published accuracies, the SimKD README's own student baselines are in its files):"
)


def table(dataset: str) -> str:
    """The README's tables of ``dataset``'s recipes: published numbers by pair and method, where
    they come from, and every file's recipe."""
    body = rows(dataset)
    every = [
        "Every recipe (lr, epochs and batch are the teacher's for `teacher_` rows, the student's otherwise):",
        markdown(body),
    ]
    if all(r["source"] == "-" for r in body):  # no published numbers: the recipes alone
        return "\n\n".join(every)
    new = [r for r in body if r["method"] in NEW_LABELS]
    old = [r for r in body if r["method"] not in NEW_LABELS]
    parts = [
        "Published top-1 accuracy (%) by pair and method (n/t: not transcribed; blank: no number in the sources):",
        pivot(old),
    ]
    if new:
        parts += [NEW_CAPTION, pivot(new, NEW_LABELS, new_pairs())]
    return "\n\n".join([*parts, "Sources and protocols of the published numbers:", sources(body, dataset), *every])


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
    """Regenerate the recipe files (where this module generates them), then the README's tables."""
    if dataset in GENERATORS:
        write_files(dataset)
    head, current, tail = split_readme(dataset)
    new = table(dataset)
    (ROOT / "experiments" / dataset / "README.md").write_text(head + new + tail)
    print(f"experiments/{dataset}/README.md: table {'unchanged' if new == current else 'rewritten'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", help="a folder of experiments/, e.g. cifar100")
    parser.add_argument(
        "--write", action="store_true", help="regenerate that folder's recipe files and its README.md's tables"
    )
    args = parser.parse_args(argv)
    if args.write:
        write(args.dataset)
    else:
        print(table(args.dataset))


if __name__ == "__main__":
    main()
