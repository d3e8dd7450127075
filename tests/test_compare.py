"""kdlab-compare: grouping, mean ± std, CSV, plots, corrupt files, markdown, W&B (mocked at HTTP)."""

import csv
import http.server
import json
import os
import statistics
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kdlab.report.compare import compare, find_results

BIN = Path(sys.executable).parent
ACC = {
    ("kd", 0): 0.70,
    ("kd", 1): 0.74,
    ("kd", 2): 0.72,
    ("none", 0): 0.64,
    ("none", 1): 0.66,
    ("none", 2): 0.68,
}


def fake_results(method: str, seed: int) -> dict:
    acc = ACC[(method, seed)]
    teacher = (
        None
        if method == "none"
        else {"arch": "cnn1d", "params": 5210, "test_acc": 0.938, "per_class_acc": [0.9 + 0.01 * c for c in range(10)]}
    )
    return {
        "task": "distill",
        "strategy": "offline",
        "method": method,
        "data": "mnist1d",
        "seed": seed,
        "teacher": teacher,
        "student": {"arch": "mlp", "params": 15210, "test_acc": acc, "per_class_acc": [acc] * 10},
        "fidelity": None if teacher is None else {"agreement": acc + 0.01, "kl": 0.9, "retained": acc / 0.938},
        "calibration": {"ece": 0.2},
        "efficiency": {"param_ratio": 2.9, "latency_ms": 0.1},
        "wall_s": 10.0,
        "overrides": [f"method={method}", f"seed={seed}"],
        "wandb": None,
    }


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "multirun"
    for i, (method, seed) in enumerate(ACC):
        (root / str(i)).mkdir(parents=True)
        (root / str(i) / "results.json").write_text(json.dumps(fake_results(method, seed)))
    (root / "broken").mkdir()
    (root / "broken" / "results.json").write_text('{"task": "distill", "student": ')  # truncated
    (root / "empty").mkdir()
    (root / "empty" / "results.json").write_text("[]")
    return root


def test_finds_every_results_file_and_skips_broken_ones(runs):
    found, skipped = find_results([runs])
    assert len(found) == 6
    assert sorted(p.parent.name for p, _ in skipped) == ["broken", "empty"]


def test_groups_give_mean_std_count_csv_and_pngs(runs, tmp_path, capsys):
    out = tmp_path / "report"
    rows = compare([str(runs), "--by", "method,strategy", "--out", str(out)])
    by_method = {r["method"]: r for r in rows}
    assert [r["method"] for r in rows] == ["kd", "none"]  # ranked by the metric
    assert by_method["kd"]["n"] == 3 and by_method["kd"]["seeds"] == "0,1,2"
    assert by_method["kd"]["student.test_acc_mean"] == pytest.approx(0.72)
    assert by_method["kd"]["student.test_acc_std"] == pytest.approx(statistics.stdev([0.70, 0.74, 0.72]))
    assert by_method["none"]["teacher.test_acc_mean"] is None
    assert by_method["kd"]["teacher.test_acc_mean"] == pytest.approx(0.938)
    printed = capsys.readouterr().out
    assert "skipped" in printed and "broken" in printed and "72.0 ± 2.0" in printed
    with open(out / "comparison.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["method"] for r in table] == ["kd", "none"]
    assert float(table[1]["student.test_acc_mean"]) == pytest.approx(0.66)
    for name in ("accuracy_vs_params.png", "accuracy_by_group.png", "per_class.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name


def test_markdown_table_for_papers(runs, tmp_path, capsys):
    compare([str(runs), "--by", "method", "--format", "markdown", "--out", str(tmp_path)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| method | n | student.test_acc |") and lines[1].startswith("|---|")
    assert lines[2].startswith("| kd | 3 | 72.0 ± 2.0 | 93.8 ± 0.0 |")


def test_every_accuracy_column_is_in_percent():
    from kdlab.report.compare import fmt

    assert fmt("student.test_acc_best_val", 0.952, 0.0072) == "95.2 ± 0.7"
    assert fmt("student.val_acc_best", 0.5, 0.0) == "50.0 ± 0.0"
    assert fmt("student.params", 15210.0, 0.0) == "15,210"


def test_nothing_to_compare_fails_clearly(tmp_path):
    p = subprocess.run([str(BIN / "kdlab-compare"), str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.strip() == f"kdlab-compare: error: no results.json found under {tmp_path}"


class FakeWandb(http.server.BaseHTTPRequestHandler):
    """Answers the W&B public API's GraphQL queries for one project with two kdlab runs."""

    def run_node(self, i: int, full: bool) -> dict:
        node = {
            "projectId": "1",
            "id": f"r{i}",
            "tags": ["strategy:offline", "data:mnist1d", "method:kd"],
            "name": f"run{i}",
            "displayName": f"run-{i}",
            "sweepName": None,
            "state": "finished",
            "group": None,
            "jobType": "distill",
            "commit": None,
            "readOnly": False,
            "createdAt": "2026-11-23T10:00:00",
            "heartbeatAt": "2026-11-23T10:01:00",
            "description": "",
            "notes": "",
            "historyLineCount": 3,
            "user": {"name": "me", "username": "me"},
        }
        if full:
            config = {
                "task": "distill",
                "seed": i,
                "method": {"name": "kd"},
                "student": {"arch": "mlp"},
                "teacher": {"arch": "cnn1d"},
            }
            summary = {
                "test/student_acc": 0.70 + 0.04 * i,
                "test/teacher_acc": 0.938,
                "params/student": 15210,
                "params/teacher": 5210,
                "fidelity/agreement": 0.73,
                "calibration/ece": 0.15,
            }
            node |= {
                "config": json.dumps({k: {"value": v} for k, v in config.items()}),
                "systemMetrics": "{}",
                "summaryMetrics": json.dumps(summary),
                "historyKeys": {"keys": {}, "lastStep": 0},
            }
        return node

    def do_POST(self):
        body = (
            json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if "graphql" in self.path
            else {}
        )
        query = body.get("query", "")
        if "query Runs" in query:
            edges = [{"node": self.run_node(i, False), "cursor": f"c{i}"} for i in range(2)]
            data = {
                "project": {
                    "internalId": "1",
                    "runCount": 2,
                    "readOnly": False,
                    "runs": {"edges": edges, "pageInfo": {"endCursor": "c1", "hasNextPage": False}},
                }
            }
        elif "query Run(" in query:
            data = {"project": {"run": self.run_node(int(body["variables"]["name"][-1]), True)}}
        elif "viewer" in query:
            data = {
                "viewer": {
                    "id": "u1",
                    "entity": "me",
                    "username": "me",
                    "email": "me@example.com",
                    "flags": "{}",
                    "teams": {"edges": []},
                }
            }
        else:
            data = {}
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"data": data}).encode())

    def log_message(self, *args):
        pass


def test_wandb_project_runs_fill_the_same_table(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeWandb)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        **os.environ,
        "WANDB_BASE_URL": f"http://127.0.0.1:{server.server_address[1]}",
        "WANDB_API_KEY": "k" * 40,
        "WANDB_MODE": "online",
    }
    try:
        p = subprocess.run(
            [
                str(BIN / "kdlab-compare"),
                "--wandb",
                "me/kdlab",
                "--by",
                "method",
                "--format",
                "markdown",
                "--out",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        server.shutdown()
    assert p.returncode == 0, p.stderr[-2000:]
    row = next(line for line in p.stdout.splitlines() if line.startswith("| kd |"))
    assert row.startswith("| kd | 2 | 72.0 ± 2.8 | 93.8 ± 0.0 |")
    assert (tmp_path / "comparison.csv").exists()
