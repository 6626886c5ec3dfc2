"""`raven-hpc report` and `raven-hpc drain` as a user runs them, on synthetic
run directories (no MPI, no training)."""
from __future__ import annotations

import json

import pytest

from tests.conftest import raven_cmd, run
from tests.unit.report.ledgers import FAST, Ledger, Run, complete_run, rollback_run, scenario, tree_run

TIMEOUT = 60


def make_run(path, ledger: Ledger | None = None, tail: str = "", drain_file: str | None = None, steps: int = 25):
    path.mkdir(parents=True, exist_ok=True)
    (path / "summary.json").write_text(json.dumps({
        "final_test_accuracy": 0.9412, "epochs": 2, "steps": steps, "samples_per_s": 51234.5, "ranks": 4,
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
    assert res.returncode == 3, res.stderr + res.stdout     # the torn last line: INCOMPLETE
    out = res.stdout
    # the history, as before
    assert "final_test_accuracy    0.9412" in out and "94.12%" in out
    # the ledger: runs, notes on the killed run's lines, the table
    assert "truncated record skipped" in out and "resumed at step 18" in out
    assert any(ln.startswith("  run 1: ") and ln.endswith("no end record (killed, or its tail cut when run 2 resumed)")
               for ln in out.splitlines())
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
    assert ("integrity: INCOMPLETE -- the last line (160) is cut mid-record: the run was killed while writing it"
            in lines)
    assert "  first step without its records: 25" in lines
    assert "  checked: 25 steps, 75 grad tasks" in lines
    assert "  not counted: 8 tasks redone after a resume or rollback" in lines
    assert any(ln.startswith("  note: ledger without step records") for ln in lines)
    # the same ledger, whole
    rd = make_run(tmp_path / "whole", scenario())
    res = report(rd)
    assert res.returncode == 0, res.stderr + res.stdout
    assert "integrity: OK -- 25 steps, 75 grad tasks, each accepted exactly once" in res.stdout.splitlines()


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
    i = led["integrity"]
    assert (i["status"], i["first_missing_step"], i["problems"], i["steps"]) == ("OK", None, [], 25)
    assert led["ignored_events"] == {"heartbeat": 1}
    assert led["audits"]["count"] == 0 and led["rollbacks"] == [] and led["arbitrations"]["count"] == 0


def test_report_clean_run_and_violation(tmp_path):
    L = Ledger()
    L.run(0, ranks=3)
    for step in range(3):
        L.copy(step, 2 * step, 1, "accepted", compute=FAST)
        L.copy(step, 2 * step + 1, 2, "accepted", compute=FAST)
    L.rec(ev="end", step=3, t=1.0, status="finished")
    rd = make_run(tmp_path / "clean", L, steps=3)
    res = report(rd)
    assert res.returncode == 0, res.stderr
    assert "suspect nodes: none" in res.stdout.splitlines()
    assert "integrity: OK -- 3 steps, 6 grad tasks, each accepted exactly once" in res.stdout.splitlines()
    L.copy(1, 2, 2, "accepted", compute=FAST)
    rd = make_run(tmp_path / "twice", L, steps=3)
    res = report(rd)
    assert res.returncode == 1, res.stderr
    lines = res.stdout.splitlines()
    assert ("integrity: FAILED -- 1 of 6 grad tasks not accepted exactly once (first: run 1 step 1 task 2: "
            "accepted 2 times)") in lines
    assert "  run 1 step 1 task 2: accepted 2 times" in lines


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


def test_report_shows_audits_rollbacks_and_the_status_line(tmp_path):
    L = rollback_run()
    L.lines.insert(1, json.dumps({"ev": "strike", "step": 0, "rank": 1, "host": "n1", "strikes": 1,
                                  "reason": "disagreed with the quorum"}))    # cleared by the audit at step 6
    L.rec(ev="arbitrated", step=7, rank=0, host="n0", reason="task 40 of step 7 computed by the master")
    L.rec(ev="checkpoint", step=8, path="/runs/x/checkpoint.h5")
    rd = make_run(tmp_path / "run", L, steps=8)
    res = report(rd)
    assert res.returncode == 0, res.stderr + res.stdout
    lines = res.stdout.splitlines()
    assert "ignored" not in res.stdout
    assert "audits: 2 (1 failed)" in lines
    assert ("  failed: task 10 (step 3, audited at step 6): ranks 2, 3 found wrong; voided: the rollback at "
            "step 6 goes back to step 3") in lines
    assert "rollbacks: 1" in lines
    assert "  run 1: at step 6 back to step 3, guilty ranks 2, 3: audit of task failed" in lines
    assert any(ln.startswith("  0 backups, ") and ln.endswith(", 1 arbitration, 1 checkpoint") for ln in lines)
    assert lines[-2:] == ["integrity: OK -- 8 steps, 24 grad tasks, every snippet of 2 epochs counted once; "
                          "2 audits (1 failed), 1 rollback",
                          "  not counted: 13 tasks redone after a resume or rollback"]
    assert ("  rank 1 (n1, active): 1 strike: disagreed with the quorum at step 0; 1 strike cleared by audits at "
            "step 6") in lines
    assert any(ln.startswith("  0 backups, ") and "1 strike (1 cleared by audits)" in ln for ln in lines)


def test_report_exit_status_and_json_follow_the_integrity(tmp_path):
    # OK
    rd = make_run(tmp_path / "ok", complete_run(), steps=8)
    assert report(rd).returncode == 0
    # FAILED: records of steps 3-4 gone
    L = complete_run()
    L.lines = [x for x in L.lines if json.loads(x).get("step") not in (3, 4)]
    rd = make_run(tmp_path / "gap", L, steps=8)
    res = report(rd)
    assert res.returncode == 1, res.stderr
    assert "integrity: FAILED -- steps 3-4 missing (records of steps 5-7 present)" in res.stdout.splitlines()
    assert "  first step without its records: 3" in res.stdout.splitlines()
    res = report(rd, "--json")
    assert res.returncode == 1
    i = json.loads(res.stdout)["ledger"]["integrity"]
    assert i["status"] == "FAILED" and i["ok"] is False and i["first_missing_step"] == 3
    assert i["problems"][0] == "steps 3-4 missing (records of steps 5-7 present)"
    # INCOMPLETE: the ledger ends at step 5, summary.json says 8
    L = Run()
    L.run(0)
    L.steps(0, 6)
    rd = make_run(tmp_path / "cut", L, steps=8)
    res = report(rd)
    assert res.returncode == 3, res.stderr
    assert "integrity: INCOMPLETE -- no records from step 6 on (summary.json says 8 steps)" in res.stdout.splitlines()
    res = report(rd, "--json")
    assert res.returncode == 3
    i = json.loads(res.stdout)["ledger"]["integrity"]
    assert (i["status"], i["first_missing_step"]) == ("INCOMPLETE", 6)
    # still running (no summary.json yet)
    (rd / "summary.json").unlink()
    res = report(rd)
    assert res.returncode == 3
    assert ("integrity: INCOMPLETE -- the run has not finished (or was killed) at step 6 of 8: no end record"
            in res.stdout.splitlines())


def test_report_help_tells_the_exit_status():
    res = run(raven_cmd() + ["report", "--help"], timeout=TIMEOUT)
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    assert "exit status: 0 integrity OK (or no ledger), 1 FAILED" in text and "3 INCOMPLETE" in text


def test_report_merges_the_collectors_ledgers(tmp_path):
    """A run with collectors: their workers' rows, a worker a collector
    excluded among the suspects (naming it), and a wrong group sum: FAILED,
    naming the collector and the step."""
    T = tree_run()
    T.groups[1].event("exclude", 3, 2, "proven wrong by a trusted audit")
    rd = make_run(tmp_path / "tree", T.root, steps=4)
    T.write(rd)
    res = report(rd)
    assert res.returncode == 0, res.stderr + res.stdout
    lines = res.stdout.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.split()[:3] == ["rank", "host", "status"])
    assert [r.split()[:3] for r in lines[head + 2:head + 8]] == [
        ["1", "n1", "active"], ["2", "n2", "excluded"], ["3", "n3", "active"],
        ["4", "n4", "active"], ["5", "n5", "active"], ["6", "n6", "active"]]
    assert "  rank 2 (n2, excluded): excluded at step 3 by collector 1 (proven wrong by a trusted audit)" in lines
    assert any(ln.startswith("integrity: OK -- 4 steps, 8 grad tasks") for ln in lines)
    doc = json.loads(report(rd, "--json").stdout)["ledger"]
    assert [(g["rank"], g["children"], g["checked_sums"]) for g in doc["collectors"]] == [(1, [2, 3], 4),
                                                                                         (4, [5, 6], 4)]
    assert doc["integrity"]["collectors"]["checked_sums"] == 8
    assert [(d["rank"], d["role"], d["leader"], d["copies"]) for d in doc["ranks"]] == [
        (1, "collector", 0, 4), (2, "worker", 1, 4), (3, "worker", 1, 4), (4, "collector", 0, 4), (5, "worker", 4, 4),
        (6, "worker", 4, 4)]
    # collector 4 counts a sub-task it never accepted
    g4 = T.groups[4]
    k = next(i for i, x in enumerate(g4.lines) if json.loads(x).get("ev") == "group_sum" and json.loads(x)["step"] == 2)
    g4.lines[k] = json.dumps({**json.loads(g4.lines[k]), "subs": [5, 9]})
    T.write(rd)
    res = report(rd)
    assert res.returncode == 1, res.stderr + res.stdout
    assert ("integrity: FAILED -- collector 4 step 2: its sum for task 5 counts sub-task 9, which it never accepted"
            in res.stdout.splitlines())
    res = report(rd, "--json")
    assert res.returncode == 1
    i = json.loads(res.stdout)["ledger"]["integrity"]
    assert i["status"] == "FAILED" and i["collectors"]["problems"] == 1


# ------------------------------------------------------------------- --plots --
def test_report_plots_out_and_json(tmp_path):
    """--out DIR (implies --plots) with --json: the JSON document alone on stdout, the plots line on stderr."""
    pytest.importorskip("matplotlib")
    rd = make_run(tmp_path / "run", scenario())
    res = report(rd, "--out", tmp_path / "figs", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["ledger"]["integrity"]["ok"]
    # (matplotlib may say it builds its font cache first, the first time it runs)
    assert res.stderr.strip().splitlines()[-1] == (f"plots: {tmp_path / 'figs' / 'report.html'} (5 figures, also as "
                                                   "PNG files beside it)")
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == [
        "curves.png", "optimizer.png", "ranks.png", "report.html", "throughput.png", "timeline.png"]
    assert not (rd / "report").exists()
    res = report(rd, "--plots")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == (f"plots: {rd / 'report' / 'report.html'} (5 figures, also as PNG files "
                                           "beside it)")
    assert "integrity: OK" in res.stdout


def test_report_plots_of_a_real_run_match_its_ledger(tmp_path, small_h5):
    """A real 4-rank run (redundancy 2, quorum 2; rank 3 returns wrong gradients from step 2 and is
    excluded, rank 2 is 4x slower): what --plots draws is what the ledger and metrics.jsonl hold."""
    pytest.importorskip("matplotlib")
    import collections

    import numpy as np

    from raven_hpc.report.plotdata import collect
    from raven_hpc.report.plots import draw_curves, draw_throughput, draw_timeline
    from tests.conftest import mpiexec_cmd, write_config
    from tests.unit.report.test_plots import copies_of, expected_fate

    cfg = write_config(tmp_path / "c.toml", small_h5, epochs=2, task_snippets=1)
    rd = tmp_path / "run"
    res = run(mpiexec_cmd(4) + raven_cmd() + [
        "train", str(cfg), "--run-dir", str(rd), "--set", "poc.redundancy=2", "--set", "poc.quorum=2",
        "--set", 'faults.rules=[{rank = 3, mode = "scale", factor = -1.0, from_step = 2}, '
                 '{rank = 2, mode = "slow", factor = 4.0}]'], timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    res = report(rd, "--plots")
    assert res.returncode == 0, res.stdout + res.stderr
    assert {p.name for p in (rd / "report").iterdir()} == {
        "curves.png", "optimizer.png", "ranks.png", "report.html", "throughput.png", "timeline.png"}
    records = [json.loads(x) for x in (rd / "ledger.jsonl").read_text().splitlines()]
    metrics = [json.loads(x) for x in (rd / "metrics.jsonl").read_text().splitlines()]
    pd = collect(rd)
    # the timeline: one bar per copy, per rank and fate as many as the ledger has
    copies = copies_of(rd / "ledger.jsonl")
    want = collections.Counter((c["rank"], expected_fate(c)) for c in copies)
    fig = draw_timeline(pd)
    drawn = collections.Counter()
    for pc in fig.axes[0].collections:
        for path in pc.get_paths():
            drawn[(pd.timeline["rows"][int(round(path.vertices[:, 1].mean()))], pc.fate)] += 1
    assert drawn == want and want[(3, "rejected")] >= 1
    # the loss curve: the step lines of metrics.jsonl
    steps = [m for m in metrics if m["event"] == "step"]
    line = draw_curves(pd).axes[0].lines[0]
    assert list(zip(line.get_xdata(), line.get_ydata())) == [(m["step"], m["loss"]) for m in steps]
    np.testing.assert_allclose(pd.metrics["steps"]["time"], [m["wall_s"] for m in steps])
    # the exclusion of rank 3, marked where the ledger has it
    excl = [r for r in records if r["ev"] == "exclude"]
    assert [e["rank"] for e in excl] == [3]
    ax = draw_throughput(pd).axes[0]
    marks = [ln for ln in ax.lines if ln.get_linestyle() == ":"]
    assert len(marks) == 1 and [t.get_text() for t in ax.texts] == ["3"]
    # per rank: the share of accepted snippets, the credits
    acc = collections.Counter()
    for c in copies:
        if c["state"] == "accepted" and c["kind"] == "grad":
            acc[c["rank"]] += len(c["snippets"])
    assert pd.ranks["share"] == [acc[r] / sum(acc.values()) for r in pd.ranks["ranks"]]
    assert pd.ranks["credited"] == [sum(c["credited"] for c in copies if c["rank"] == r) for r in pd.ranks["ranks"]]
    page = (rd / "report" / "report.html").read_text()
    assert "Suspect nodes" in page and any(s["rank"] == 3 for s in pd.report["ledger"]["suspects"])
