"""`raven-hpc report` and `raven-hpc drain` as a user runs them, on synthetic
run directories (no MPI, no training)."""
from __future__ import annotations

import json

import pytest

from tests.conftest import raven_cmd, run
from tests.unit.test_report import FAST, Ledger, scenario

TIMEOUT = 60


def make_run(path, ledger: Ledger | None = None, tail: str = "", drain_file: str | None = None):
    path.mkdir(parents=True, exist_ok=True)
    (path / "summary.json").write_text(json.dumps({
        "final_test_accuracy": 0.9412, "epochs": 2, "steps": 25, "samples_per_s": 51234.5, "ranks": 4,
        "workers": 3, "wall_s": 12.3, "master_cpu_s": 3.1, "master_cpu_fraction": 0.25, "history": []}))
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in (
        {"event": "step", "step": 5, "epoch": 0, "loss": 0.9, "samples": 640, "wall_s": 1.0},
        {"event": "epoch", "epoch": 1, "step": 12, "loss": 0.41, "test_accuracy": 0.91, "wall_s": 6.0},
        {"event": "epoch", "epoch": 2, "step": 25, "loss": 0.22, "test_accuracy": 0.9412, "wall_s": 12.3})))
    (path / "config.toml").write_text(f'[train]\nepochs = 2\n\n[poc]\ndrain_file = "{drain_file or path / "drain"}"\n')
    if ledger is not None:
        ledger.write(path / "ledger.jsonl", tail=tail)
    return path


def report(run_dir, *extra):
    return run(raven_cmd() + ["report", str(run_dir), *extra], timeout=TIMEOUT)


def drain(*args):
    return run(raven_cmd() + ["drain", *map(str, args)], timeout=TIMEOUT)


def test_report_prints_history_rank_table_suspects_and_integrity(tmp_path):
    rd = make_run(tmp_path / "run", scenario(), tail='{"ev": "copy", "step": 2')
    res = report(rd)
    assert res.returncode == 0, res.stderr + res.stdout
    out = res.stdout
    # the history, as before
    assert "final_test_accuracy    0.9412" in out and "94.12%" in out
    # the ledger: runs, notes on the killed run's lines, the table
    assert "truncated record skipped" in out and "resumed at step 18" in out
    lines = out.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.split()[:3] == ["rank", "host", "status"])
    rule = lines[head + 1]
    assert set(rule.strip()) == {"-", " "}
    rows = lines[head + 2:head + 5]
    assert [r.split()[:3] for r in rows] == [["1", "n1", "active"], ["2", "n2", "active"], ["3", "n3", "lost"]]
    assert lines[head + 5] == rule
    # right-aligned numbers end under their header
    end = lines[head].index("copies") + len("copies")
    assert all(r[end - 1] != " " and (len(r) == end or r[end] == " ") for r in rows)
    assert rows[2].rstrip().endswith("4.00x")
    # suspects in words, then the exactly-once line
    assert ("  rank 2 (n2, active): 3 strikes: disagreed with the quorum at steps 14, 15, 16; excluded at step 16"
            in lines)
    assert ("  rank 3 (n3, lost): lost at step 22: no result for 60.0 s (hung); "
            "slow: 4.0x the median compute time per sample") in lines
    assert any(ln.startswith("integrity: ok, each of the 75 grad tasks of 25 steps was accepted exactly once")
               for ln in lines)


def test_report_json_is_one_document(tmp_path):
    rd = make_run(tmp_path / "run", scenario())
    res = report(rd, "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["summary"]["final_test_accuracy"] == 0.9412 and "history" not in doc["summary"]
    assert [e["epoch"] for e in doc["epochs"]] == [1, 2]
    led = doc["ledger"]
    assert [r["rank"] for r in led["ranks"]] == [1, 2, 3]
    assert [s["rank"] for s in led["suspects"]] == [2, 3]
    assert led["integrity"]["ok"] and led["totals"]["tasks"] == 75


def test_report_clean_run_and_violation(tmp_path):
    L = Ledger()
    L.run(0, ranks=3)
    for step in range(3):
        L.copy(step, 2 * step, 1, "accepted", compute=FAST)
        L.copy(step, 2 * step + 1, 2, "accepted", compute=FAST)
    L.rec(ev="end", step=3, t=1.0, status="finished")
    rd = make_run(tmp_path / "clean", L)
    res = report(rd)
    assert res.returncode == 0, res.stderr
    assert "suspect nodes: none" in res.stdout.splitlines()
    assert "integrity: ok, each of the 6 grad tasks of 3 steps was accepted exactly once" in res.stdout
    L.copy(1, 2, 2, "accepted", compute=FAST)
    rd = make_run(tmp_path / "twice", L)
    res = report(rd)
    assert res.returncode == 0, res.stderr
    assert "integrity: FAILED, 1 of 6 grad tasks were not accepted exactly once:" in res.stdout
    assert "  run 1 step 1 task 2: accepted 2 times" in res.stdout.splitlines()


def test_report_without_ledger_still_prints_history(tmp_path):
    rd = make_run(tmp_path / "old")
    res = report(rd)
    assert res.returncode == 0, res.stderr
    assert "final_test_accuracy" in res.stdout
    ledger_lines = [ln for ln in res.stdout.splitlines() if ln.startswith("ledger")]
    assert len(ledger_lines) == 1 and ledger_lines[0].startswith("ledger: none")
    assert "suspect nodes" not in res.stdout
    doc = json.loads(report(rd, "--json").stdout)
    assert doc["ledger"] is None and doc["epochs"]


def test_report_missing_run_dir_is_one_error_line(tmp_path):
    res = report(tmp_path / "nope")
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr.strip().splitlines() == [f"raven-hpc: error: no run directory at {tmp_path / 'nope'}"]


def test_drain_and_undo(tmp_path):
    rd = make_run(tmp_path / "run", drain_file=str(tmp_path / "ops-drain"))
    res = drain(rd, 3, 2)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "ops-drain").read_text() == "2\n3\n"
    assert "drained rank 2, 3" in res.stdout and str(tmp_path / "ops-drain") in res.stdout
    res = drain(rd, 2)
    assert res.returncode == 0 and "already listed" in res.stdout
    res = drain("--undo", rd, 2)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "ops-drain").read_text() == "3\n"
    assert "readmitted rank 2" in res.stdout and "drain file now: 3" in res.stdout
    assert not (rd / "drain").exists()
    assert f"drain file {tmp_path / 'ops-drain'} lists rank 3" in report(rd).stdout.splitlines()
    assert json.loads(report(rd, "--json").stdout)["drain"]["ranks"] == [3]


@pytest.mark.parametrize("rank", ["0", "x", "-1", "2.5"])
def test_drain_rejects_bad_ranks(tmp_path, rank):
    rd = make_run(tmp_path / "run")
    res = drain(rd, rank)
    assert res.returncode == 2
    assert res.stderr.startswith("raven-hpc: error: ") and "rank" in res.stderr
    assert not (rd / "drain").exists()


def test_drain_missing_run_dir(tmp_path):
    res = drain(tmp_path / "nope", 1)
    assert res.returncode == 2 and "no run directory" in res.stderr
