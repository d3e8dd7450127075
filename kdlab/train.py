"""kdlab-train: compose -> strategy.fit(run) -> evaluate -> results.json.

    kdlab-train                                  # offline KD on MNIST-1D: 1-D CNN teacher -> MLP student
    kdlab-train method=none                      # the student alone (baseline)
    kdlab-train task=teacher                     # train the teacher and put it in the cache
    kdlab-train experiments=mnist1d/kd_cnn1d_mlp # a recipe from experiments/

The job, top to bottom: check the config -> seed -> data -> the strategy of ``conf/strategy``
(or, for ``task=teacher``, the teacher's own training) builds and fits its models -> the
reported student and teacher are evaluated on the test set -> results.json, the exported
student, the summary. How each strategy trains lives in ``kdlab/strategies/<name>.py``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from kdlab import CONFIG_DIR
from kdlab.config import check_command_line, instantiate, upgrade_overrides, validate
from kdlab.context import RunContext, build_loggers, quiet_third_party, run_directory
from kdlab.errors import one_line_errors
from kdlab.models.export import export_student
from kdlab.report import RESULTS_FILE, divergence_warning, evaluate, finite_or_null, print_summary, write_results
from kdlab.report.results import best_checkpoint_accuracy
from kdlab.resume import plan as plan_resume
from kdlab.resume import unfinished_run
from kdlab.strategies import Fitted, Strategy
from kdlab.teacher import TeacherTraining

log = logging.getLogger("kdlab")


def plan(cfg: DictConfig) -> Strategy:
    """What the run trains: the strategy of ``conf/strategy`` (task=distill) or the teacher (task=teacher)."""
    return TeacherTraining() if cfg.task == "teacher" else instantiate(cfg.strategy)


def run(
    cfg: DictConfig,
    output_dir: str | Path,
    overrides: list[str] | tuple = (),
    callbacks: list | tuple = (),
    tags: list[str] | tuple = (),
    summary: bool = True,
    experiment: str | None = None,
    pruned: tuple[type[BaseException], ...] = (),
    runs_root: Path | None = None,
) -> dict:
    """The whole kdlab-train job; returns the results.json dict. Sweeps and tests call it with a
    composed ``cfg``: ``callbacks`` join the fit, ``tags`` the W&B run's, ``experiment`` is the
    recipe given (``experiments=``), and an exception of a ``pruned`` type ends it as pruned.
    ``runs_root``: where the runs of the default timestamped directories are (``outputs/<task>``):
    with ``resume=auto``, an unfinished run of the same config there is continued in its own directory."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if runs_root is not None and (unfinished := unfinished_run(cfg, Path(runs_root), output_dir)) is not None:
        log.warning(f"continuing the unfinished run of this config in {unfinished} (resume=never starts a new one)")
        output_dir = unfinished
    with run_directory(output_dir):  # a second run started into the same directory refuses
        return _run(cfg, output_dir, overrides, callbacks, tags, summary, experiment, pruned)


def _run(cfg, output_dir: Path, overrides, callbacks, tags, summary, experiment, pruned) -> dict:
    start = time.perf_counter()
    quiet_third_party()
    cfg.paths.output_dir = str(output_dir)
    validate(cfg)
    resume = plan_resume(cfg, output_dir)  # before anything trains: a checkpoint of another config is refused
    torch.set_num_threads(cfg.torch_threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    strategy = plan(cfg)
    labels = strategy.labels(cfg)
    data = instantiate(cfg.data)
    run_tags = [f"task:{cfg.task}", f"data:{data.name}", *(f"{k}:{v}" for k, v in labels.items() if v), *tags]
    loggers = build_loggers(cfg, run_tags, resume.wandb_id)
    status, results = "failed", {}
    try:
        fitted = strategy.fit(RunContext(cfg, data, output_dir, loggers, list(callbacks), resume))
        if fitted.trainer.is_global_zero:  # under DDP, rank 0 evaluates and writes
            header = {"task": cfg.task, "strategy": labels["strategy"], "method": labels["method"]}
            results = report(cfg, fitted, data, {**header, "data": data.name, "seed": cfg.seed})
            results["wall_s"] = round(time.perf_counter() - start, 2)
            results["overrides"] = list(overrides)
            results["wandb"] = wandb_info()
            results["experiment"] = experiment  # for `kdlab-compare --by experiment`
            # the training batches carried a strongly augmented view too (MLKD): `kdlab-compare --by strong_view`
            results["strong_view"] = bool(getattr(data, "strong_view", False))
            results["published"] = OmegaConf.to_container(cfg.published, resolve=True) if cfg.get("published") else None
            results.update(resume.results())  # resumed_from: the epoch continued from (null: a fresh start)
            results.update(strategy.results(data))
            if fitted.student is not None:  # the deployable student, alone
                s = fitted.student
                results["export"] = export_student(
                    s.model,
                    s.arch,
                    s.kwargs,
                    data.num_classes,
                    data.input_shape,
                    output_dir,
                    OmegaConf.to_container(cfg.data, resolve=True),
                    onnx=cfg.export_onnx,
                )
            results = finite_or_null(results)  # no validation set: no best validation accuracy (null)
            warning = divergence_warning(results, data.num_classes)  # finite loss, chance accuracy: said, not silent
            results["warnings"] = [warning] if warning else []
            log_final_metrics(loggers, results)
            write_results(results, output_dir)
        status = "finished"
    except pruned:  # a sweep's pruner stopped it: not a failure
        status = "pruned"
        raise
    finally:
        finish_wandb(status)
    if results and summary:
        print_summary(results, output_dir / RESULTS_FILE)
    return results


def report(cfg: DictConfig, fitted: Fitted, data, header: dict) -> dict:
    """results.json's header and test-set sections for the models ``fitted`` reports."""
    s, t = fitted.student, fitted.teacher
    results = {**header, **evaluate(s and s.model, s and s.arch, t and t.model, t and t.arch, data, cfg.measure_speed)}
    trained = results["student"] or results["teacher"]
    if getattr(data, "validates_on_test", False):  # no validation split: the best epoch is the best test epoch
        trained["val_acc_best"] = trained["test_acc_best_val"] = None
        trained["test_acc_best_epoch"] = round(fitted.val_acc_best, 6)
    else:
        trained["val_acc_best"] = round(fitted.val_acc_best, 6)
        trained["test_acc_best_val"] = best_checkpoint_accuracy(
            fitted.reported.model, fitted.best_checkpoint, fitted.checkpoint_prefix, data
        )
        trained["test_acc_best_epoch"] = None
    return results


def log_final_metrics(loggers: list, results: dict) -> None:
    metrics = {}
    for role in ("teacher", "student"):
        if results[role]:
            metrics[f"test/{role}_acc"] = results[role]["test_acc"]
            metrics[f"params/{role}"] = results[role]["params"]
    trained = results["student"] or results["teacher"]
    metrics["test/acc"] = trained["test_acc"]
    for section in ("fidelity", "calibration", "efficiency"):
        for k, v in (results[section] or {}).items():
            if v is not None:
                metrics[f"{section}/{k}"] = v
    if results["bias"] and results["bias"]["worst_classes"]:
        metrics["bias/worst_gap"] = results["bias"]["worst_classes"][0]["gap"]
    for lg in loggers:
        lg.log_metrics(metrics)
        lg.save()


def wandb_info() -> dict | None:
    wandb = sys.modules.get("wandb")
    if wandb is None or wandb.run is None:
        return None
    return {"mode": wandb.run.settings.mode, "run_dir": str(Path(wandb.run.dir).parent), "id": wandb.run.id}


def finish_wandb(status: str) -> None:
    """Close the W&B run even when the job failed, so the next run (or sweep trial) gets its own.
    ``status``: finished, pruned (tagged, summary ``state``) or failed (exit code 1)."""
    wandb = sys.modules.get("wandb")
    if wandb is None or wandb.run is None:
        return
    wandb.run.summary["state"] = status
    if status == "pruned":
        wandb.run.tags = (*wandb.run.tags, "pruned")
    wandb.finish(exit_code=1 if status == "failed" else 0)


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    output_dir = Path(hc.runtime.output_dir)
    # the default run directory (outputs/<task>/<date>/<time>) is new at every start: the same command
    # started again continues its unfinished run from there (a directory given with hydra.run.dir is its own)
    default_dir = hc.mode.name == "RUN" and not any(o.startswith("hydra.run.dir=") for o in hc.overrides.hydra)
    with one_line_errors("kdlab-train"):
        run(
            cfg,
            output_dir,
            list(hc.overrides.task),
            experiment=hc.runtime.choices.get("experiments"),
            runs_root=output_dir.parent.parent if default_dir else None,
        )


def cli() -> None:
    sys.argv[1:] = upgrade_overrides(sys.argv[1:])
    with one_line_errors("kdlab-train"):
        check_command_line(sys.argv[1:])  # Hydra's own failures in one line, before Hydra writes anything
    main()


if __name__ == "__main__":
    cli()
