"""Runs on a cluster, proved on this machine: hydra-submitit-launcher (submitit_local for real, the
SLURM launcher's sbatch script through a stand-in `sbatch`), SLURM's pre-timeout requeue (a stand-in
`scontrol`), multi-node DDP on gloo (two torchrun "nodes" of two processes on 127.0.0.1) against the
global batch on one process, and sweeps at scale (DDP trials, PostgreSQL workers killed mid-trial)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from kdlab import ROOT
from tests.test_sweep import free_port, postgres  # noqa: F401  (postgres: the fixture)

BIN = Path(sys.executable).parent
#: A tiny run: MNIST-1D, one epoch of a few batches, no logger, no latency measurement.
TINY = [
    "method=none",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "logger=none",
    "measure_speed=false",
    "trainer.enable_progress_bar=false",
]


def env_for(tmp_path: Path, **more) -> dict:
    """The test session's environment (offline, one thread), this test's teacher cache, no warnings."""
    return {
        **os.environ,
        "KDLAB_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONWARNINGS": "ignore",
        "OMP_NUM_THREADS": "1",
        **more,
    }


def results_of(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def start(cmd: list[str], **kwargs) -> subprocess.Popen:
    """A command whose output is captured; ``stop`` ends it with every process it started (torchrun's
    workers, submitit's job processes)."""
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun puts its workers in sessions of their own), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def stop(proc: subprocess.Popen) -> None:
    """``proc`` and every process it started, at once."""
    for pid in [*descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_all(procs: list[subprocess.Popen], timeout: float = 300) -> list[str]:
    """The outputs of processes that work together (DDP ranks, torchrun agents), all stopped at once
    when one fails (the others would wait for it until the timeout) or at the timeout."""
    deadline = time.time() + timeout
    while any(p.poll() is None for p in procs) and time.time() < deadline:
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.5)
    for p in procs:
        stop(p)
    return [p.communicate()[0].decode() for p in procs]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path} appeared"
        assert time.time() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.2)


# --- hydra-submitit-launcher -------------------------------------------------------------------


def test_a_multirun_of_seeds_runs_as_a_submitit_job_array(tmp_path):
    p = subprocess.run(
        [str(BIN / "kdlab-train"), "-m", "hydra/launcher=local", "seed=0,1", *TINY],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env_for(tmp_path),
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")  # hydra.sweep.dir, the default ${now:...}
    assert [results_of(sweep_dir / str(n))["seed"] for n in (0, 1)] == [0, 1]
    # every job of the array is a pickled submitit job with its own log
    submitted = sorted((sweep_dir / ".submitit").glob("*/*_submitted.pkl"))
    assert len(submitted) == 2 and all(list(f.parent.glob("*_log.out")) for f in submitted)
    # a requeued job (SLURM runs the same pickle again) composes the same run directory, not a new
    # ${now:...}: the launcher's pickled config keeps the resolved timestamp
    while datetime.now().strftime("%H-%M-%S") == sweep_dir.name:
        time.sleep(0.2)
    dirs = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
                import sys
                from pathlib import Path
                from hydra.core.singleton import Singleton
                from hydra.core.utils import setup_globals
                from submitit.core.utils import DelayedSubmission
                for f in sys.argv[1:]:  # what the launcher does first in the job (its __call__)
                    job = DelayedSubmission.load(f)
                    launcher, (overrides, _, job_num, _, singletons) = job.function, job.args
                    Singleton.set_state(singletons)
                    setup_globals()  # registers ${now:}: a value it computed now would name another directory
                    config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
                    print(Path(str(config.hydra.sweep.dir), str(job_num)).resolve())
            """),
            *map(str, submitted),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env_for(tmp_path),
        timeout=120,
    )
    assert dirs.returncode == 0, dirs.stderr[-2000:]
    assert sorted(dirs.stdout.split()) == [str((sweep_dir / n).resolve()) for n in ("0", "1")]


def test_slurm_launcher_composes_with_the_values_set(tmp_path):
    p = subprocess.run(
        [
            str(BIN / "kdlab-train"),
            "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu",
            "--cfg",
            "hydra",
            "--package",
            "hydra.launcher",
            "--resolve",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env_for(tmp_path),
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-2000:]

    launcher = yaml.safe_load(p.stdout)
    assert launcher["_target_"].endswith("SlurmLauncher")
    expected = {
        "partition": "gpu",
        "timeout_min": 240,
        "nodes": 1,
        "gpus_per_node": 1,
        "tasks_per_node": 1,  # one process per GPU
        "cpus_per_task": 8,
        "mem_gb": 64,
        "signal_delay_s": 120,
        "max_num_timeout": 5,
        "array_parallelism": 64,
    }
    assert {k: launcher[k] for k in expected} == expected
    # SLURM's pre-timeout signal is the one Lightning's SLURMEnvironment requeues on (SIGUSR1)
    assert launcher["additional_parameters"] == {"signal": "USR1@120", "requeue": True}


def test_slurm_launcher_submits_a_multirun_as_one_job_array(tmp_path):
    """The sbatch script hydra's SLURM launcher writes, caught by a stand-in `sbatch` (no cluster here)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text('#!/bin/sh\ncp "$1" "$SBATCH_SCRIPT"\necho "sbatch: stand-in" >&2\nexit 1\n')
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit checks that srun exists
    for f in fake.iterdir():
        f.chmod(0o755)
    script = tmp_path / "job.sbatch"
    args = ["-m", "hydra/launcher=slurm", "seed=0,1,2", "hydra.launcher.partition=gpu", "hydra.launcher.nodes=2"]
    args += ["hydra.launcher.gpus_per_node=4", "trainer=ddp", "trainer.num_nodes=2", "trainer.devices=4", *TINY]
    p = subprocess.run(
        [str(BIN / "kdlab-train"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env_for(tmp_path, PATH=f"{fake}:{os.environ['PATH']}", SBATCH_SCRIPT=str(script)),
        timeout=120,
    )
    assert p.returncode != 0 and "sbatch: stand-in" in p.stderr  # submitted to the stand-in, which refused
    flags = {
        line.split("=")[0]: line.split("=", 1)[-1] for line in script.read_text().splitlines() if "#SBATCH" in line
    }
    assert flags["#SBATCH --array"] == "0-2%3"  # one array task per run, all at once (array_parallelism 64)
    assert flags["#SBATCH --partition"] == "gpu" and flags["#SBATCH --time"] == "240"
    assert flags["#SBATCH --nodes"] == "2" and flags["#SBATCH --gpus-per-node"] == "4"
    assert flags["#SBATCH --ntasks-per-node"] == "4" and flags["#SBATCH --cpus-per-task"] == "8"
    assert flags["#SBATCH --mem"] == "64GB" and flags["#SBATCH --signal"] == "USR1@120"
    assert "#SBATCH --requeue" in flags
    assert "srun" in script.read_text() and "submitit.core._submit" in script.read_text()


def test_a_preempted_submitit_job_is_requeued_into_its_run_directory_and_resumes(tmp_path):
    """submitit_local's preemption path: SIGUSR2 to the job, submitit checkpoints the launcher's call
    and runs it again; the job goes on in the same run directory from its checkpoints/last.ckpt."""
    cmd = [str(BIN / "kdlab-train"), "-m", "hydra/launcher=local", "seed=0", *TINY[:1], *TINY[3:]]
    cmd += ["trainer.max_epochs=60", "data.num_samples=2000"]
    job = start(cmd, cwd=tmp_path, env=env_for(tmp_path))
    try:
        deadline = time.time() + 240
        while not list((tmp_path / "outputs").glob("multirun/*/*/0/checkpoints/last.ckpt")):
            assert job.poll() is None and time.time() < deadline, "no checkpoint before the job ended"
            time.sleep(0.2)
        (run_dir,) = (tmp_path / "outputs").glob("multirun/*/*/0")
        pid = int((run_dir / ".kdlab.lock").read_text())  # the job's process (it holds its run directory)
        os.kill(pid, signal.SIGUSR2)  # submitit's preemption signal
        out = job.communicate(timeout=300)[0].decode()
    finally:
        stop(job)
    assert job.returncode == 0, out[-3000:]
    logs = "".join(f.read_text() for f in (run_dir.parent / ".submitit").glob("*/*_log.*"))
    assert "Caught signal SIGUSR2" in logs and "Requeued job" in logs
    assert list((tmp_path / "outputs").glob("multirun/*/*/*/results.json")) == [run_dir / "results.json"]
    r = results_of(run_dir)
    assert r["resumed_from"] is not None and 0 <= r["resumed_from"] < 59  # went on from where it was stopped
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 59


def test_slurm_pre_timeout_signal_saves_and_requeues_and_the_requeued_job_resumes(tmp_path):
    """Lightning's SLURMEnvironment under kdlab's trainer, in a stand-in SLURM job (its environment,
    a stand-in `scontrol`): SIGUSR1 saves a checkpoint and requeues the array task; SLURM would then
    stop it (here: SIGKILL) and start the same command again, which resumes its run directory."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')
    (fake / "scontrol").chmod(0o755)
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_ARRAY_JOB_ID": "4240",
        "SLURM_ARRAY_TASK_ID": "2",
        "SLURM_JOB_NAME": "kdlab",
        "SLURM_NTASKS": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
    }
    env = env_for(tmp_path, PATH=f"{fake}:{os.environ['PATH']}", SCONTROL_LOG=str(tmp_path / "scontrol.log"), **slurm)
    # the sbatch script's command: a run directory named after the array task, the same when requeued
    cmd = [str(BIN / "kdlab-train"), *TINY[:1], *TINY[3:], "trainer.max_epochs=60", "data.num_samples=2000"]
    cmd += ["hydra.run.dir=runs/${oc.env:SLURM_ARRAY_JOB_ID}_${oc.env:SLURM_ARRAY_TASK_ID}"]
    run_dir = tmp_path / "runs" / "4240_2"
    job = start(cmd, cwd=tmp_path, env=env)
    try:
        wait_for(run_dir / "checkpoints" / "last.ckpt", job)
        job.send_signal(signal.SIGUSR1)  # SLURM's pre-timeout signal (sbatch --signal=USR1@120)
        wait_for(tmp_path / "scontrol.log", job, timeout=60)
        job.send_signal(signal.SIGKILL)  # SLURM ends the requeued job
        out = job.communicate(timeout=60)[0].decode()
    finally:
        stop(job)
    assert "SLURM auto-requeueing enabled" in out
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4240_2"]
    (hpc,) = run_dir.glob("hpc_ckpt_*.ckpt")  # Lightning's save on the signal, in the run directory
    assert torch.load(hpc, weights_only=True)["global_step"] > 0
    assert not (run_dir / "results.json").exists()
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    r = results_of(run_dir)
    assert r["resumed_from"] is not None and r["resumed_from"] >= 0
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 59


# --- multi-node DDP on gloo ------------------------------------------------------------------------

#: Written next to the runs and given to kdlab-train as a trainer callback: what each rank saw.
PROBE = '''
import json

import lightning.pytorch as pl
import torch
from safetensors.torch import load_file
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook


class Probe(pl.Callback):
    """Per rank: the parameters DDP all-reduced (a comm hook sees every gradient bucket), the
    teacher's state after the fit against its file, and the CRD memory bank."""

    def __init__(self, out: str, teacher: str):
        self.out, self.teacher, self.reduced = out, teacher, set()

    def on_train_start(self, trainer, pl_module):
        names = {id(p): n for n, p in pl_module.named_parameters()}

        def hook(state, bucket):
            self.reduced.update(names[id(p)] for p in bucket.parameters())
            return allreduce_hook(None, bucket)

        trainer.strategy.model.register_comm_hook(None, hook)

    def on_train_end(self, trainer, pl_module):
        rank, saved, state = trainer.global_rank, load_file(self.teacher), pl_module.teacher.state_dict()
        memory = pl_module.terms["crd"].memory
        torch.save({k: v.clone() for k, v in memory.state_dict().items()}, f"{self.out}/memory{rank}.pt")
        record = {
            "world": trainer.world_size,
            "ignored": sorted(trainer.strategy.model.parameters_to_ignore),  # what DDP leaves alone
            "teacher": sorted(
                [f"teacher.{n}" for n, _ in pl_module.teacher.named_parameters()]
                + [f"teacher.{n}" for n, _ in pl_module.teacher.named_buffers()]
            ),
            "reduced": sorted(self.reduced),
            "trainable": sorted(n for n, p in pl_module.named_parameters() if p.requires_grad),
            "teacher_frozen": all(not p.requires_grad and p.grad is None for p in pl_module.teacher.parameters()),
            "teacher_buffers": sum(1 for _ in pl_module.teacher.buffers()),
            "teacher_unchanged": sorted(saved) == sorted(state) and all(torch.equal(saved[k], state[k]) for k in saved),
        }
        with open(f"{self.out}/probe{rank}.json", "w") as f:
            json.dump(record, f)
'''

#: KD and CRD in one method on MNIST-1D without input noise (each rank would draw the same noise
#: for its rows: equal in law to one process's, not equal in value), two epochs, a frozen 1-D
#: conv-BN teacher; the MLP student has no BatchNorm.
DDP_RUN = [
    "method=[kd,crd]",
    "method.name=kd+crd",
    "method.terms.crd.nce_k=256",
    "method.terms.crd.feat_dim=32",
    "teacher.arch=cnn_small",
    "data.noise_std=0",
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=2",
    "logger=none",
    "measure_speed=false",
    "trainer.enable_progress_bar=false",
]
GLOBAL_BATCH = 200


@pytest.fixture(scope="module")
def ddp_setup(tmp_path_factory):
    """A teacher file (conv-BN, running statistics set), the probe module, and the reference: the
    same run on one process with the global batch (DDP of one process, so that its sampler is the
    DistributedSampler whose global order the ranks split)."""
    from kdlab.models import create_model
    from kdlab.models.checkpoint import save_weights

    root = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(0)
    teacher = create_model("cnn_small", 10, (1, 40))
    with torch.no_grad():  # non-trivial BatchNorm statistics, which must come out of the runs unchanged
        teacher.train()
        for _ in range(3):
            teacher(torch.randn(64, 1, 40))
    path = save_weights(teacher.eval(), root / "teacher.safetensors", "cnn_small", 10, (1, 40))
    (root / "kdlab_probe.py").write_text(PROBE)
    path_before = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    setup = {
        "root": root,
        "teacher": path,
        "env": env_for(root, PYTHONPATH=":".join([*path_before, str(root), str(ROOT)])),
    }
    start = time.perf_counter()
    ref = launch(setup, "ref", nodes=1, procs=1, batch=GLOBAL_BATCH)
    setup["ref"], setup["ref_wall_s"] = ref, time.perf_counter() - start
    return setup


def launch(setup: dict, name: str, nodes: int, procs: int, batch: int, extra: tuple = ()) -> Path:
    """``nodes`` torchrun agents of ``procs`` processes each on 127.0.0.1 (static rendezvous), each
    running kdlab-train with ``batch`` samples per process; returns node 0's run directory."""
    out = setup["root"] / name
    (out / "probe").mkdir(parents=True)
    port = free_port()
    args = [*DDP_RUN, f"teacher.checkpoint={setup['teacher']}", f"data.batch_size={batch}"]
    probe = f"{{_target_:kdlab_probe.Probe,out:'{out / 'probe'}',teacher:'{setup['teacher']}'}}"
    args += [f"trainer.devices={procs}", f"trainer.num_nodes={nodes}", f"trainer.callbacks=[{probe}]", *extra]
    agents = []
    for node in range(nodes):
        torchrun = [str(BIN / "torchrun"), f"--nnodes={nodes}", f"--nproc_per_node={procs}", f"--node_rank={node}"]
        torchrun += ["--master_addr=127.0.0.1", f"--master_port={port}", str(BIN / "kdlab-train"), *args]
        agents.append(start([*torchrun, f"hydra.run.dir={out / f'node{node}'}"], cwd=setup["root"], env=setup["env"]))
    logs = wait_all(agents)
    for node, (agent, log) in enumerate(zip(agents, logs)):
        (out / f"node{node}.log").write_text(log)
        assert agent.returncode == 0, log[-3000:]
    return out


def check_against_reference(setup: dict, out: Path, world: int) -> None:
    """The DDP run's student, validation accuracy and CRD memory equal the one-process run's; the
    teacher was never all-reduced and its buffers are as loaded; results and export on rank 0 only."""
    from safetensors.torch import load_file

    ref, run = setup["ref"] / "node0", out / "node0"
    ref_w, run_w = load_file(ref / "student.safetensors"), load_file(run / "student.safetensors")
    assert ref_w.keys() == run_w.keys()
    for k in ref_w:  # the same trajectory up to float summation order (gradients all-reduced over ranks)
        torch.testing.assert_close(run_w[k], ref_w[k], rtol=1e-4, atol=1e-5)
    r, rr = results_of(run), results_of(ref)
    assert r["student"]["val_acc_best"] == rr["student"]["val_acc_best"] > 0.2
    assert r["student"]["test_acc"] == rr["student"]["test_acc"]
    assert r["teacher"]["test_acc"] == rr["teacher"]["test_acc"]
    ref_memory = torch.load(setup["ref"] / "probe" / "memory0.pt", weights_only=True)
    for rank in range(world):
        probe = json.loads((out / "probe" / f"probe{rank}.json").read_text())
        assert probe["world"] == world
        assert probe["teacher_frozen"] and probe["teacher_unchanged"] and probe["teacher_buffers"] > 0
        assert probe["reduced"] == probe["trainable"]  # every trainable parameter, nothing of the teacher
        assert not any(n.startswith("teacher.") for n in probe["reduced"])
        # the teacher and the memory bank are outside DDP: neither broadcast nor all-reduced
        memory_buffers = [f"terms.crd.memory.{k}" for k in ("memory_s", "memory_t", "z")]
        assert set(probe["teacher"]) | set(memory_buffers) <= set(probe["ignored"])
        memory = torch.load(out / "probe" / f"memory{rank}.pt", weights_only=True)
        for k in ("memory_s", "memory_t", "z"):  # the bank moved with the global batch, on every rank
            torch.testing.assert_close(memory[k], ref_memory[k], rtol=1e-4, atol=1e-5)
    for node in range(1, len(list(out.glob("node*.log")))):  # ranks > 0 write no results, export or checkpoint
        other = out / f"node{node}"
        assert not (other / "results.json").exists() and not (other / "student.safetensors").exists()
        assert not list(other.glob("**/*.ckpt"))


def test_ddp_strategy_keeps_the_teacher_and_the_memory_bank_out_of_ddp_and_taps_through_sync_batchnorm():
    """kdlab.cluster.DDPStrategy's two changes to Lightning's, on a module built as a run builds it:
    what DDP must ignore, and the SyncBatchNorm swap (GPU-only in DDP; the swap itself runs anywhere)."""
    from kdlab.cluster import replicated_state, sync_batchnorm
    from kdlab.config import instantiate
    from kdlab.models import create_model
    from kdlab.strategies.offline import OfflineDistillation
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["method=[ofd,crd]", "method.name=ofd+crd", "teacher.arch=cnn_small", "student.arch=cnn_tiny"])
    teacher, student = create_model("cnn_small", 10, (1, 40)), create_model("cnn_tiny", 10, (1, 40))
    module = OfflineDistillation(student, instantiate(cfg.method.terms), torch.optim.SGD, 10, (1, 40), teacher=teacher)
    module.terms["crd"].prepare(torch.arange(100) % 10)  # the memory bank, as at the start of a fit
    ignored = replicated_state(module)
    teacher_state = [f"teacher.{n}" for n, _ in teacher.named_parameters()] + [
        f"teacher.{n}" for n, _ in teacher.named_buffers()
    ]
    memory = [f"terms.crd.memory.{k}" for k in ("memory_s", "memory_t", "z")]
    assert sorted(ignored) == sorted(teacher_state + memory)
    assert not any(p.requires_grad for n, p in module.named_parameters() if n in ignored)

    taps = module.student_taps.paths  # OFD taps the student's BatchNorms (pre-ReLU features), CRD pre_logits
    bn_taps = [t for t in taps if t != "pre_logits"]
    assert bn_taps and all(isinstance(student.get_submodule(t), torch.nn.BatchNorm1d) for t in bn_taps)
    trained = [n for n, m in module.named_modules() if isinstance(m, torch.nn.BatchNorm1d) and "teacher" not in n]
    assert len(trained) == 6  # the student's three and those of OFD's connectors
    assert sync_batchnorm(module, skip=(module.teacher,)) == 6  # the teacher's are left alone
    assert all(isinstance(student.get_submodule(t), torch.nn.SyncBatchNorm) for t in bn_taps)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in module.teacher.modules())
    module.eval()
    with torch.no_grad():
        module.student(torch.randn(4, 1, 40))
    assert sorted(module.student_taps.pop()) == sorted(taps)  # the taps still record through the swapped modules


def test_ddp_on_two_processes_trains_as_one_process_on_the_global_batch(ddp_setup):
    start = time.perf_counter()
    out = launch(ddp_setup, "1x2", nodes=1, procs=2, batch=GLOBAL_BATCH // 2)
    wall = time.perf_counter() - start
    check_against_reference(ddp_setup, out, world=2)
    print(f"\n1 node x 2 processes: {wall:.1f} s; one process, global batch: {ddp_setup['ref_wall_s']:.1f} s")


@pytest.mark.slow  # ~20 s: four / two processes on two cores (make test-slow)
def test_ddp_on_two_nodes_of_two_processes_trains_as_one_process_on_the_global_batch(ddp_setup):
    start = time.perf_counter()
    out = launch(ddp_setup, "2x2", nodes=2, procs=2, batch=GLOBAL_BATCH // 4, extra=("logger=wandb",))
    wall = time.perf_counter() - start
    check_against_reference(ddp_setup, out, world=4)
    # one W&B run (offline), rank 0's: none from node 1's ranks, whose run directory is their own here
    assert len(list((out / "node0" / "wandb").glob("offline-run-*"))) == 1
    assert not (out / "node1" / "wandb").exists()
    print(f"\n2 nodes x 2 processes: {wall:.1f} s; one process, global batch: {ddp_setup['ref_wall_s']:.1f} s")


def test_ddp_trains_a_method_whose_term_has_an_initialisation_phase(ddp_setup, tmp_path):
    """AB trains its connectors and the student's feature modules first (the head gets no gradient),
    then cross-entropy alone (the connectors get none): DDP is told to expect unused parameters."""
    args = [*(a for a in DDP_RUN if not a.startswith(("method", "trainer.max_epochs"))), "trainer.max_epochs=1"]
    args += ["method=ab", "method.terms.ab.init_epochs=1", "student.arch=cnn_tiny", "+trainer.limit_train_batches=5"]
    args += [f"teacher.checkpoint={ddp_setup['teacher']}", "trainer.devices=2", f"hydra.run.dir={tmp_path / 'run'}"]
    torchrun = [str(BIN / "torchrun"), "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    agent = start([*torchrun, str(BIN / "kdlab-train"), *args], cwd=tmp_path, env=ddp_setup["env"])
    (log,) = wait_all([agent])
    assert agent.returncode == 0, log[-3000:]
    assert (tmp_path / "run" / "init_ab" / "checkpoints" / "last.ckpt").exists()
    assert results_of(tmp_path / "run")["method"] == "ab"


def test_ddp_trains_a_teacher_that_is_not_cached_once_and_every_rank_uses_it(tmp_path):
    """Two torchrun nodes of one process, no cached teacher: the teacher is trained on demand by one
    process alone (a plain single-device fit, not a DDP job of the run's nodes), cached, and loaded
    from the cache by the other rank."""
    args = ["method=kd", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=2"]
    args += ["teacher.max_epochs=1", *TINY[1:], f"hydra.run.dir={tmp_path / 'run'}"]
    port = free_port()
    agents = [
        start(
            [str(BIN / "torchrun"), "--nnodes=2", "--nproc_per_node=1", f"--node_rank={node}"]
            + ["--master_addr=127.0.0.1", f"--master_port={port}", str(BIN / "kdlab-train"), *args],
            cwd=tmp_path,
            env=env_for(tmp_path),
        )
        for node in (0, 1)
    ]
    logs = wait_all(agents, timeout=75)  # without one process training the teacher alone, the ranks deadlock
    assert [a.returncode for a in agents] == [0, 0], logs[0][-3000:]
    log = "".join(logs)
    assert log.count("teacher: no cached mnist1d-cnn1d") == 1 and log.count("teacher: reusing cached") == 1
    assert len(list((tmp_path / "cache" / "teachers").glob("*/teacher.safetensors"))) == 1
    assert results_of(tmp_path / "run")["teacher"]["test_acc"] > 0


def test_ddp_under_slurm_two_tasks_share_the_run_directory(ddp_setup, tmp_path):
    """trainer=ddp in a stand-in SLURM job step of two tasks (srun's environment: SLURM_PROCID, no
    RANK): Lightning's SLURMEnvironment ranks them; both run in the one run directory, rank 0 writes."""
    port = free_port()  # SLURMEnvironment takes MASTER_PORT from the environment when it is set
    slurm = {"SLURM_JOB_ID": "5151", "SLURM_JOB_NAME": "kdlab", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2"}
    slurm |= {"SLURM_NODEID": "0", "SLURM_NODELIST": "localhost", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    args = [*(a for a in DDP_RUN if not a.startswith("method")), "method=kd", "trainer.devices=2"]
    args.append(f"teacher.checkpoint={ddp_setup['teacher']}")
    tasks = [
        start(
            [str(BIN / "kdlab-train"), *args, f"hydra.run.dir={tmp_path / 'run'}"],
            cwd=tmp_path,
            env={**ddp_setup["env"], **slurm, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
        )
        for rank in (0, 1)
    ]
    outs = wait_all(tasks)
    assert [t.returncode for t in tasks] == [0, 0], outs[1][-2000:] + outs[0][-2000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outs[1]
    assert results_of(tmp_path / "run")["student"]["val_acc_best"] > 0.2


# --- sweeps at scale ---------------------------------------------------------------------------------

#: A sweep's trials on MNIST-1D: a few epochs, nothing logged but the study; the teacher is given.
SWEEP = [
    "sweeps=kd_temperature_alpha",
    "logger=none",
    "measure_speed=false",
    "trainer.enable_progress_bar=false",
    "data.noise_std=0",
]


@pytest.mark.slow  # ~20 s: four / two processes on two cores (make test-slow)
def test_a_ddp_sweep_runs_the_study_on_rank_0_and_each_trial_reports_one_value(ddp_setup, tmp_path):
    env = {**ddp_setup["env"], "KDLAB_SWEEP_DIR": str(tmp_path / "sweeps")}
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=2"]
    args = [*SWEEP, *ddp, "+trainer.limit_train_batches=5", "sweep.n_trials=2", "sweep.worker=0"]
    args += [f"teacher.checkpoint={ddp_setup['teacher']}", "teacher.arch=cnn_small"]
    # Lightning starting the processes itself would re-run the sweep command on every rank: refused
    p = subprocess.run([str(BIN / "kdlab-sweep"), *args], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith(
        "kdlab-sweep: error: a sweep whose trials train with DDP needs its processes started by torchrun or srun"
    )
    torchrun = [str(BIN / "torchrun"), "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    agent = start([*torchrun, str(BIN / "kdlab-sweep"), *args], cwd=tmp_path, env=env)
    (log,) = wait_all([agent])
    assert agent.returncode == 0, log[-3000:]
    study = optuna.load_study(study_name="kd_temperature_alpha", storage=f"sqlite:///{tmp_path / 'sweeps/optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2  # two trials, not two per rank
    for t in study.trials:
        assert f"rank 1: training trial {t.number} with rank 0" in log  # both ranks trained each trial
        r = results_of(Path(t.user_attrs["run_dir"]))
        assert t.value == pytest.approx(r["student"]["val_acc_best"], abs=1e-6)
        assert sorted(t.intermediate_values) == [0, 1]  # one value per epoch, reported once (by rank 0)


def test_postgresql_workers_one_killed_mid_trial_end_with_every_trial_finished(postgres, tmp_path):  # noqa: F811
    """Two workers on one PostgreSQL study (two SLURM array tasks); one is killed with SIGKILL in the
    middle of a trial. Its trial stops beating, turns FAIL after the grace period and is queued again
    (sweep.retries, default 2); the killed task, requeued, takes it and resumes the trial's run
    directory from its last.ckpt."""
    env = env_for(tmp_path, KDLAB_SWEEP_DIR=str(tmp_path / "sweeps"))
    args = [*SWEEP, f"sweep.storage={postgres}", "sweep.heartbeat_interval=1", "sweep.grace_period=3"]
    args += ["trainer.max_epochs=25", "data.num_samples=2000", "teacher.max_epochs=1"]
    subprocess.run(  # the study once, before the workers (as a job before the array)
        [str(BIN / "kdlab-sweep"), *args, "sweep.n_trials=0"], check=True, env=env, cwd=tmp_path, capture_output=True
    )

    def worker(index: int, n_trials: int) -> subprocess.Popen:
        cmd = [str(BIN / "kdlab-sweep"), *args, f"sweep.worker={index}", f"sweep.n_trials={n_trials}"]
        return start(cmd, env=env, cwd=tmp_path)

    def study() -> optuna.Study:
        return optuna.load_study(study_name="kd_temperature_alpha", storage=postgres)

    killed, other = worker(0, 2), worker(1, 2)
    requeued = None
    try:
        deadline = time.time() + 240
        while True:  # worker 0's trial, once it has checkpointed an epoch
            running = [t for t in study().trials if t.state == TrialState.RUNNING and t.user_attrs.get("worker") == 0]
            if running and (Path(running[0].user_attrs["run_dir"]) / "checkpoints" / "last.ckpt").exists():
                break
            assert killed.poll() is None and time.time() < deadline, "worker 0 ran no trial"
            time.sleep(0.2)
        (victim,) = running
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        other_out = other.communicate(timeout=300)[0].decode()
        assert other.returncode == 0, other_out[-3000:]
        time.sleep(3)  # past the grace period: the killed trial's heartbeat is stale
        requeued = worker(0, 1)  # the killed array task, requeued by SLURM: the same command again
        out = requeued.communicate(timeout=300)[0].decode()
        assert requeued.returncode == 0, out[-3000:]
    finally:
        for w in (killed, other, requeued):
            if w is not None:
                stop(w)
    trials = study().trials
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.FAIL}  # nothing left running or waiting
    assert trials[victim.number].state == TrialState.FAIL
    retries = {t.system_attrs.get("failed_trial"): t for t in trials if t.system_attrs.get("failed_trial") is not None}
    assert set(retries) == {t.number for t in trials if t.state == TrialState.FAIL} == {victim.number}
    retry = retries[victim.number]
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    assert retry.user_attrs["run_dir"] == victim.user_attrs["run_dir"]  # the killed trial's directory ...
    r = results_of(Path(retry.user_attrs["run_dir"]))
    assert r["resumed_from"] is not None and r["resumed_from"] >= 0  # ... continued from its checkpoint
    assert retry.value == pytest.approx(r["student"]["val_acc_best"], abs=1e-6)
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 3  # the other worker's two, and the retry
