"""kdlab-train: compose -> instantiate -> fit -> test -> results.json.

    kdlab-train                                  # offline KD on MNIST-1D: 1-D CNN teacher -> MLP student
    kdlab-train distill=none                     # the student alone (baseline)
    kdlab-train task=teacher                     # train the teacher and put it in the cache
    kdlab-train experiments=mnist1d/kd_cnn1d_mlp # a recipe from experiments/

The job, top to bottom: seed -> data -> teacher (checkpoint, cache, or trained on demand)
-> student -> strategy module -> Lightning fit -> test-set evaluation of both models ->
results.json + summary. Configs: conf/train.yaml and its groups.
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
from hydra.utils import get_class, instantiate
from lightning.pytorch.utilities.seed import isolate_rng
from omegaconf import DictConfig

from kdlab import CONFIG_DIR
from kdlab.errors import KdlabError
from kdlab.models import create_model
from kdlab.report import RESULTS_FILE, evaluate, print_summary, write_results
from kdlab.strategies import OfflineDistillation
from kdlab.teacher import WEIGHTS_FILE, cache_teacher, fit_teacher, get_teacher
from kdlab.trainer import build_loggers, build_trainer, quiet_third_party

log = logging.getLogger("kdlab")
TASKS = ("distill", "teacher")


def distill(cfg: DictConfig, data, output_dir: Path, loggers: list) -> OfflineDistillation:
    """Build the method's terms, the student, the teacher it needs and the strategy module; fit."""
    terms = instantiate(cfg.distill.terms)
    student = create_model(cfg.student.arch, data.num_classes, data.input_shape, **cfg.student.kwargs)
    teacher = None
    if any(t.needs_teacher for t in terms.values()):
        with isolate_rng():  # the same run whether the teacher is trained now or read from the cache
            teacher = get_teacher(cfg, data)
    module = instantiate(cfg.strategy)(
        student=student,
        teacher=teacher,
        terms=terms,
        optimizer=instantiate(cfg.student.optimizer),
        scheduler=instantiate(cfg.student.scheduler) if cfg.student.scheduler else None,
        num_classes=data.num_classes,
        input_shape=data.input_shape,
    )
    trainer = build_trainer(cfg, output_dir, loggers, cfg.trainer.max_epochs, checkpoints=True)
    trainer.fit(module, datamodule=data)
    return module.cpu()


def run(cfg: DictConfig, output_dir: str | Path, overrides: list[str] | tuple = ()) -> dict:
    """The whole kdlab-train job; returns the results.json dict (tests call this with a composed cfg)."""
    start = time.perf_counter()
    quiet_third_party()
    output_dir = Path(output_dir)
    cfg.paths.output_dir = str(output_dir)
    if cfg.task not in TASKS:
        raise KdlabError(f"task={cfg.task} is not one of {', '.join(TASKS)}")
    torch.set_num_threads(cfg.torch_threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = instantiate(cfg.data)
    strategy_cls = get_class(cfg.strategy._target_)
    method = cfg.distill.name if cfg.task == "distill" else None
    tags = [f"task:{cfg.task}", f"data:{data.name}", f"teacher:{cfg.teacher.arch}"]
    if cfg.task == "distill":
        tags += [f"strategy:{strategy_cls.name}", f"method:{method}", f"student:{cfg.student.arch}"]
    loggers = build_loggers(cfg, tags)
    ok, results = False, {}
    try:
        if cfg.task == "teacher":
            if cfg.teacher.get("ensemble"):
                raise KdlabError(
                    "task=teacher trains one teacher; train the members one by one (teacher.seed=...)"
                )
            teacher, module = fit_teacher(cfg, cfg.teacher, output_dir, loggers, checkpoints=True)
            student = None
            if module.trainer.is_global_zero:
                metrics = {"val_acc_best": module.val_acc_best.compute().item(), "run": str(output_dir)}
                cache_teacher(cfg, cfg.teacher, data, teacher, metrics, also_to=output_dir / WEIGHTS_FILE)
        else:
            module = distill(cfg, data, output_dir, loggers)
            student, teacher = module.student, module.teacher
        if module.trainer.is_global_zero:  # under DDP, rank 0 evaluates and writes
            student_arch = cfg.student.arch if student is not None else None
            results = {
                "task": cfg.task,
                "strategy": strategy_cls.name if cfg.task == "distill" else None,
                "method": method,
                "data": data.name,
                "seed": cfg.seed,
                **evaluate(
                    student, student_arch, teacher, getattr(teacher, "kdlab_arch", cfg.teacher.arch), data
                ),
            }
            trained = results["student"] if student is not None else results["teacher"]
            trained["val_acc_best"] = round(module.val_acc_best.compute().item(), 6)
            results["wall_s"] = round(time.perf_counter() - start, 2)
            results["overrides"] = list(overrides)
            results["wandb"] = wandb_info()
            log_final_metrics(loggers, results)
            write_results(results, output_dir)
        ok = True
    finally:
        finish_wandb(ok)
    if results:
        print_summary(results, output_dir / RESULTS_FILE)
    return results


def log_final_metrics(loggers: list, results: dict) -> None:
    metrics = {}
    for role in ("teacher", "student"):
        if results[role]:
            metrics[f"test/{role}_acc"] = results[role]["test_acc"]
    trained = results["student"] or results["teacher"]
    metrics["test/acc"] = trained["test_acc"]
    for section in ("fidelity", "calibration", "efficiency"):
        for k, v in (results[section] or {}).items():
            if v is not None:
                metrics[f"{section}/{k}"] = v
    for lg in loggers:
        lg.log_metrics(metrics)
        lg.save()


def wandb_info() -> dict | None:
    wandb = sys.modules.get("wandb")
    if wandb is None or wandb.run is None:
        return None
    return {"mode": wandb.run.settings.mode, "run_dir": str(Path(wandb.run.dir).parent), "id": wandb.run.id}


def finish_wandb(ok: bool) -> None:
    """Close the W&B run even when the job failed, so the next run (or sweep trial) gets its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=0 if ok else 1)


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    try:
        run(cfg, hc.runtime.output_dir, list(hc.overrides.task))
    except KdlabError as e:
        print(f"kdlab-train: error: {e}", file=sys.stderr)
        sys.exit(1)


def cli() -> None:
    main()


if __name__ == "__main__":
    main()
