"""`make reproduce` (kdlab.reproduce) and `make bench` (kdlab.bench): the tables they write."""

import json
import subprocess
import sys

import pytest

from kdlab import ROOT, bench, reproduce


def test_every_reproduce_row_is_an_experiment_and_runs_once():
    names = [name for _, name, *_ in reproduce.BASELINES + reproduce.DISTILLATION]
    assert sorted(reproduce.ORDER) == sorted(set(names) | set(reproduce.PAPER_CODE))
    assert len(reproduce.ORDER) == len(set(reproduce.ORDER))
    for name in names:
        assert (ROOT / "experiments" / f"{name}.yaml").exists(), name
    # the baselines are the MNIST-1D paper's setup: no input noise, each with its published number
    from tests.conftest import compose_cfg

    for _, name, arch, published in reproduce.BASELINES:
        cfg = compose_cfg([f"experiments={name}"])
        assert cfg.data.noise_std == 0 and cfg.method.name == "none" and cfg.data.val_fraction == 0
        assert cfg.published.student_acc == published and cfg.student.arch == arch
        assert f"paper_code/{arch}" in reproduce.PAPER_CODE and arch in reproduce.PAPER_MODELS


def fake_results(out, name, accs, **extra):
    for seed, acc in enumerate(accs):
        path = out / name.replace("/", "_") / str(seed) / "results.json"
        path.parent.mkdir(parents=True)
        record = {
            "strategy": "offline",
            "method": "none",
            "seed": seed,
            "student": {"arch": "mlp", "params": 15210, "test_acc": acc, "test_acc_best_val": acc + 0.01},
            **extra,
        }
        path.write_text(json.dumps(record))


def fake_paper_code(out, arch, accs):
    runs = [{"arch": arch, "seed": seed, "test_acc": acc, "wall_s": 1.0} for seed, acc in enumerate(accs)]
    reproduce.paper_code_file(out, arch).write_text(json.dumps(runs))


def test_reproduce_report_gives_mean_std_and_differences(tmp_path):
    rows = reproduce.BASELINES + reproduce.DISTILLATION
    for _, name, *_ in rows:
        if name == "mnist1d/kd_cnn1d_mlp":
            fake_results(tmp_path, name, [0.70, 0.72, 0.74], teacher={"arch": "cnn1d", "test_acc": 0.94})
        elif "dml" in name:  # the DML rows carry their peers
            fake_results(tmp_path, name, [0.60, 0.62, 0.64], peers=[{"test_acc": 0.70}, {"test_acc": 0.90}])
        else:
            fake_results(tmp_path, name, [0.60, 0.62, 0.64])
    for _, _, arch, _ in reproduce.BASELINES:
        fake_paper_code(tmp_path, arch, [0.63, 0.65, 0.67])
    text = reproduce.report(tmp_path, 600.0, {name: 10.0 for name in reproduce.ORDER} | {"paper_code/mlp": 4.0})
    assert "Wall time: 10.0 min" in text
    # MLP baseline: kdlab 62.0 ± 2.0, paper's code 65.0 ± 2.0, published 68: -3.0 and -6.0 points
    mlp = next(line for line in text.splitlines() if line.startswith("| MLP (residual"))
    assert mlp.endswith("| 15,210 | 62.0 ± 2.0 | 65.0 ± 2.0 | 68 | -3.0 | -6.0 | 10 / 4 |"), mlp
    header = next(line for line in text.splitlines() if line.startswith("| model |"))
    assert "kdlab-train (%) | paper's code (%) | published (%)" in header
    # KD against the MLP alone: +10.0 points, with its teacher (the distillation table is unchanged)
    kd = next(line for line in text.splitlines() if line.startswith("| KD"))
    assert "| 72.0 ± 2.0 | 73.0 ± 2.0 | +10.0 | teacher cnn1d 94.0 ± 0.0 |" in kd
    # DML with the CNN reports its MLP peer (peer 0), not the deployed student
    dml = next(line for line in text.splitlines() if "MLP + CNN peers" in line)
    assert "| 70.0 ± 0.0 | - | +8.0 | peers 70.0 ± 0.0 / 90.0 ± 0.0 |" in dml


def test_reproduce_cli_and_paper_code(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        reproduce.cli(["--help"])
    assert stop.value.code == 0 and "--paper-code {cnn1d,logistic,mlp}" in capsys.readouterr().out
    # a few steps of the paper's loop through the same function the CLI calls
    runs = reproduce.paper_code("mlp", [0, 1], total_steps=3, eval_every=1)
    assert [r["seed"] for r in runs] == [0, 1] and all(r["updates"] == 4 for r in runs)
    assert all(len(r["test_acc_curve"]) == 4 and 0 <= r["test_acc"] <= 1 for r in runs)
    assert runs[0]["params"] == 15210 and runs[0]["test_acc_curve"] != runs[1]["test_acc_curve"]


def test_bench_section_replaces_only_its_device(tmp_path):
    doc = tmp_path / "benchmarks.md"
    bench.write_section(doc, "cuda", "## Training step, CUDA (old)\n\ngpu numbers\n")
    bench.write_section(doc, "cpu", "## Training step, CPU (1)\n\nfirst\n")
    bench.write_section(doc, "cpu", "## Training step, CPU (2)\n\nsecond\n")
    text = doc.read_text()
    assert text.startswith("# Benchmarks") and "gpu numbers" in text and "second" in text
    assert "first" not in text and text.count("## Training step") == 2


def test_bench_times_a_recipe(tmp_path):
    doc = tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [sys.executable, "-m", "kdlab.bench", "--only", "step", "--cases", "mnist1d/kd_cnn1d_mlp", "--steps", "4"]
        + ["--doc", str(doc)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = next(line for line in doc.read_text().splitlines() if line.startswith("| mnist1d/kd_cnn1d_mlp"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "cnn1d -> mlp" and cells[2:4] == ["100", "4"]
    bare, kdlab, peer, ratio, peer_ratio = (float(c) for c in cells[4:9])
    # the ratios are computed from unrounded times; the ms cells are rounded to 0.1
    assert bare > 0 and kdlab > 0 and peer > 0
    assert ratio == pytest.approx(kdlab / bare, rel=0.1) and peer_ratio == pytest.approx(peer / kdlab, rel=0.1)
    bare_mib, kdlab_mib, peer_mib = (float(v.split("(")[0]) for v in cells[9].split(" / "))
    assert min(bare_mib, kdlab_mib, peer_mib) > 100 and "(+" in cells[9]  # the peer loop's 2 workers


def test_bench_writes_each_section_in_its_place(tmp_path):
    doc = tmp_path / "benchmarks.md"
    for title in ("Training step, CPU (1)", "Data pipeline, CPU (1)", "Training step, CUDA (1)"):
        bench.write_section(doc, title.split(", ")[1].split()[0].lower(), f"## {title}\n\nstale\n")
    bench.write_section(doc, "cpu", "## Data pipeline, CPU (2)\n\nnew\n")
    text = doc.read_text()
    assert text.count("## Data pipeline, CPU") == 1 and "## Data pipeline, CPU (2)" in text
    assert text.count("## Training step") == 2 and text.count("stale") == 2


def test_the_data_pipeline_benchmark_times_kdlab_and_a_dataloader(tmp_path):
    from kdlab import bench_data

    rows = [bench_data.one("mnist1d", pipeline, "cpu", tmp_path) for pipeline in ("kdlab", "workers2")]
    assert rows[0]["batches"] == rows[1]["batches"] == 10 * 36  # 10 epochs of 3,600 samples in batches of 100
    assert rows[0]["worker_mib"] is None and rows[1]["worker_mib"] > 0
    table = bench_data.report(rows, "cpu", 1.0)
    kdlab_row = next(line for line in table.splitlines() if "| kdlab" in line)
    ratio = float(kdlab_row.split("|")[6])
    assert ratio == pytest.approx(rows[0]["batches_per_s"] / rows[1]["batches_per_s"], rel=0.06)


def test_bench_rejects_an_unknown_case():
    proc = subprocess.run(
        [sys.executable, "-m", "kdlab.bench", "--cases", "mnist1d/nope"], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "unknown case(s) mnist1d/nope; known:" in proc.stderr
