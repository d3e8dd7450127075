"""The composed config, checked before anything trains.

Every value has one type, declared once where the code that takes it is written: the
arguments of a ``_target_`` class (``Bound``-annotated numbers such as ``PositiveFloat`` for a
temperature, ``Literal`` for a choice) and, for the keys that are no class's arguments, the
``KEYS`` table below. ``validate(cfg)`` checks the whole composed config against them and
raises a one-line ``KdlabError`` naming the key, e.g.
``method.terms.kd.temperature=0.0 is not a number > 0``.

Also here: the overrides that were renamed (``distill=`` is now ``method=``) and the Hydra
composition every command shares.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import math
import re
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException, InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from kdlab import CONFIG_DIR
from kdlab.errors import KdlabError, did_you_mean


@dataclass(frozen=True)
class Bound:
    """The range of a number: ``Annotated[float, Bound(0, low_open=True)]`` is a number > 0."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, v: float) -> bool:
        above = self.low is None or (v > self.low if self.low_open else v >= self.low)
        below = self.high is None or (v < self.high if self.high_open else v <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


PositiveFloat = Annotated[float, Bound(0, low_open=True)]
NonNegativeFloat = Annotated[float, Bound(0)]
PositiveInt = Annotated[int, Bound(1)]
NonNegativeInt = Annotated[int, Bound(0)]
Fraction = Annotated[float, Bound(0, 1, high_open=True)]  # [0, 1): a share held out
OpenUnit = Annotated[float, Bound(0, 1, low_open=True, high_open=True)]  # (0, 1): a probability strictly between
Seed = Annotated[int, Bound(0, 2**32 - 1)]  # what torch, numpy and Lightning accept

#: Keys of a teacher or student preset.
PRESET: dict[str, Any] = {
    "arch": str,
    "kwargs": Mapping,
    "max_epochs": NonNegativeInt,
    "pretrained": bool,
    "pretrained_path": str | None,
    "optimizer": Mapping,
    "optimizer.lr": PositiveFloat,  # torch accepts 0, which trains nothing
    "optimizer.weight_decay": NonNegativeFloat,
    "optimizer.momentum": NonNegativeFloat,
    "scheduler": Mapping | None,
    "published_acc": Annotated[float, Bound(0, 1)] | None,  # the accuracy a paper reports for it (a fraction)
}
#: Keys of a sweep's study settings (conf/sweep/study.yaml; kdlab.sweep.space checks ``params``).
SWEEP: dict[str, Any] = {
    "study_name": str | None,
    "storage": str | None,
    "direction": Literal["maximize", "minimize"],
    "metric": str,
    "n_trials": NonNegativeInt,  # 0: create (or check) the study, run nothing
    "n_jobs": PositiveInt,
    "timeout": PositiveFloat | None,
    "worker": NonNegativeInt | None,
    "retries": NonNegativeInt,
    "heartbeat_interval": PositiveInt,  # seconds between a running trial's heartbeats
    "grace_period": PositiveInt,  # seconds without one before the trial counts as dead
    "sampler": Mapping,
    "pruner": Mapping | None,
    "params": Mapping,
}
#: Keys no class takes as arguments (top level, the model presets, Lightning's Trainer): their types.
KEYS: dict[str, Any] = {
    "task": Literal["distill", "teacher"],
    "seed": Seed,
    "resume": str,  # auto, never, or a checkpoint / run directory (kdlab.resume)
    "export_onnx": bool,
    "measure_speed": bool,
    "torch_threads": PositiveInt,
    "compile": Mapping,
    "compile.student": bool,
    "compile.teacher": bool,
    "compile.mode": Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None,
    "teacher_cache": Mapping,
    "teacher_cache.mode": Literal["auto", "off"],  # kdlab.teacher_outputs
    "teacher_cache.dtype": Literal["fp16", "fp32"],
    **{f"paths.{key}": str for key in ("data_dir", "cache_dir", "sweep_dir", "output_dir")},
    "method.name": str,
    "method.terms": Mapping,
    **{f"{role}.{key}": hint for role in ("teacher", "student") for key, hint in PRESET.items()},
    "trainer.max_epochs": NonNegativeInt,  # after the presets: it defaults to ${student.max_epochs}, named first
    "teacher.checkpoint": str | None,
    "teacher.seed": Seed,
    "teacher.batch_size": PositiveInt,
    **{f"sweep.{key}": hint for key, hint in SWEEP.items()},
}
#: Overrides renamed since earlier versions: the old key still works, with a note.
RENAMED = {"distill": "method"}


def describe(hint) -> str:
    """What a value of type ``hint`` is, in words ('a number > 0', 'one of mutual, ensemble')."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        base, *bounds = args
        return " ".join([describe(base), *(str(b) for b in bounds if isinstance(b, Bound))])
    if origin in (Union, types.UnionType):
        literals = [v for a in args if get_origin(a) is Literal for v in get_args(a)]
        rest = [a for a in args if get_origin(a) is not Literal]
        words = ["one of " + ", ".join(dict.fromkeys(str(v) for v in literals))] if literals else []
        return " or ".join(words + ["null" if a is type(None) else describe(a) for a in rest])
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        plural = {str: "strings", int: "integers", float: "numbers", dict: "mappings", Mapping: "mappings"}
        return f"a list of {plural[args[0]]}" if args and args[0] in plural else "a list"
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if hint in words:
        return words[hint]
    return "a mapping" if hint in (dict, Mapping) or origin in (dict, Mapping) else getattr(hint, "__name__", str(hint))


def conforms(value, hint) -> bool:
    """Whether a plain config value (after resolution) is a value of type ``hint``. Types a config
    cannot hold (modules, callables) are not checked."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if origin is Annotated:
        base, *bounds = args
        return conforms(value, base) and all(b.holds(value) for b in bounds if isinstance(b, Bound))
    if origin in (Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        items = [a for a in args if a is not Ellipsis]
        return isinstance(value, list | tuple) and all(conforms(v, items[0]) for v in value if items)
    if hint in (dict, Mapping) or origin in (dict, Mapping):
        return isinstance(value, dict)
    return True


def check(key: str, value, hint) -> None:
    if not conforms(value, hint):
        shown = "null" if value is None else value
        raise KdlabError(f"{key}={shown} is not {describe(hint)}")


@functools.cache
def arguments(target: Callable) -> tuple[dict[str, Any], bool]:
    """({argument: type}, whether it takes **kwargs) of a class's constructor or a function."""
    fn = target.__init__ if inspect.isclass(target) else target
    params = inspect.signature(fn).parameters
    try:
        hints = get_type_hints(fn, include_extras=True)
    except Exception:  # annotations that do not evaluate here: check names only
        hints = {}
    named = {
        n: hints.get(n, Any)
        for n, p in params.items()
        if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    return named, any(p.kind is p.VAR_KEYWORD for p in params.values())


#: Arguments some classes share, and which classes take them (a term's modifier such as
#: ``standardize``): named when one is given to a class that does not take it. Filled by the
#: modules that define them.
ARGUMENT_HINTS: dict[str, str] = {}


def check_arguments(target: Callable, values: Mapping, where: str) -> None:
    """Every value of a ``_target_`` node (or of a call) against its argument's declared type."""
    named, open_ = arguments(target)
    for key, value in values.items():
        if key.startswith("_") and key.endswith("_"):  # Hydra's own: _target_, _partial_, _convert_
            continue
        if key not in named:
            if open_:
                continue
            hint = ARGUMENT_HINTS.get(key)
            raise KdlabError(
                f"{where}.{key}: {target.__qualname__} takes no argument '{key}'"
                + (f"; {key} is an option of {hint}" if hint else did_you_mean(key, named))
            )
        check(f"{where}.{key}", value, named[key])


def checked(init: Callable) -> Callable:
    """Wrap a constructor so that its arguments are checked against its annotations when it is called
    from Python, as ``validate`` checks them in a config (``Term`` subclasses get it automatically)."""

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        bound = inspect.signature(init).bind(self, *args, **kwargs)
        values = {k: v for k, v in bound.arguments.items() if k != "self"}
        named, _ = arguments(init)
        for key, value in values.items():
            if key in named and isinstance(value, int | float | str | bool | type(None)):
                check(f"{type(self).__name__}.{key}", value, named[key])
        init(self, *args, **kwargs)

    return wrapper


def validate(cfg: DictConfig) -> None:
    """Check a composed kdlab-train config (interpolations resolved) before anything is built."""
    try:
        tree = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        key = e.full_key or str(e).splitlines()[0]
        raise KdlabError(f"{key} is missing; set {key}=... on the command line") from e
    except OmegaConfBaseException as e:
        raise KdlabError(f"config: {str(e).splitlines()[0]}") from e
    for key, hint in KEYS.items():
        node, parts = tree, key.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and parts[-1] in node:
            check(key, node[parts[-1]], hint)
    check_model_kwargs(tree)
    for where, node in targets(tree, everything=True):
        target = import_target(where, node["_target_"])
        if checks_arguments(where, node):
            check_arguments(target, node, where)
    check_combination(tree)


def check_combination(tree: Mapping) -> None:
    """What the terms, the optimizer, the strategy and the data must agree on, checked before
    anything is built: a strong view for the terms that read one (MLKD), and the offline
    strategy for what only it runs (strong views, distillation tokens, deployable models, DOT)."""
    from kdlab.methods.base import Term  # the terms import this module
    from kdlab.optim import require_task_and_distillation, steps_apart

    terms = (tree.get("method") or {}).get("terms") or {}
    classes = {n: locate(str(t["_target_"])) for n, t in terms.items() if isinstance(t, Mapping) and "_target_" in t}
    offline_only = []
    for name, cls in classes.items():
        if getattr(cls, "reads_strong_view", False) and not (tree.get("data") or {}).get("strong_view"):
            raise KdlabError(
                f"method.terms.{name} ({cls.__name__}) trains on a strong view of each input as well; "
                "set data.strong_view=true (data=cifar100, cifar10 or mnist1d have one)"
            )
        own_model = getattr(cls, "deployable", Term.deployable) is not Term.deployable  # SimKD
        if getattr(cls, "reads_strong_view", False) or getattr(cls, "distillation_token", False) or own_model:
            offline_only.append(f"method.terms.{name} ({cls.__name__})")
    optimizer = ((tree.get("student") or {}).get("optimizer") or {}).get("_target_")
    if optimizer and steps_apart(locate(str(optimizer))):
        offline_only.append(f"student.optimizer ({optimizer})")
        task_loss = {n: bool(getattr(c, "task_loss", False)) for n, c in classes.items()}
        require_task_and_distillation(task_loss, f"student.optimizer={optimizer}")
    strategy = (tree.get("strategy") or {}).get("_target_")
    if offline_only and strategy and not getattr(locate(str(strategy)), "offline_module", False):
        raise KdlabError(
            f"{', '.join(offline_only)}: only strategy=offline trains this, not {strategy.rpartition('.')[2]}"
        )


#: Where a ``_target_`` node is kdlab's to check whatever class it names (a user's own strategy or term).
OWNED = ("data", "strategy", "method.terms.")
#: Nodes of other libraries' classes whose arguments are checked too: unknown names always, values
#: where the class annotates them (Lightning's Trainer, torch's optimizers, Optuna's pruners).
THIRD_PARTY = (
    "trainer",
    "teacher.optimizer",
    "teacher.scheduler",
    "student.optimizer",
    "student.scheduler",
    "sweep.sampler",
    "sweep.pruner",
)
#: Model arguments kdlab sets from the data: a preset's ``kwargs`` must not give them.
FROM_DATA = {
    "num_classes": "the class count comes from the data",
    "in_chans": "the input channels come from the data",
    "input_size": "the input size comes from the data",
}


def checks_arguments(where: str, node: Mapping) -> bool:
    """Whether the arguments of the ``_target_`` node at ``where`` are checked (see ``targets``)."""
    owned = where in OWNED or where.startswith(OWNED[-1])
    return owned or where in THIRD_PARTY or str(node["_target_"]).startswith("kdlab.")


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), "")


def locate(path: str):
    """The object at a dotted path (``torch.optim.Adam``): the longest importable module, then its
    attributes. Hydra's ``get_object`` does the same but also logs an error when it fails."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
            break
        except ImportError:
            if i == 1:
                raise
    for part in parts[i:]:
        obj = getattr(obj, part)
    return obj


def import_target(where: str, path: str):
    """The object a ``_target_`` names, or one line with the closest names in its module."""
    try:
        return locate(str(path))
    except Exception as e:
        module, _, name = str(path).rpartition(".")
        closest = ""
        try:
            names = [n for n in dir(importlib.import_module(module)) if not n.startswith("_")] if module else []
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
            closest = f" (closest: {', '.join(f'{module}.{c}' for c in close)})" if close else ""
        except Exception:  # the module itself is not there
            pass
        reason = f"{type(e).__name__}: {_first_line(e)}"
        raise KdlabError(f"{where}._target_={path} cannot be imported ({reason}){closest}; give a module.Name") from e


def check_model_kwargs(tree: Mapping) -> None:
    """A model preset's ``kwargs`` (teacher, student, online peers) must not set what the data sets."""
    presets = [(role, tree.get(role)) for role in ("teacher", "student")]
    peers = (tree.get("strategy") or {}).get("peers") if isinstance(tree.get("strategy"), dict) else None
    if isinstance(peers, list):
        presets += [(f"strategy.peers[{i}]", p) for i, p in enumerate(peers)]
    for where, preset in presets:
        kwargs = preset.get("kwargs") if isinstance(preset, dict) else None
        for key in FROM_DATA.keys() & (kwargs.keys() if isinstance(kwargs, dict) else set()):
            raise KdlabError(f"{where}.kwargs.{key}={kwargs[key]}: {FROM_DATA[key]}; remove it")


def targets(tree, where: str = "", everything: bool = False):
    """(dotted key, node) of every ``_target_`` node below ``tree`` that is kdlab's: a kdlab class, or
    anything in ``OWNED`` (``everything``: every ``_target_`` node)."""
    if isinstance(tree, dict):
        owned = where in OWNED or where.startswith(OWNED[-1])
        if "_target_" in tree and (everything or owned or str(tree["_target_"]).startswith("kdlab.")):
            yield where, tree
        for k, v in tree.items():
            yield from targets(v, f"{where}.{k}" if where else str(k), everything)
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from targets(v, f"{where}[{i}]", everything)


def instantiate(node, **kwargs):
    """``hydra.utils.instantiate``, with a ``KdlabError`` raised by the object built surfacing as itself
    (one line) instead of inside Hydra's ``InstantiationException``; another library's class that
    refuses the values it is given (Lightning's Trainer: ``trainer.precision=13``) is one line too,
    naming the config node and the library's own reason. kdlab's own classes raise ``KdlabError``
    for bad values, so any other error of theirs is a bug and keeps its traceback."""
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, KdlabError):
            raise cause from None
        target = node.get("_target_") if isinstance(node, Mapping | DictConfig) else None
        if cause is None or target is None or str(target).startswith("kdlab."):
            raise
        where = node._get_full_key(None) if isinstance(node, DictConfig) else ""
        name = str(target).rsplit(".", 1)[-1]
        reason = " ".join(str(cause).split())[:400]
        raise KdlabError(
            f"{where or target}: cannot build {name} from this config ({type(cause).__name__}: {reason}); "
            f"change {where or 'its'} values"
        ) from e


def upgrade_overrides(overrides: Sequence[str]) -> list[str]:
    """Command-line overrides with renamed keys updated (``distill=kd`` -> ``method=kd``), saying so once."""
    out, renamed = [], {}
    for arg in overrides:
        prefix = arg[: len(arg) - len(arg.lstrip("+~"))]
        body = arg[len(prefix) :]
        for old, new in RENAMED.items():
            if body == old or body.startswith((f"{old}=", f"{old}.", f"{old}@")):
                body, renamed[old] = new + body[len(old) :], new
        out.append(prefix + body)
    if renamed:
        names = ", ".join(f"`{old}` is now `{new}`" for old, new in renamed.items())
        print(f"kdlab: {names}; running: {' '.join(out)}", file=sys.stderr)
    return out


def one_line(message: str) -> str:
    """A Hydra error in one line: its first line, and the options it lists (``Available options in
    'method':``) after the closest ones; an override that does not parse, with the parser's reason."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if "override_grammar" in message:  # Hydra's OverrideParseException
        head = lines[0] if lines[0].startswith("Error parsing") else "cannot parse the overrides"
        detail = "; ".join(
            line.strip() for line in lines[1 if head == lines[0] else 0 :] if "override_grammar" not in line
        )
        return f"{head} ({detail}); overrides are key=value, e.g. trainer.max_epochs=10 (quote values with spaces)"
    heading = next((i for i, line in enumerate(lines) if line.startswith("Available options")), None)
    if heading is None:
        return lines[0]
    options = []
    for line in lines[heading + 1 :]:
        if not line.startswith("\t"):
            break
        options.append(line.strip())
    missing = re.search(r"Could not find '(?:[^']*/)?([^'/]+)'", lines[0])
    closest = did_you_mean(missing.group(1), options, n=3) if missing else ""
    return f"{lines[0]}{closest}; {lines[heading]} {', '.join(options)}"


def _hydra_compose(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=overrides, return_hydra_config=True)


def unknown_key(overrides: list[str], error: HydraException) -> str | None:
    """``key: no such key (closest: ...)`` for an override of a key the config does not have."""
    found = re.match(r"Could not override '([^']+)'", str(error))
    if not found or not isinstance(error.__cause__, OmegaConfBaseException):
        return None
    key = found.group(1)
    inner = getattr(error.__cause__, "full_key", None)
    if inner and inner != key and inner.startswith(f"{key}."):  # a dict value that brings keys the node lacks
        value = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key), "")
        return (
            f"{inner}: no such key in {key} (the value {key}={value} adds it); set the keys one by one, "
            f"with + before those that are new: +{inner}=..."
        )
    rest = [o for o in overrides if o.split("=", 1)[0] != key]
    parent = key.rpartition(".")[0]
    try:
        node = OmegaConf.select(_hydra_compose(rest), parent) if parent else _hydra_compose(rest)
    except HydraException:
        node = None
    names = [f"{parent}.{k}" if parent else str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
    given = next((o for o in overrides if o.split("=", 1)[0] == key), key)
    return f"{key}: no such key{did_you_mean(key, names, n=3)}; add + to create it (+{given})"


def compose(overrides: Sequence[str] = (), hydra: bool = False) -> tuple[DictConfig, dict[str, str | None]]:
    """The training config of ``conf/train.yaml`` with ``overrides``, and the option Hydra chose for
    each config group (``choices["experiments"]``: the recipe given, or None). ``hydra``: keep
    Hydra's own node (``cfg.hydra.run.dir``, ...)."""
    overrides = upgrade_overrides(overrides)
    try:
        cfg = _hydra_compose(overrides)
    except HydraException as e:
        raise KdlabError(unknown_key(overrides, e) or one_line(str(e))) from e
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    if not hydra:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg, choices


def check_command_line(argv: Sequence[str]) -> None:
    """What Hydra would stop on, or print pages about, before kdlab-train gets its config, refused in
    one line instead: overrides that do not parse, config options and keys that do not exist (with
    the closest names), values that do not validate, and a ``hydra.run.dir`` that is a file. A
    command with Hydra's own flags (``-m``, ``--cfg``, ``--help``, ...) is left to Hydra. Call it
    before ``hydra.main``; nothing is written."""
    if any(arg.startswith("-") for arg in argv):
        return
    cfg, _ = compose(argv, hydra=True)
    try:
        run_dir = Path(str(OmegaConf.select(cfg, "hydra.run.dir")))
    except OmegaConfBaseException:  # a resolver Hydra's job sets up: let Hydra resolve it
        return
    for path in (run_dir, *run_dir.parents):
        if path.exists():
            if not path.is_dir():
                what = "an existing file" if path == run_dir else f"below the file {path}"
                raise KdlabError(
                    f"hydra.run.dir={run_dir} is {what}; give a directory (a new one, or a run's to resume it)"
                )
            break
    with open_dict(cfg):
        del cfg["hydra"]
    cfg.paths.output_dir = str(run_dir)
    validate(cfg)
