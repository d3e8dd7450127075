"""kdlab-sweep: an Optuna study over composed training configs.

    kdlab-sweep sweeps=kd_temperature_alpha                    # the file sweeps/kd_temperature_alpha.yaml
    kdlab-sweep sweeps=kd_temperature_alpha sweep.n_trials=8   # any sweep.* or training override
    kdlab-sweep sweeps=kd_temperature_alpha --n-jobs 2         # two worker processes, one study
    kdlab-sweep sweeps=... sweep.storage=postgresql://user@host/db sweep.worker=3   # one worker of many machines

The study is created (or loaded: re-running resumes it) before any worker starts. Each
trial composes ``train.yaml`` + the command's overrides + its sampled values, runs the
ordinary ``kdlab-train`` job in ``<sweep_dir>/<study>/trial_<n>/``, reports the monitored
metric every epoch (pruners stop bad trials) and returns its best value. At the end the
best trial is printed as a ready-to-run ``kdlab-train`` command and written to the study's
folder (``best.json``, ``best_command.txt``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState
from optuna_integration import PyTorchLightningPruningCallback
from rich.console import Console
from rich.table import Table

from kdlab import CONFIG_DIR
from kdlab.config import compose, upgrade_overrides, validate
from kdlab.context import quiet_third_party
from kdlab.errors import KdlabError, one_line_errors
from kdlab.sweep.ranks import Ranks, follow, join
from kdlab.sweep.space import Param, check_metric, check_values, parse_space
from kdlab.train import run as train_run

log = logging.getLogger("kdlab.sweep")
USAGE = "usage: kdlab-sweep sweeps=<name> [--n-jobs N] [overrides ...]"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def finished(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Trials that are done: complete, pruned, or failed and not retried (a worker killed mid-trial
    leaves a FAIL whose retry runs later: it counts once, when the retry ends)."""
    retried = {optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in trials} - {None}
    return sum(t.state in FINISHED and not (t.state == TrialState.FAIL and t.number in retried) for t in trials)


class StopWhenFinished:
    """Stops the study once ``target`` trials are done (``finished``), counted across every worker."""

    def __init__(self, target: int):
        self.target = target

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if finished(study.get_trials(deepcopy=False)) >= self.target:
            study.stop()


class MetricHistory(pl.Callback):
    """Every epoch's value of the monitored metric, so a trial returns its best one."""

    def __init__(self, monitor: str):
        self.monitor, self.values = monitor, []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and not trainer.sanity_checking:
            self.values.append(float(value))


def storage_url(cfg: DictConfig) -> str:
    if cfg.sweep.storage:
        return str(cfg.sweep.storage)
    root = Path(cfg.paths.sweep_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'optuna.db'}"


def make_storage(url: str, retries: int, heartbeat_interval: int = 30, grace_period: int = 120):
    """RDB storage with heartbeats: a killed worker's trial turns FAIL ``grace_period`` seconds after
    its last heartbeat instead of staying RUNNING forever, and is queued again (up to ``retries``
    times) with its parameters and the values it had reported; the retry resumes the killed trial's
    run directory (``trial_dir``)."""
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=retries, inherit_intermediate_values=True)
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=kwargs,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=retry if retries else None,
        )
    except Exception as e:
        raise KdlabError(f"cannot open sweep storage {url} ({type(e).__name__}: {str(e).splitlines()[0]})") from e


def make_study(cfg: DictConfig, storage, worker: int | None) -> optuna.Study:
    """Create the study once or load it; this worker's sampler gets its own seed."""
    s = cfg.sweep
    sampler_cfg = OmegaConf.to_container(s.sampler, resolve=True)
    if worker is None:  # not told: still differ from other workers started at the same moment
        worker = os.getpid() % 10_000
    if sampler_cfg.get("seed") is not None:
        sampler_cfg["seed"] = int(sampler_cfg["seed"]) + worker
    sampler = instantiate(sampler_cfg)
    pruner = instantiate(s.pruner) if s.pruner else optuna.pruners.NopPruner()
    try:
        optuna.create_study(storage=storage, study_name=s.study_name, direction=s.direction, load_if_exists=True)
    except optuna.exceptions.DuplicatedStudyError:
        pass  # another worker created it between our check and our insert
    study = optuna.load_study(study_name=s.study_name, storage=storage, sampler=sampler, pruner=pruner)
    if study.direction.name.lower() != s.direction:
        raise KdlabError(
            f"study {s.study_name} exists with direction {study.direction.name.lower()}, not {s.direction}"
        )
    return study


def trial_dir(study_dir: Path, trial: optuna.Trial) -> tuple[Path, int | None]:
    """``trial_<n>/`` of the trial, and the number of the trial it retries (None for a new one): a
    retry runs in the killed trial's directory, where ``resume=auto`` continues its last.ckpt."""
    frozen = trial.study._storage.get_trial(trial._trial_id)
    retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    return study_dir / f"trial_{trial.number if retried is None else retried:03d}", retried


def objective(
    cfg: DictConfig,
    space: list[Param],
    base_overrides: list[str],
    study_dir: Path,
    worker: int | None,
    ranks: Ranks | None = None,
):
    s = cfg.sweep
    uses_wandb = "wandb" in (cfg.logger or {})

    def run_trial(trial: optuna.Trial) -> float:
        values = {p.key: p.suggest(trial) for p in space}
        trial_overrides = [p.override(values[p.key]) for p in space]
        extra = [f"logger.wandb.group={s.study_name}"] if uses_wandb else []
        trial_cfg, choices = compose([*base_overrides, *trial_overrides, *extra])
        out_dir, retried = trial_dir(study_dir, trial)
        # a retry inherits the values its killed trial reported; its resumed run reports the epochs after
        inherited = list(trial.study._storage.get_trial(trial._trial_id).intermediate_values.values())
        if retried is not None:
            print(f"trial {trial.number}: retries trial {retried}, resuming {out_dir}", file=sys.stderr)
        trial.set_user_attr("run_dir", str(out_dir))
        trial.set_user_attr("overrides", trial_overrides)
        trial.set_user_attr("worker", worker)
        history = MetricHistory(s.metric)
        pruning = PyTorchLightningPruningCallback(trial, monitor=s.metric)
        if ranks is not None:  # DDP trials: the other ranks train this trial with rank 0
            overrides = [*base_overrides, *trial_overrides, *extra]
            ranks.send({"number": trial.number, "overrides": overrides, "run_dir": str(out_dir)})
        try:
            results = train_run(
                trial_cfg,
                out_dir,
                [*base_overrides, *trial_overrides],
                callbacks=[pruning, history],
                tags=[f"study:{s.study_name}", f"trial:{trial.number}"],
                summary=False,
                experiment=choices.get("experiments"),
                pruned=(optuna.TrialPruned,),
            )
            with warnings.catch_warnings():  # under DDP the pruning decision is read back here; values re-reported
                warnings.simplefilter("ignore")
                pruning.check_pruned()
        except optuna.TrialPruned:
            print(
                f"trial {trial.number}: pruned after {len(history.values)} epoch(s): {' '.join(trial_overrides)}",
                file=sys.stderr,
            )
            raise
        reported = history.values + inherited
        if not reported:
            raise KdlabError(f"sweep.metric={s.metric} was never logged; monitor a logged metric such as val/acc")
        value = max(reported) if s.direction == "maximize" else min(reported)
        test_acc = results["student"]["test_acc"] if results.get("student") else None
        trial.set_user_attr("test_acc", test_acc)
        print(
            f"trial {trial.number}: {s.metric} {value:.4f}, test acc {test_acc}: {' '.join(trial_overrides)}",
            file=sys.stderr,
        )
        return value

    return run_trial


def best_command(cfg: DictConfig, base_overrides: list[str], study: optuna.Study) -> str:
    keep = [o for o in base_overrides if not o.lstrip("+~").startswith(("sweep.", "hydra."))]
    return " ".join(["kdlab-train", *keep, *study.best_trial.user_attrs.get("overrides", [])])


def summarize(cfg: DictConfig, study: optuna.Study, base_overrides: list[str], study_dir: Path, wall_s: float) -> None:
    s = cfg.sweep
    counts = {state.name.lower(): sum(t.state == state for t in study.trials) for state in FINISHED}
    console = Console(soft_wrap=True)
    table = Table(title=f"study {s.study_name}: {len(study.trials)} trials, {counts}", title_justify="left")
    for col in (
        "trial",
        "state",
        s.metric,
        *[".".join(str(k).split(".")[-2:]) for k in s.params],
        "test acc",
    ):
        table.add_column(col)
    for t in sorted(study.trials, key=lambda t: -(t.value or -1e9) if s.direction == "maximize" else (t.value or 1e9))[
        :10
    ]:
        table.add_row(
            str(t.number),
            t.state.name.lower(),
            "-" if t.value is None else f"{t.value:.4f}",
            *[
                f"{t.params.get(k, '-'):.4g}" if isinstance(t.params.get(k), float) else str(t.params.get(k, "-"))
                for k in s.params
            ],
            "-" if t.user_attrs.get("test_acc") is None else f"{t.user_attrs['test_acc']:.4f}",
        )
    console.print(table)
    completed = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not completed:
        console.print(f"no trial completed ({counts}); see the trials' logs under {study_dir}")
        return
    best = study.best_trial
    command = best_command(cfg, base_overrides, study)
    record = {
        "study": s.study_name,
        "metric": s.metric,
        "direction": s.direction,
        "best_value": best.value,
        "best_trial": best.number,
        "best_params": best.params,
        "command": command,
        "run_dir": best.user_attrs.get("run_dir"),
        "trials": counts,
        "wall_s": round(wall_s, 1),
    }
    (study_dir / "best.json").write_text(json.dumps(record, indent=2) + "\n")
    (study_dir / "best_command.txt").write_text(command + "\n")
    console.print(f"best trial {best.number}: {s.metric} {best.value:.4f} with {best.params}")
    console.print(f"run it: {command}")
    console.print(f"written: {study_dir / 'best.json'}; dashboard: make dashboard")


def parse_argv(argv: list[str]) -> tuple[dict, list[str]]:
    flags, overrides, it = {"n_jobs": None, "worker": None, "target": None}, [], iter(argv)
    for arg in it:
        name = arg.split("=", 1)[0]
        if arg in ("-h", "--help"):
            print(__doc__)
            sys.exit(0)
        if name in ("--n-jobs", "--worker", "--target"):
            value = arg.split("=", 1)[1] if "=" in arg else next(it, None)
            if value is None or not value.isdigit():
                raise KdlabError(f"{name} takes a number; {USAGE}")
            flags[name[2:].replace("-", "_")] = int(value)
        else:
            overrides.append(arg)
    return flags, overrides


def load_sweep(overrides: list[str]) -> tuple[DictConfig, list[Param]]:
    """The composed, checked config of a sweep command (``sweep.study_name`` filled in, the study's
    folder as ``paths.output_dir``) and its search space."""
    cfg, choices = compose(overrides)
    if "sweep" not in cfg:
        sweeps = sorted(p.stem for p in (CONFIG_DIR / "sweeps").glob("*.yaml"))
        raise KdlabError(f"no sweep given; {USAGE}; sweeps: {', '.join(sweeps)}")
    if cfg.sweep.study_name is None:  # named after its file: sweeps=kd_temperature_alpha -> kd_temperature_alpha
        cfg.sweep.study_name = choices["sweeps"].replace("/", "_")
    cfg.paths.output_dir = str(Path(cfg.paths.sweep_dir) / cfg.sweep.study_name)
    validate(cfg)  # the training values and the study settings, before any trial
    space = parse_space(cfg.sweep.params, cfg)
    check_metric(cfg)  # a metric no trial logs, or a value no trial can run, stops the sweep here
    check_values(space, overrides)
    return cfg, space


def sweep(argv: list[str]) -> optuna.Study | None:
    """Run the sweep command ``argv``; the study (None on the ranks > 0 of a DDP sweep, which follow rank 0)."""
    flags, overrides = parse_argv(argv)
    overrides = upgrade_overrides(overrides)
    quiet_third_party()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats
    cfg, space = load_sweep(overrides)
    s = cfg.sweep
    n_jobs = flags["n_jobs"] or int(s.n_jobs)
    ranks = join(cfg)  # DDP trials under torchrun / srun: rank 0 runs the study, the others follow it
    if ranks is not None and n_jobs > 1:  # on every rank alike
        raise KdlabError("--n-jobs > 1 with DDP trials: start one torchrun / srun job per worker instead")
    if ranks is not None and ranks.rank > 0:
        follow(ranks, s.metric)
        return None
    study_dir = Path(cfg.paths.output_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url(cfg)
    storage = make_storage(url, int(s.retries), int(s.get("heartbeat_interval", 30)), int(s.get("grace_period", 120)))
    spawning = n_jobs > 1 and flags["worker"] is None  # this process is the first of n_jobs workers
    worker = flags["worker"] if flags["worker"] is not None else s.get("worker")
    if spawning and worker is not None:
        worker = int(worker) * n_jobs  # machine k's workers: k*n_jobs ... k*n_jobs + n_jobs - 1
    study = make_study(cfg, storage, worker)
    start, children, target = time.perf_counter(), [], flags["target"]
    if spawning:  # the n_jobs workers share this command's n_trials through the study's count
        target = finished(study.trials) + int(s.n_trials)
        first = worker or 0
        children = [
            subprocess.Popen(
                [sys.executable, "-m", "kdlab.sweep", *overrides, f"--worker={first + i}", f"--target={target}"]
            )
            for i in range(1, n_jobs)
        ]
    print(
        f"study {s.study_name} ({len(study.trials)} trials so far) in {url}; {n_jobs} worker(s)",
        file=sys.stderr,
    )
    callbacks = [StopWhenFinished(target)] if target is not None else []
    try:
        study.optimize(
            objective(cfg, space, overrides, study_dir, worker, ranks),
            n_trials=None if target is not None else int(s.n_trials),
            timeout=s.timeout,
            catch=(Exception,),
            callbacks=callbacks,
            gc_after_trial=True,
        )
    finally:
        if ranks is not None:
            ranks.send(None)  # the other ranks stop following
    failed = [child.wait() for child in children]
    if any(failed):
        log.warning(f"{sum(1 for rc in failed if rc)} worker process(es) exited with an error")
    if flags["worker"] is None:
        summarize(
            cfg,
            optuna.load_study(study_name=s.study_name, storage=storage),
            overrides,
            study_dir,
            time.perf_counter() - start,
        )
    return study


def cli() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    with one_line_errors("kdlab-sweep"):
        sweep(sys.argv[1:])


if __name__ == "__main__":
    cli()
