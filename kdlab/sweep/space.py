"""The search space of a sweep: ``sweep.params`` in a sweep file, checked against the config.

    params:
      method.terms.kd.temperature: {type: float, low: 1.0, high: 20.0, log: true}
      method.terms.kd.weight: {type: float, low: 0.0, high: 1.0}
      data.batch_size: {type: int, low: 32, high: 256, step: 32}
      method: {type: categorical, choices: [kd, dkd]}     # a config group: picks the file

Keys are dotted config keys of the composed training config, or config group names
(categorical only). Each trial's values become ordinary overrides (``key=value``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from omegaconf import DictConfig, ListConfig, OmegaConf

from kdlab import CONFIG_DIR
from kdlab.errors import KdlabError, did_you_mean

TYPES = ("float", "int", "categorical")


@dataclass(frozen=True)
class Param:
    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_categorical(self.key, list(self.choices))

    def override(self, value: Any) -> str:
        """The Hydra override that sets ``value`` (floats printed in full)."""
        return f"{self.key}={value!r}" if isinstance(value, float) else f"{self.key}={value}"


def config_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Every dotted key of ``cfg``, nodes and leaves (``method``, ``method.terms.kd.weight``, ...)."""
    keys = []
    for k, v in cfg.items_ex(resolve=False) if isinstance(cfg, DictConfig) else []:
        key = f"{prefix}{k}"
        keys.append(key)
        if isinstance(v, DictConfig):
            keys += config_keys(v, key + ".")
    return keys


def config_groups() -> list[str]:
    return sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir())


def parse_space(params: Mapping, cfg: DictConfig) -> list[Param]:
    """Check ``sweep.params`` against the composed config; one clear error per mistake."""
    if not params:
        raise KdlabError("sweep.params is empty; give at least one key to search, e.g. method.terms.kd.temperature")
    keys = [k for k in config_keys(cfg) if not k.startswith(("sweep", "hydra", "paths"))]
    groups = config_groups()
    space = []
    for key, spec in params.items():
        spec = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig | ListConfig) else spec
        where = f"sweep.params.{key}"
        if not isinstance(spec, dict) or spec.get("type") not in TYPES:
            raise KdlabError(f"{where}: give {{type: float|int|categorical, ...}}, got {spec}")
        unknown = set(spec) - {"type", "low", "high", "log", "step", "choices"}
        if unknown:
            raise KdlabError(f"{where}: unknown setting(s) {sorted(unknown)}; use low, high, log, step or choices")
        is_group = key in groups
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__" and not is_group:
            raise KdlabError(f"{where}: no config key '{key}'{did_you_mean(key, keys)}")
        if is_group and spec["type"] != "categorical":
            raise KdlabError(f"{where}: '{key}' is a config group; search it with type: categorical, choices: [...]")
        if spec["type"] == "categorical":
            choices = spec.get("choices")
            if not choices:
                raise KdlabError(f"{where}: categorical needs a non-empty 'choices' list")
            space.append(Param(key, "categorical", choices=tuple(choices)))
            continue
        low, high = spec.get("low"), spec.get("high")
        if not isinstance(low, int | float) or not isinstance(high, int | float) or not low < high:
            raise KdlabError(f"{where}: {spec['type']} needs numbers low < high, got low={low}, high={high}")
        if spec["type"] == "int" and not all(float(v).is_integer() for v in (low, high, spec.get("step") or 1)):
            raise KdlabError(f"{where}: int needs integers low < high, got low={low}, high={high}")
        log = bool(spec.get("log", False))
        if log and low <= 0:
            raise KdlabError(f"{where}: log scale needs low > 0, got {low}")
        if log and spec.get("step") is not None:
            raise KdlabError(f"{where}: step and log cannot be combined")
        space.append(Param(key, spec["type"], float(low), float(high), log, spec.get("step")))
    return space


def check_values(space: list[Param], overrides: list[str]) -> None:
    """Every value a trial can be given, composed and validated before any trial runs: each choice
    of a categorical (a config group option that does not exist, a value of the wrong type) and
    both ends of a range (``low: -1`` for a temperature). A sweep that would fail trial by trial
    stops here, in one line."""
    from kdlab.config import compose, validate  # kdlab.config is imported lazily by the sweep's users

    for p in space:
        where = f"sweep.params.{p.key}"
        if p.type == "categorical":
            values = [("choice", v) for v in p.choices]
        else:
            cast = int if p.type == "int" else float
            values = [("low", cast(p.low)), ("high", cast(p.high))]
        for what, value in values:
            try:
                cfg, _ = compose([*overrides, p.override(value)])
                cfg.paths.output_dir = "/unused"
                validate(cfg)
            except KdlabError as e:
                raise KdlabError(f"{where}: {what} {value} cannot run ({e}); change sweep.params.{p.key}") from None


def logged_metrics(cfg: DictConfig) -> list[str]:
    """The validation metrics a run of ``cfg`` logs, main ones first: ``val/acc``, ``val/acc_best``,
    ``val/loss`` (Born-Again: each generation's, ``gen<g>/val/acc``, the last first), and the epoch
    means of training (``train/loss``, one ``train/loss_<term>`` per term)."""
    from kdlab.config import locate

    prefixes = [""]
    if cfg.get("task", "distill") == "distill":
        from kdlab.strategies.born_again import BornAgain

        try:
            strategy = locate(str(cfg.strategy._target_))
        except Exception:  # validate() names a target that does not import
            strategy = None
        if isinstance(strategy, type) and issubclass(strategy, BornAgain):
            prefixes = [f"gen{g}/" for g in reversed(range(int(cfg.strategy.get("generations", 3))))]
    terms = list((cfg.get("method") or {}).get("terms") or {}) if cfg.get("task", "distill") == "distill" else []
    names = ["val/acc", "val/acc_best", "val/loss", "train/loss", *(f"train/loss_{t}" for t in terms)]
    return [f"{prefix}{name}" for prefix in prefixes for name in names]


def check_metric(cfg: DictConfig) -> None:
    """``sweep.metric`` must be a metric the trials log (``logged_metrics``, or another output's
    ``val/<output>/acc|loss``, or any epoch mean ``train/...``); otherwise every trial would fail,
    one after the other."""
    metric = str(cfg.sweep.metric)
    known = logged_metrics(cfg)
    prefixes = sorted({k[: k.index("val/")] for k in known if "val/" in k})
    for prefix in prefixes:
        rest = metric[len(prefix) :] if metric.startswith(prefix) else None
        if rest is not None and re.fullmatch(r"val/(acc|acc_best|loss|[\w.-]+/(acc|loss))|train/[\w./-]+", rest):
            return
    main = ", ".join(k for k in known if "/val/acc" in f"/{k}" and not k.endswith("_best"))
    raise KdlabError(
        f"sweep.metric={metric} is never logged{did_you_mean(metric, known, n=3)}; runs of this config log {main}"
    )
