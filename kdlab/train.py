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

import copy
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from lightning.pytorch.utilities.seed import isolate_rng
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdlab import CONFIG_DIR
from kdlab.distill import CrossEntropy
from kdlab.errors import KdlabError
from kdlab.models import count_params, create_model
from kdlab.models.ensemble import TeacherEnsemble
from kdlab.models.export import export_student
from kdlab.report import (
    RESULTS_FILE,
    accuracy,
    evaluate,
    finite_or_null,
    predict,
    print_summary,
    write_results,
)
from kdlab.report.results import model_report
from kdlab.strategies import BornAgain, OfflineDistillation, OnlineDistillation, SelfDistillation
from kdlab.teacher import WEIGHTS_FILE, cache_teacher, fit_teacher, get_teacher
from kdlab.trainer import build_loggers, build_trainer, quiet_third_party

log = logging.getLogger("kdlab")
TASKS = ("distill", "teacher")


@dataclass
class Fitted:
    """What a fit hands to evaluation: the models results.json reports, and extras per strategy."""

    student: nn.Module | None
    teacher: nn.Module | None
    val_acc_best: float
    is_global_zero: bool
    extras: Callable[[Any], dict] = field(default=lambda data: {})  # data -> extra results.json keys
    student_arch: str | None = None  # default: cfg.student.arch
    teacher_arch: str | None = None  # default: cfg.teacher.arch (or the ensemble's description)
    student_kwargs: dict | None = None  # default: cfg.student.kwargs
    best_checkpoint: str | None = None  # the Lightning checkpoint with the best validation accuracy
    checkpoint_prefix: str = "student."  # where the reported model sits in that checkpoint's state_dict


def best_val_test_acc(model: nn.Module, fitted: Fitted, data) -> float | None:
    """Test accuracy of the weights with the best validation accuracy: the "best epoch" protocol,
    chosen on validation (the CRD/DKD tables take the best test epoch instead)."""
    if not fitted.best_checkpoint or not Path(fitted.best_checkpoint).is_file():
        return None
    state = torch.load(fitted.best_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    prefix = fitted.checkpoint_prefix
    best = copy.deepcopy(model)
    best.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    logits, target = predict(best, data)
    return round(accuracy(logits, target), 6)


def build_student(spec: DictConfig, data) -> nn.Module:
    return create_model(spec.arch, data.num_classes, data.input_shape, **spec.kwargs)


def factories(spec: DictConfig) -> tuple[Callable, Callable | None]:
    """The (optimizer, scheduler) partials of a model preset."""
    return instantiate(spec.optimizer), (instantiate(spec.scheduler) if spec.scheduler else None)


def fit_offline(
    cfg: DictConfig,
    data,
    output_dir: Path,
    loggers: list,
    callbacks: list,
    teacher: nn.Module | None = None,
    terms: dict | None = None,
    log_prefix: str = "",
    strategy: Callable | None = None,
) -> OfflineDistillation:
    """The student, the teacher its terms need (``cfg.teacher`` unless given), the offline module
    (``cfg.strategy`` unless given); fit."""
    terms = instantiate(cfg.distill.terms) if terms is None else terms
    student = build_student(cfg.student, data)
    if teacher is None and any(t.needs_teacher for t in terms.values()):
        with isolate_rng():  # the same run whether the teacher is trained now or read from the cache
            teacher = get_teacher(cfg, data)
    optimizer, scheduler = factories(cfg.student)
    module = (strategy or instantiate(cfg.strategy))(
        student=student,
        teacher=teacher,
        terms=terms,
        optimizer=optimizer,
        scheduler=scheduler,
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        log_prefix=log_prefix,
    )
    trainer = build_trainer(
        cfg,
        output_dir,
        loggers,
        cfg.trainer.max_epochs,
        checkpoints=True,
        monitor=f"{log_prefix}val/acc",
        callbacks=callbacks,
    )
    trainer.fit(module, datamodule=data)
    return module.cpu()


def offline(cfg: DictConfig, data, output_dir: Path, loggers: list, callbacks: list) -> Fitted:
    module = fit_offline(cfg, data, output_dir, loggers, callbacks)
    return Fitted(
        module.student,
        module.teacher,
        module.val_acc_best.compute().item(),
        module.trainer.is_global_zero,
        best_checkpoint=best_path(module.trainer),
    )


def best_path(trainer: pl.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    return callback.best_model_path or None if callback is not None else None


def online(cfg: DictConfig, data, output_dir: Path, loggers: list, callbacks: list) -> Fitted:
    """Peers from ``strategy.peers`` (a count of ``student`` copies, or per-peer overrides of it)."""
    spec = cfg.strategy.peers
    overrides = [{}] * spec if isinstance(spec, int) else OmegaConf.to_container(spec, resolve=True)
    base = OmegaConf.to_container(cfg.student, resolve=True)
    peer_specs = [OmegaConf.create({**base, **o}) for o in overrides]
    peers = [build_student(p, data) for p in peer_specs]
    optimizers, schedulers = zip(*(factories(p) for p in peer_specs)) if peer_specs else ((), ())
    module = instantiate(cfg.strategy)(
        peers=peers,
        terms=instantiate(cfg.distill.terms),
        optimizers=list(optimizers),
        schedulers=list(schedulers),
        num_classes=data.num_classes,
        input_shape=data.input_shape,
    )
    trainer = build_trainer(cfg, output_dir, loggers, cfg.trainer.max_epochs, checkpoints=True, callbacks=callbacks)
    trainer.fit(module, datamodule=data)
    module.cpu()
    best, deployed = module.best_val_accs(), module.deployed_index()

    def extras(data) -> dict:
        reports = [
            {"peer": i, **model_report(p, s.arch, data)[0], "val_acc_best": best[i]}
            for i, (p, s) in enumerate(zip(module.peers, peer_specs))
        ]
        return {"peers": reports, "deployed_peer": deployed, "mode": module.mode}

    return Fitted(
        module.peers[deployed],
        None,
        best[deployed],
        trainer.is_global_zero,
        extras,
        student_arch=peer_specs[deployed].arch,
        student_kwargs=OmegaConf.to_container(peer_specs[deployed].kwargs),
        best_checkpoint=best_path(trainer),
        checkpoint_prefix=f"peers.{deployed}.",
    )


def self_distill(cfg: DictConfig, data, output_dir: Path, loggers: list, callbacks: list) -> Fitted:
    """BYOT: auxiliary heads on the student's stages, taught by its deepest classifier."""
    optimizer, scheduler = factories(cfg.student)
    module = instantiate(cfg.strategy)(
        student=build_student(cfg.student, data),
        terms=instantiate(cfg.distill.terms),
        optimizer=optimizer,
        scheduler=scheduler,
        num_classes=data.num_classes,
        input_shape=data.input_shape,
    )
    trainer = build_trainer(cfg, output_dir, loggers, cfg.trainer.max_epochs, checkpoints=True, callbacks=callbacks)
    trainer.fit(module, datamodule=data)
    module.cpu()

    def extras(data) -> dict:
        exits = [
            {
                "exit": i,
                "tap": path,
                "test_acc": model_report(m, path, data)[0]["test_acc"],
                "head_params": count_params(module.heads[i]),
            }
            for i, (path, m) in enumerate(module.exits())
        ]
        return {"exits": exits}

    return Fitted(
        module.student,
        None,
        module.val_acc_best.compute().item(),
        trainer.is_global_zero,
        extras,
        best_checkpoint=best_path(trainer),
    )


def born_again(cfg: DictConfig, data, output_dir: Path, loggers: list, callbacks: list) -> Fitted:
    """Generations of the student, each (but the first) distilled from the previous one."""
    plan = instantiate(cfg.strategy)
    generations: list[OfflineDistillation] = []
    for g in range(plan.generations):
        teacher = generations[-1].student.requires_grad_(False) if generations else None
        terms = instantiate(cfg.distill.terms) if teacher is not None else {"ce": CrossEntropy()}
        log.info(f"born-again: generation {g} of {plan.generations}" + (" (labels only)" if g == 0 else ""))
        generations.append(
            fit_offline(
                cfg,
                data,
                output_dir / f"gen{g}",
                loggers,
                callbacks,
                teacher=teacher,
                terms=terms,
                log_prefix=f"gen{g}/",
                strategy=OfflineDistillation,
            )
        )
    last = generations[-1]
    students = [m.student for m in generations]

    def extras(data) -> dict:
        out = {
            "generations": [
                {
                    "generation": g,
                    **model_report(s, cfg.student.arch, data)[0],
                    "val_acc_best": round(m.val_acc_best.compute().item(), 6),
                }
                for g, (s, m) in enumerate(zip(students, generations))
            ]
        }
        if plan.ensemble:
            ens = TeacherEnsemble(students, arch=f"ensemble[{cfg.student.arch} x{len(students)}]")
            out["ensemble"] = model_report(ens, ens.kdlab_arch, data)[0]
        return out

    return Fitted(
        last.student,
        generations[-2].student,
        last.val_acc_best.compute().item(),
        last.trainer.is_global_zero,
        extras,
        teacher_arch=f"{cfg.student.arch} (generation {len(students) - 2})",
        best_checkpoint=best_path(last.trainer),
    )


STRATEGIES: dict[type, Callable[..., Fitted]] = {
    OfflineDistillation: offline,
    OnlineDistillation: online,
    SelfDistillation: self_distill,
    BornAgain: born_again,
}


def run(
    cfg: DictConfig,
    output_dir: str | Path,
    overrides: list[str] | tuple = (),
    callbacks: list | tuple = (),
    tags: list[str] | tuple = (),
    summary: bool = True,
) -> dict:
    """The whole kdlab-train job; returns the results.json dict (tests and sweeps call this with a
    composed cfg; ``callbacks`` join the student's trainer, ``tags`` the W&B run's)."""
    start = time.perf_counter()
    quiet_third_party()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cfg.paths.output_dir = str(output_dir)
    if cfg.task not in TASKS:
        raise KdlabError(f"task={cfg.task} is not one of {', '.join(TASKS)}")
    torch.set_num_threads(cfg.torch_threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = instantiate(cfg.data)
    strategy_cls = get_class(cfg.strategy._target_)
    method = cfg.distill.name if cfg.task == "distill" else None
    run_tags = [f"task:{cfg.task}", f"data:{data.name}"]
    if cfg.task == "teacher" or strategy_cls is OfflineDistillation:
        run_tags.append(f"teacher:{cfg.teacher.arch}")
    if cfg.task == "distill":
        run_tags += [f"strategy:{strategy_cls.name}", f"method:{method}", f"student:{cfg.student.arch}"]
    loggers = build_loggers(cfg, [*run_tags, *tags])
    status, results = "failed", {}
    try:
        if cfg.task == "teacher":
            fitted = train_teacher(cfg, data, output_dir, loggers)
        else:
            fitted = STRATEGIES[strategy_cls](cfg, data, output_dir, loggers, list(callbacks))
        if fitted.is_global_zero:  # under DDP, rank 0 evaluates and writes
            student_arch = fitted.student_arch or cfg.student.arch
            teacher_arch = fitted.teacher_arch or getattr(fitted.teacher, "kdlab_arch", cfg.teacher.arch)
            results = {
                "task": cfg.task,
                "strategy": strategy_cls.name if cfg.task == "distill" else None,
                "method": method,
                "data": data.name,
                "seed": cfg.seed,
                **evaluate(fitted.student, student_arch, fitted.teacher, teacher_arch, data, cfg.measure_speed),
            }
            trained = results["student"] or results["teacher"]
            trained["val_acc_best"] = round(fitted.val_acc_best, 6)
            trained["test_acc_best_val"] = best_val_test_acc(fitted.student or fitted.teacher, fitted, data)
            results["wall_s"] = round(time.perf_counter() - start, 2)
            results["overrides"] = list(overrides)
            results["wandb"] = wandb_info()
            # the recipe, for `kdlab-compare --by experiment` (null when none was given)
            results["experiment"] = next((o.split("=", 1)[1] for o in overrides if o.startswith("experiments=")), None)
            results["published"] = OmegaConf.to_container(cfg.published) if cfg.get("published") else None
            results.update(fitted.extras(data))
            if fitted.student is not None:  # the deployable student, alone
                kwargs = fitted.student_kwargs or OmegaConf.to_container(cfg.student.kwargs, resolve=True)
                results["export"] = export_student(
                    fitted.student,
                    student_arch,
                    kwargs,
                    data.num_classes,
                    data.input_shape,
                    output_dir,
                    OmegaConf.to_container(cfg.data, resolve=True),
                    onnx=cfg.export_onnx,
                )
            results = finite_or_null(results)  # no validation set: no best validation accuracy (null)
            log_final_metrics(loggers, results)
            write_results(results, output_dir)
        status = "finished"
    except BaseException as e:
        if type(e).__name__ == "TrialPruned":  # a sweep's pruner stopped it: not a failure
            status = "pruned"
        raise
    finally:
        finish_wandb(status)
    if results and summary:
        print_summary(results, output_dir / RESULTS_FILE)
    return results


def train_teacher(cfg: DictConfig, data, output_dir: Path, loggers: list) -> Fitted:
    """task=teacher: train the teacher with its recipe, save it in the run and in the cache."""
    if cfg.teacher.get("ensemble"):
        raise KdlabError("task=teacher trains one teacher; train the members one by one (teacher.seed=...)")
    teacher, module = fit_teacher(cfg, cfg.teacher, output_dir, loggers, checkpoints=True)
    if module.trainer.is_global_zero:
        metrics = {"val_acc_best": module.val_acc_best.compute().item(), "run": str(output_dir)}
        cache_teacher(cfg, cfg.teacher, data, teacher, metrics, also_to=output_dir / WEIGHTS_FILE)
    return Fitted(
        None,
        teacher,
        module.val_acc_best.compute().item(),
        module.trainer.is_global_zero,
        best_checkpoint=best_path(module.trainer),
    )


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
    try:
        run(cfg, hc.runtime.output_dir, list(hc.overrides.task))
    except KdlabError as e:
        print(f"kdlab-train: error: {e}", file=sys.stderr)
        sys.exit(1)


def cli() -> None:
    main()


if __name__ == "__main__":
    main()
