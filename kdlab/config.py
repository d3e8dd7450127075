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

import functools
import inspect
import math
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException, InstantiationException
from hydra.utils import get_object
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

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
    "trainer.max_epochs": NonNegativeInt,
    "method.name": str,
    "method.terms": Mapping,
    **{f"{role}.{key}": hint for role in ("teacher", "student") for key, hint in PRESET.items()},
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
        return " or ".join("null" if a is type(None) else describe(a) for a in args)
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


def check_arguments(target: Callable, values: Mapping, where: str) -> None:
    """Every value of a ``_target_`` node (or of a call) against its argument's declared type."""
    named, open_ = arguments(target)
    for key, value in values.items():
        if key.startswith("_") and key.endswith("_"):  # Hydra's own: _target_, _partial_, _convert_
            continue
        if key not in named:
            if open_:
                continue
            raise KdlabError(
                f"{where}.{key}: {target.__qualname__} takes no argument '{key}'{did_you_mean(key, named)}"
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
        tree = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise KdlabError(f"config: {str(e).splitlines()[0]}") from e
    for key, hint in KEYS.items():
        node, parts = tree, key.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and parts[-1] in node:
            check(key, node[parts[-1]], hint)
    for where, node in targets(tree):
        try:
            target = get_object(node["_target_"])
        except Exception as e:
            raise KdlabError(f"{where}._target_={node['_target_']} cannot be imported ({type(e).__name__})") from e
        check_arguments(target, node, where)


#: Where a ``_target_`` node is kdlab's to check whatever class it names (a user's own strategy or term).
OWNED = ("data", "strategy", "method.terms.")


def targets(tree, where: str = ""):
    """(dotted key, node) of every ``_target_`` node below ``tree`` that is kdlab's: a kdlab class, or
    anything in ``OWNED``."""
    if isinstance(tree, dict):
        owned = where in OWNED or where.startswith(OWNED[-1])
        if "_target_" in tree and (owned or str(tree["_target_"]).startswith("kdlab.")):
            yield where, tree
        for k, v in tree.items():
            yield from targets(v, f"{where}.{k}" if where else str(k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from targets(v, f"{where}[{i}]")


def instantiate(node, **kwargs):
    """``hydra.utils.instantiate``, with a ``KdlabError`` raised by the object built surfacing as itself
    (one line) instead of inside Hydra's ``InstantiationException``."""
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, KdlabError):
            raise e.__cause__ from None
        raise


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
    """A Hydra error in one line: its first line, and the options it lists (``Available options in 'method':``)."""
    lines = message.strip().splitlines()
    heading = next((i for i, line in enumerate(lines) if line.startswith("Available options")), None)
    if heading is None:
        return lines[0]
    options = []
    for line in lines[heading + 1 :]:
        if not line.startswith("\t"):
            break
        options.append(line.strip())
    return f"{lines[0]}; {lines[heading]} {', '.join(options)}"


def compose(overrides: Sequence[str] = ()) -> tuple[DictConfig, dict[str, str | None]]:
    """The training config of ``conf/train.yaml`` with ``overrides``, and the option Hydra chose for
    each config group (``choices["experiments"]``: the recipe given, or None)."""
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose("train", overrides=upgrade_overrides(overrides), return_hydra_config=True)
    except HydraException as e:
        raise KdlabError(one_line(str(e))) from e
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices
