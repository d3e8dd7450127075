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
import warnings
from pathlib import Path

import hydra
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.seed import isolate_rng
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdlab import CONFIG_DIR
from kdlab.callbacks import ProgressBar
from kdlab.distill import CrossEntropy
from kdlab.errors import KdlabError
from kdlab.models import create_model
from kdlab.models.checkpoint import load_weights, save_weights
from kdlab.models.ensemble import TeacherEnsemble
from kdlab.report import RESULTS_FILE, evaluate, print_summary, write_results
from kdlab.strategies import OfflineDistillation
from kdlab.teacher import WEIGHTS_FILE, cache_entry, cache_lock, teacher_key, teacher_recipe, write_recipe

log = logging.getLogger("kdlab")
TASKS = ("distill", "teacher")


def quiet_third_party() -> None:
    """Keep the terminal for kdlab's own lines: no Lightning tips/device banners, no known-harmless warnings."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    for pattern in (
        ".*does not have many workers.*",  # in-memory tensors need none
        ".*isinstance\\(treespec, LeafSpec\\).*",
        ".*The number of training batches .* is smaller than the logging interval.*",
        ".*module\\(s\\) in eval mode at the start of training.*",  # the frozen teacher, on purpose
    ):
        warnings.filterwarnings("ignore", pattern)


def build_loggers(cfg: DictConfig, tags: list[str]) -> list:
    """The Lightning loggers of ``cfg.logger`` (W&B gets the run's tags), with the resolved config logged."""
    loggers = []
    for lg_cfg in (cfg.logger or {}).values():
        extra = {"tags": tags} if lg_cfg._target_.endswith("WandbLogger") and not lg_cfg.get("tags") else {}
        loggers.append(instantiate(lg_cfg, **extra))
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return loggers


def build_trainer(
    cfg: DictConfig, output_dir: Path, loggers: list, max_epochs: int, checkpoints: bool, **overrides
) -> pl.Trainer:
    """``cfg.trainer`` plus kdlab's callbacks: last + best (val/acc) checkpoints, rich progress bar."""
    callbacks = [instantiate(c) for c in cfg.trainer.get("callbacks") or []]
    if checkpoints:
        callbacks.append(
            ModelCheckpoint(
                dirpath=output_dir / "checkpoints",
                filename="best-epoch{epoch:03d}",
                monitor="val/acc",
                mode="max",
                save_last=True,
                auto_insert_metric_name=False,
            )
        )
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(ProgressBar(refresh_rate=10))
    return instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        max_epochs=max_epochs,
        enable_checkpointing=checkpoints,
        default_root_dir=str(output_dir),
        **overrides,
    )


def fit_teacher(
    cfg: DictConfig, t: DictConfig, output_dir: Path, loggers: list, checkpoints: bool, **trainer_overrides
) -> tuple[nn.Module, OfflineDistillation]:
    """Train teacher ``t`` with its own recipe (seed, epochs, batch size, optimizer) on cross-entropy."""
    pl.seed_everything(t.seed, workers=True, verbose=False)
    data = instantiate(cfg.data, batch_size=t.batch_size)
    model = create_model(t.arch, data.num_classes, data.input_shape, pretrained=t.pretrained,
                         pretrained_path=t.pretrained_path, **t.kwargs)  # fmt: skip
    scheduler = instantiate(t.scheduler) if t.scheduler else None
    module = OfflineDistillation(model, {"ce": CrossEntropy()}, instantiate(t.optimizer), data.num_classes,
                                 data.input_shape, scheduler=scheduler)  # fmt: skip
    trainer = build_trainer(cfg, output_dir, loggers, t.max_epochs, checkpoints, **trainer_overrides)
    trainer.fit(module, datamodule=data)
    return model.cpu(), module


def get_teacher(cfg: DictConfig, data) -> nn.Module:
    """The offline teacher of ``cfg.teacher``: one model, or a ``TeacherEnsemble`` of its members."""
    ens = cfg.teacher.get("ensemble")
    if not ens:
        return single_teacher(cfg, cfg.teacher, data)
    base = OmegaConf.to_container(cfg.teacher, resolve=True)
    base.pop("ensemble")
    members = [
        OmegaConf.create({**base, **member}) for member in OmegaConf.to_container(ens.members, resolve=True)
    ]
    models = [single_teacher(cfg, m, data) for m in members]
    arch = f"ensemble[{','.join(m.arch for m in members)}]"
    log.info(f"teacher: {arch}, combining {ens.combine}")
    return TeacherEnsemble(models, ens.get("weights"), ens.combine, arch=arch)


def single_teacher(cfg: DictConfig, t: DictConfig, data) -> nn.Module:
    """Teacher ``t``: its ``checkpoint``, else the cached one for its recipe, else trained now and cached."""
    shape, classes = data.input_shape, data.num_classes
    if t.checkpoint:
        path = Path(t.checkpoint)
        if not path.is_file():
            raise KdlabError(
                f"teacher checkpoint {path} not found; make one with `kdlab-train task=teacher teacher.arch={t.arch} "
                f"data=...` (it prints where it saved it), or set teacher.checkpoint=null to train it on demand"
            )
        log.info(f"teacher: loading {path}")
        return load_weights(path, t.arch, classes, shape, t.kwargs, role="teacher")
    if t.max_epochs == 0:  # pretrained weights used as they are
        return create_model(t.arch, classes, shape, pretrained=t.pretrained, pretrained_path=t.pretrained_path,
                            **t.kwargs)  # fmt: skip
    key = teacher_key(teacher_recipe(t, cfg.data), data.name)
    entry = cache_entry(cfg.paths.cache_dir, key)
    with cache_lock(entry):  # concurrent runs wait for the one that trains
        if (entry / WEIGHTS_FILE).is_file():
            try:
                model = load_weights(entry / WEIGHTS_FILE, t.arch, classes, shape, t.kwargs, role="teacher")
                log.info(f"teacher: reusing cached {key} ({entry})")
                return model
            except KdlabError as e:
                log.warning(f"teacher: cached {key} unreadable ({e}); training it again")
        log.info(
            f"teacher: no cached {key}; training {t.arch} for {t.max_epochs} epochs (later runs reuse it)"
        )
        start = time.perf_counter()
        # one device whatever cfg.trainer says: a teacher trained inside a DDP job must not relaunch it
        model, module = fit_teacher(cfg, t, entry / "run", [], checkpoints=False, devices=1, strategy="auto",
                                    sync_batchnorm=False)  # fmt: skip
        metrics = {
            "val_acc_best": module.val_acc_best.compute().item(),
            "train_s": round(time.perf_counter() - start, 2),
        }
        cache_teacher(cfg, t, data, model, metrics)
        return model


def cache_teacher(cfg: DictConfig, t: DictConfig, data, model: nn.Module, metrics: dict,
                  also_to: Path | None = None) -> str:  # fmt: skip
    """Store ``model`` as the cached teacher of recipe ``t`` (and at ``also_to``); returns its key."""
    recipe = teacher_recipe(t, cfg.data)
    key = teacher_key(recipe, data.name)
    entry = cache_entry(cfg.paths.cache_dir, key)
    kwargs = OmegaConf.to_container(t.kwargs)
    for path in [p for p in (also_to,) if p is not None]:
        save_weights(model, path, t.arch, data.num_classes, data.input_shape, kwargs, key=key)
    with cache_lock(entry):  # re-entrant: single_teacher may already hold it
        save_weights(model, entry / WEIGHTS_FILE, t.arch, data.num_classes, data.input_shape, kwargs, key=key)
        write_recipe(entry, recipe, metrics)
    log.info(f"teacher: cached {key} at {entry}")
    return key


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
