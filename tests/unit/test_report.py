"""raven_hpc.report: the ledger summary, the exactly-once check, suspects and
the drain file, on synthetic ledgers (no MPI, no training)."""
from __future__ import annotations

import json
import os
import time

import pytest

from raven_hpc.errors import RavenError
from raven_hpc.report import (
    drain_path,
    iter_ledger,
    ledger_summary,
    parse_drain,
    parse_ranks,
    read_drain,
    read_history,
    read_ledger,
    run_report,
    summarize_ledger,
    update_drain,
)

HOSTS = {"0": "n0", "1": "n1", "2": "n2", "3": "n3"}
FAST, SLOW = 0.004, 0.016      # compute_s of 128 samples: rank 3 is 4x slower


class Ledger:
    """Builds ledger.jsonl lines the way the master writes them."""

    def __init__(self):
        self.lines: list[str] = []
        self.t = 0.0

    def rec(self, **kw) -> None:
        self.lines.append(json.dumps(kw))

    def run(self, start, ranks=4, resumed=False, hosts=None) -> None:
        self.t = 0.0
        self.rec(ev="run", unix_time=1.7e9 + start, start_step=start, resumed=resumed, ranks=ranks,
                 hosts=hosts or HOSTS, poc={"redundancy": 2, "quorum": 1})

    def copy(self, step, task, rank, state, *, compute=None, samples=128, latency=0.05, backup=False,
             verified=False, agreed=None, credited=None, kind="grad", reason="", snippets=None) -> None:
        if compute is None and state not in ("lost", "skipped"):
            compute = SLOW if rank == 3 else FAST
        if credited is None:
            credited = state in ("accepted", "duplicate")
        self.t += 0.01
        snippets = [2 * task, 2 * task + 1] if snippets is None else snippets
        self.rec(ev="copy", step=step, task=task, kind=kind, snippets=snippets, samples=samples,
                 rank=rank, host=HOSTS.get(str(rank), f"n{rank}"), assigned=round(self.t, 4),
                 finished=round(self.t + latency, 4), compute_s=compute, latency_s=latency, state=state,
                 backup=backup, verified=verified, agreed=agreed, credited=credited, reason=reason)

    def event(self, ev, step, rank, reason="", **kw) -> None:
        self.rec(ev=ev, step=step, rank=rank, host=HOSTS.get(str(rank), f"n{rank}"), reason=reason, **kw)

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)

    def write(self, path, tail: str = ""):
        path.write_text(self.text() + tail)
        return path


def scenario() -> Ledger:
    """Two runs: run 1 (4 ranks) is killed during step 20 and leaves a partial
    line; run 2 resumes from the checkpoint at step 18 and finishes step 24.

    * every task has 2 copies (accepted + duplicate) on ranks 1..3; rank 3 is 4x slower;
    * rank 2 disagrees with the quorum at steps 14, 15, 16 (3 strikes) and is excluded at step 16;
    * one backup (step 5), one late copy (step 7), one skipped copy (step 9);
    * rank 1 is drained at step 18 (its copy is lost) and undrained at step 19;
    * in run 2 rank 3 is lost at step 22 (hung) with a lost copy.
    """
    L = Ledger()
    L.run(0)
    for step in range(20):
        for k in range(3):
            task = 3 * step + k
            if step < 14:
                a, b = 1 + k, 1 + (k + 1) % 3
            else:
                a, b = (1, 3) if k != 2 else (3, 1)
            if step == 18:
                L.copy(step, task, 3, "accepted")
                if k == 0:
                    L.copy(step, task, 1, "lost", reason="drained")
                continue
            L.copy(step, task, a, "accepted", verified=True, agreed=True)
            L.copy(step, task, b, "duplicate", verified=True, agreed=True)
            if step in (14, 15, 16) and k == 1:
                L.copy(step, task, 2, "rejected", verified=True, agreed=False, credited=False,
                       reason="disagreed with the quorum")
        if step in (14, 15, 16):
            L.event("strike", step, 2, "disagreed with the quorum (fingerprint off by 3.1e+01 x tolerance)",
                    strikes=step - 13)
        if step == 16:
            L.event("exclude", step, 2, "3 strikes")
        if step == 5:
            L.copy(step, 3 * step, 2, "duplicate", backup=True, verified=True, agreed=True, credited=True)
        if step == 7:
            L.copy(step, 3 * step + 1, 3, "late", credited=False)
        if step == 9:
            L.copy(step, 3 * step + 2, 1, "skipped", credited=False)
        if step == 18:
            L.event("drain", step, 1, "listed in RUN_DIR/drain")
        if step == 19:
            L.event("undrain", step, 1, "readmitted by the operator")
    # step 20 in flight when run 1 is killed
    L.copy(20, 60, 1, "accepted")
    L.copy(20, 61, 3, "lost", reason="run stopped")
    L.rec(ev="heartbeat", t=3.0)                       # a record kind this reader does not know
    L.lines.append('{"ev": "copy", "step": 20, "task": 62, "ki')   # killed mid-line ...
    L.lines[-1] += json.dumps({"ev": "run", "unix_time": 1.7e9 + 100, "start_step": 18, "resumed": True,
                               "ranks": 4, "hosts": HOSTS, "poc": {}})  # ... and run 2 appended to it
    for step in range(18, 25):
        for k in range(3):
            task = 3 * step + k
            r = 1 + k
            if step >= 22 and r == 3:
                r = 1
            L.copy(step, task, r, "accepted")
        if step == 22:
            L.copy(step, 3 * step + 2, 3, "lost", latency=60.0, reason="worker lost")
            L.event("lost", step, 3, "no result for 60.0 s (hung)")
    L.rec(ev="end", step=25, t=12.3, status="finished")
    return L


def row(summary, rank):
    return next(r for r in summary["ranks"] if r["rank"] == rank)


@pytest.fixture()
def ledger_file(tmp_path):
    return scenario().write(tmp_path / "ledger.jsonl", tail='{"ev": "copy", "step": 2')


# ------------------------------------------------------------------ reading --
def test_read_ledger_skips_truncated_last_line_and_salvages_glued_record(ledger_file):
    records, warnings = read_ledger(ledger_file)
    assert sum(r["ev"] == "run" for r in records) == 2          # run 2's record survived the glued line
    assert any("truncated record skipped" in w and "(the last)" in w for w in warnings)
    assert any("followed by a whole one" in w for w in warnings)
    assert len(warnings) == 2


def test_bad_middle_lines_are_named(tmp_path):
    p = tmp_path / "l.jsonl"
    p.write_text('{"ev": "run", "start_step": 0}\nnot json\n[1, 2]\n\n{"no_ev": 1}\n'
                 '{"ev": "end", "status": "finished"}\n')
    records, warnings = read_ledger(p)
    assert [r["ev"] for r in records] == ["run", "end"]
    assert [w.split(":")[0] for w in warnings] == ["ledger line 2", "ledger line 3", "ledger line 5"]


def test_unknown_events_are_ignored_and_counted(ledger_file):
    s = summarize_ledger(ledger_file)
    assert s["ignored_events"] == {"heartbeat": 1}


# -------------------------------------------------------------- per-rank rows --
def test_rank_rows_count_every_copy_state(ledger_file):
    s = summarize_ledger(ledger_file)
    records, _ = read_ledger(ledger_file)
    copies = [r for r in records if r["ev"] == "copy"]
    assert [r["rank"] for r in s["ranks"]] == [1, 2, 3]           # the master computed nothing: no row
    for d in s["ranks"]:
        mine = [c for c in copies if c["rank"] == d["rank"]]
        by = lambda st: sum(c["state"] == st for c in mine)  # noqa: E731
        assert d["copies"] == len(mine)
        assert d["accepted"] == by("accepted")
        assert d["duplicates"] == by("duplicate")
        assert d["late"] == by("late") and d["rejected"] == by("rejected")
        assert d["lost"] == by("lost") and d["skipped"] == by("skipped")
        assert d["returned"] == d["accepted"] + d["duplicates"] + d["late"] + d["rejected"]
        assert d["credited"] == sum(bool(c["credited"]) for c in mine)
        assert d["backups"] == sum(c["backup"] for c in mine)
        assert d["copies"] == d["returned"] + d["lost"] + d["skipped"]
    t = s["totals"]
    assert t["copies"] == len(copies)
    assert t["late"] == 1 and t["skipped"] == 1 and t["backups"] == 1 and t["rejected"] == 3
    assert t["lost"] == 3 and t["disagreed"] == 3 and t["strikes"] == 3 and t["runs"] == 2
    assert row(s, 2)["backups"] == 1 and row(s, 3)["late"] == 1 and row(s, 1)["skipped"] == 1


def test_medians_and_relative_compute(ledger_file):
    s = summarize_ledger(ledger_file)
    fast_ms = 1000 * FAST / 128
    assert row(s, 1)["compute_ms_per_sample"] == pytest.approx(fast_ms)
    assert row(s, 3)["compute_ms_per_sample"] == pytest.approx(4 * fast_ms)
    assert row(s, 1)["relative_compute"] == pytest.approx(1.0)
    assert row(s, 3)["relative_compute"] == pytest.approx(4.0)
    # lost copies (60 s) do not count in the latency median
    assert row(s, 3)["median_latency_s"] == pytest.approx(0.05)


def test_status_follows_the_last_membership_event_and_resets_on_resume():
    L = Ledger()
    L.run(0)
    L.copy(0, 0, 1, "accepted")
    L.copy(0, 1, 2, "accepted")
    L.copy(0, 2, 3, "accepted")
    L.event("exclude", 1, 1, "3 strikes")
    L.event("drain", 1, 2, "listed in RUN_DIR/drain")
    L.event("lost", 1, 3, "process failed (ULFM)")
    s = ledger_summary(json.loads(x) for x in L.lines)
    assert [row(s, r)["status"] for r in (1, 2, 3)] == ["excluded", "drained", "lost"]
    L.event("readmit", 2, 1, "probation after 100 steps")
    L.event("undrain", 2, 2, "readmitted by the operator")
    s = ledger_summary(json.loads(x) for x in L.lines)
    assert [row(s, r)["status"] for r in (1, 2, 3)] == ["active", "active", "lost"]
    L.run(2, resumed=True)
    s = ledger_summary(json.loads(x) for x in L.lines)
    assert [row(s, r)["status"] for r in (1, 2, 3)] == ["active", "active", "active"]


def test_scenario_status_and_hosts(ledger_file):
    s = summarize_ledger(ledger_file)
    assert row(s, 1)["status"] == "active"     # drained then undrained
    assert row(s, 2)["status"] == "active"     # excluded in run 1; run 2 started it afresh
    assert row(s, 3)["status"] == "lost"
    assert row(s, 2)["host"] == "n2" and row(s, 2)["hosts"] == ["n2"]
    assert row(s, 2)["strikes"] == 3


def test_idle_worker_gets_a_row_and_master_only_when_it_computes():
    L = Ledger()
    L.run(0, ranks=3, hosts={"0": "m", "1": "a", "2": "b"})
    L.copy(0, 0, 1, "accepted")
    s = ledger_summary(json.loads(x) for x in L.lines)
    assert [d["rank"] for d in s["ranks"]] == [1, 2]
    assert row(s, 2)["copies"] == 0 and row(s, 2)["host"] == "b" and row(s, 2)["median_latency_s"] is None
    L.copy(1, 1, 0, "accepted")
    s = ledger_summary(json.loads(x) for x in L.lines)
    assert [d["rank"] for d in s["ranks"]] == [0, 1, 2]


# ---------------------------------------------------------------- suspects --
def test_suspects_with_reasons_in_words(ledger_file):
    s = summarize_ledger(ledger_file)
    sus = {x["rank"]: x for x in s["suspects"]}
    assert set(sus) == {2, 3}
    assert "; ".join(sus[2]["reasons"]) == ("3 strikes: disagreed with the quorum at steps 14, 15, 16; "
                                            "excluded at step 16")
    assert sus[3]["reasons"] == ["lost at step 22: no result for 60.0 s (hung)",
                                 "slow: 4.0x the median compute time per sample"]
    assert sus[3]["status"] == "lost"


def test_clean_ledger_has_no_suspects_and_readmission_is_told():
    L = Ledger()
    L.run(0, ranks=3)
    for step in range(4):
        L.copy(step, 2 * step, 1, "accepted", compute=FAST)
        L.copy(step, 2 * step + 1, 2, "accepted", compute=FAST * 1.5)
    L.rec(ev="end", step=4, t=1.0, status="finished")
    s = ledger_summary(json.loads(x) for x in L.lines)
    assert s["suspects"] == []
    L.event("strike", 4, 2, "non-finite result", strikes=1)
    L.event("exclude", 4, 2, "bad gradients")
    L.event("readmit", 9, 2, "probation after 5 steps")
    s = ledger_summary(json.loads(x) for x in L.lines)
    assert s["suspects"][0]["reasons"] == ["1 strike: non-finite result at step 4",
                                           "excluded at step 4 (bad gradients)",
                                           "readmitted at step 9 (probation after 5 steps)"]


def test_one_slow_rank_of_two_stands_out():
    L = Ledger()
    L.run(0, ranks=3)
    for step in range(3):
        L.copy(step, 2 * step, 1, "accepted", compute=FAST)
        L.copy(step, 2 * step + 1, 2, "accepted", compute=FAST * 3)
    s = ledger_summary(json.loads(x) for x in L.lines)
    assert [x["rank"] for x in s["suspects"]] == [2]
    assert s["suspects"][0]["reasons"] == ["slow: 3.0x the median compute time per sample"]


def test_many_strike_steps_are_abbreviated():
    L = Ledger()
    L.run(0, ranks=2)
    for step in range(15):
        L.event("strike", step, 1, f"non-finite result (nan at {step})", strikes=step + 1)
    s = ledger_summary(json.loads(x) for x in L.lines)
    assert s["suspects"][0]["reasons"] == [
        "15 strikes: non-finite result at steps 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 5 more"]


# ------------------------------------------------------------ exactly once --
def test_exactly_once_over_a_resumed_run(ledger_file, tmp_path):
    s = summarize_ledger(ledger_file)
    i = s["integrity"]
    assert i["violation_count"] == 0 and i["violations"] == []
    # the fixture's last line is cut: the ledger is not complete
    assert i["status"] == "INCOMPLETE" and not i["ok"] and i["first_missing_step"] == 25
    assert i["problems"] == ["the last line (160) is cut mid-record: the run was killed while writing it"]
    assert i["steps"] == 25 and i["limited"]      # steps derived from the accepted copies
    whole = summarize_ledger(scenario().write(tmp_path / "whole.jsonl"))["integrity"]
    assert whole["status"] == "OK" and whole["ok"] and whole["problems"] == [] and whole["first_missing_step"] is None
    # run 1: steps 0..17 closed (run 2 resumed at 18); run 2: steps 18..24, finished
    assert i["checked_tasks"] == 18 * 3 + 7 * 3
    assert i["checked_steps"] == 25
    assert i["redone_tasks"] == 3 + 3 + 2     # run 1's steps 18, 19 and the open step 20
    assert i["open_tasks"] == 0
    assert s["totals"]["steps"] == 25 and s["totals"]["tasks"] == 75
    assert [r["start_step"] for r in s["runs"]] == [0, 18]
    assert s["runs"][0]["end"] is None and s["runs"][1]["end"]["status"] == "finished"


def test_exactly_once_violations_are_reported():
    L = Ledger()
    L.run(0, ranks=3)
    for step in range(3):
        for k in range(2):
            L.copy(step, 2 * step + k, 1 + k, "accepted")
    L.copy(0, 0, 2, "accepted")                                  # applied twice
    L.copy(1, 9, 2, "rejected", credited=False)                  # closed step, never accepted
    for r in (1, 2, 1, 2):
        L.copy(2, 4, r, "duplicate", credited=True)              # 5 credited copies
    L.copy(0, 7, 1, "accepted", kind="eval")                     # eval tasks are not checked
    L.copy(0, 7, 2, "accepted", kind="eval")
    L.rec(ev="end", step=3, t=1.0, status="finished")
    s = ledger_summary(json.loads(x) for x in L.lines)
    i = s["integrity"]
    assert not i["ok"] and i["violation_count"] == 3
    probs = {(v["step"], v["task"]): v["problem"] for v in i["violations"]}
    assert probs == {(0, 0): "accepted 2 times", (1, 9): "never accepted",
                     (2, 4): "5 copies credited (at most 3)"}
    assert s["totals"]["other_kinds"] == {"eval": 2}


def test_open_step_of_a_stopped_run_is_not_a_violation():
    L = Ledger()
    L.run(0, ranks=3)
    for step in range(3):
        L.copy(step, 2 * step, 1, "accepted")
        L.copy(step, 2 * step + 1, 2, "accepted")
    L.copy(3, 6, 1, "accepted")
    L.copy(3, 7, 2, "lost")                                      # step 3 was in flight
    L.rec(ev="end", step=3, t=1.0, status="interrupted")          # 3 steps done, step 3 open
    s = ledger_summary(json.loads(x) for x in L.lines)
    i = s["integrity"]
    assert i["violation_count"] == 0 and i["open_tasks"] == 2 and i["checked_tasks"] == 6
    assert s["totals"]["steps"] == 3
    assert i["status"] == "INCOMPLETE" and i["first_missing_step"] == 3
    assert i["problems"] == ["the run was interrupted at step 3 (end record): --resume continues it"]
    # killed (no end record): the last step with an accepted copy is taken as open
    s = ledger_summary(json.loads(x) for x in L.lines[:-1])
    assert s["integrity"]["violation_count"] == 0 and s["integrity"]["open_tasks"] == 2
    assert s["integrity"]["problems"] == ["the run has not finished (or was killed) at step 3: no end record"]
    # had the run finished, task 7 would have been dropped: a violation
    L.lines[-1] = json.dumps({"ev": "end", "step": 4, "t": 1.0, "status": "finished"})
    s = ledger_summary(json.loads(x) for x in L.lines)
    assert s["integrity"]["status"] == "FAILED" and s["integrity"]["violations"][0]["task"] == 7
    # a task accepted twice is a violation even in an open step
    L.lines[-1] = json.dumps({"ev": "end", "step": 3, "t": 1.0, "status": "failed"})
    L.copy(3, 6, 2, "accepted")
    s = ledger_summary(json.loads(x) for x in L.lines)
    assert s["integrity"]["violation_count"] == 1
    assert s["integrity"]["violations"][0]["problem"] == "accepted 2 times"


def test_a_step_skipped_in_the_middle_is_found():
    L = Ledger()
    L.run(0, ranks=3)
    for step in range(4):
        L.copy(step, 2 * step, 1, "accepted")
        L.copy(step, 2 * step + 1, 2, "lost" if step == 1 else "accepted")
    s = ledger_summary(json.loads(x) for x in L.lines)            # killed: step 3 open, step 1 closed
    assert s["integrity"]["violations"] == [{"run": 0, "step": 1, "task": 3, "accepted": 0, "credited": 0,
                                             "problem": "never accepted"}]


def test_records_before_a_run_record_and_malformed_copies():
    recs = [{"ev": "copy", "step": 0, "task": 0, "rank": 1, "state": "accepted", "samples": 4, "compute_s": 0.1},
            {"ev": "copy", "step": 0, "task": 1, "rank": "x", "state": "accepted"},
            {"ev": "copy", "step": 0, "task": 2, "rank": 1, "state": "exploded"}]
    s = ledger_summary(recs)
    assert row(s, 1)["accepted"] == 1 and row(s, 1)["compute_ms_per_sample"] == pytest.approx(25.0)
    assert any("2 ledger record(s)" in w for w in s["warnings"])
    assert s["integrity"]["open_tasks"] == 1          # no end record: its only step counts as open


def test_empty_ledger(tmp_path):
    p = tmp_path / "ledger.jsonl"
    p.write_text("")
    s = summarize_ledger(p)
    assert s["ranks"] == [] and s["suspects"] == [] and s["totals"]["copies"] == 0
    assert s["integrity"]["status"] == "FAILED" and not s["integrity"]["ok"]
    assert s["integrity"]["problems"] == ["the ledger is empty: no records"]


def test_streaming_is_fast_enough(tmp_path):
    """Summarizing costs a small multiple of just parsing the JSON lines,
    so a million lines take seconds, not minutes."""
    one = json.dumps({"ev": "copy", "step": 0, "task": 0, "kind": "grad", "snippets": [1, 2, 3, 4],
                      "samples": 128, "rank": 1, "host": "node-017", "assigned": 10.52, "finished": 10.61,
                      "compute_s": 0.0043, "latency_s": 0.09, "state": "accepted", "backup": False,
                      "verified": True, "agreed": True, "credited": True, "reason": ""})
    head, tail = one.split('"step": 0, "task": 0')
    ranks, n = 16, 100_000
    path = tmp_path / "ledger.jsonl"
    with open(path, "w") as fh:
        fh.write(json.dumps({"ev": "run", "unix_time": 1.7e9, "start_step": 0, "resumed": False,
                             "ranks": ranks + 1, "hosts": {}}) + "\n")
        for i in range(n):
            line = f'{head}"step": {i // 64}, "task": {i}{tail}'
            fh.write(line.replace('"rank": 1,', f'"rank": {1 + i % ranks},') + "\n")
        fh.write(json.dumps({"ev": "end", "step": n // 64 + 1, "t": 100.0, "status": "finished"}) + "\n")
    t0 = time.process_time()
    with open(path) as fh:
        for line in fh:
            json.loads(line)
    t_json = time.process_time() - t0
    t0 = time.process_time()
    s = summarize_ledger(path)
    t_sum = time.process_time() - t0
    assert s["totals"]["copies"] == n and s["integrity"]["ok"]
    assert s["integrity"]["checked_tasks"] == n and s["totals"]["steps"] == (n + 63) // 64
    assert len(s["ranks"]) == ranks
    assert t_sum < 4 * t_json + 0.5 and t_sum < 30, f"{t_sum:.2f} s (json.loads alone: {t_json:.2f} s)"


# --------------------------------------------------------------- run_report --
def test_run_report_history_and_ledger(tmp_path, ledger_file):
    run = tmp_path
    (run / "summary.json").write_text(json.dumps({"final_test_accuracy": 0.9, "steps": 25, "history": [1]}))
    (run / "metrics.jsonl").write_text(json.dumps({"event": "step", "step": 1}) + "\n"
                                       + json.dumps({"event": "epoch", "epoch": 1, "step": 25}) + "\n"
                                       + '{"event": "ep')
    rep = run_report(run)
    assert rep["summary"] == {"final_test_accuracy": 0.9, "steps": 25}
    assert [e["epoch"] for e in rep["epochs"]] == [1]
    assert len(rep["history_warnings"]) == 1
    i = rep["ledger"]["integrity"]
    assert i["violation_count"] == 0 and i["status"] == "INCOMPLETE"      # the fixture's torn last line
    assert i["summary_steps"] == 25 and i["checkpoint_step"] is None
    json.dumps(rep)   # one JSON document


def test_run_report_errors(tmp_path):
    with pytest.raises(RavenError, match="no run directory"):
        run_report(tmp_path / "nope")
    with pytest.raises(RavenError, match="is it a raven-hpc run directory"):
        run_report(tmp_path)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"event": "epoch", "epoch": 1, "step": 3}) + "\n")
    rep = run_report(tmp_path)
    assert rep["ledger"] is None and rep["ledger_path"] is None
    assert read_history(tmp_path)["summary"] == {}


def test_iter_ledger_streams(ledger_file):
    it = iter_ledger(ledger_file)
    assert next(it)["ev"] == "run"


# -------------------------------------------------------------------- drain --
def test_drain_path_from_config(tmp_path):
    assert drain_path(tmp_path) == tmp_path / "drain"
    (tmp_path / "config.toml").write_text('[poc]\ndrain_file = "/somewhere/else/drain"\n')
    assert str(drain_path(tmp_path)) == "/somewhere/else/drain"
    (tmp_path / "config.toml").write_text('[poc]\ndrain_file = "ops/drain.txt"\n')
    assert drain_path(tmp_path) == tmp_path / "ops" / "drain.txt"
    (tmp_path / "config.toml").write_text('[poc]\ndrain_file = "{run}/d"\n')
    assert drain_path(tmp_path) == tmp_path / "d"
    (tmp_path / "config.toml").write_text('[train]\nepochs = 1\n')
    assert drain_path(tmp_path) == tmp_path / "drain"


def test_update_drain_adds_removes_atomically(tmp_path, monkeypatch):
    calls = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append((a, b)), real(a, b)))
    res = update_drain(tmp_path, [3, 1])
    assert res["changed"] == [1, 3] and res["ranks"] == [1, 3]
    assert (tmp_path / "drain").read_text() == "1\n3\n"
    assert len(calls) == 1 and os.path.dirname(calls[0][0]) == str(tmp_path)
    res = update_drain(tmp_path, [3, 5])
    assert res["changed"] == [5] and res["unchanged"] == [3] and read_drain(tmp_path / "drain") == [1, 3, 5]
    res = update_drain(tmp_path, [1, 7], undo=True)
    assert res["changed"] == [1] and res["unchanged"] == [7]
    assert (tmp_path / "drain").read_text() == "3\n5\n"
    update_drain(tmp_path, [3, 5], undo=True)
    assert (tmp_path / "drain").read_text() == "" and read_drain(tmp_path / "drain") == []
    assert [p.name for p in tmp_path.iterdir()] == ["drain"]      # no temp files left


def test_update_drain_keeps_comments_and_refuses_garbage(tmp_path):
    (tmp_path / "drain").write_text("# bad node, ticket 42\n2\n")
    update_drain(tmp_path, [4])
    assert (tmp_path / "drain").read_text() == "# bad node, ticket 42\n2\n4\n"
    (tmp_path / "drain").write_text("2\nnode7\n")
    with pytest.raises(RavenError, match="not a rank"):
        update_drain(tmp_path, [4])
    assert (tmp_path / "drain").read_text() == "2\nnode7\n"
    with pytest.raises(RavenError, match="no run directory"):
        update_drain(tmp_path / "nope", [1])


def test_update_drain_uses_the_configured_file(tmp_path):
    (tmp_path / "ops").mkdir()
    (tmp_path / "config.toml").write_text(f'[poc]\ndrain_file = "{tmp_path}/ops/drain"\n')
    res = update_drain(tmp_path, [2])
    assert res["path"] == str(tmp_path / "ops" / "drain") and (tmp_path / "ops" / "drain").read_text() == "2\n"
    (tmp_path / "config.toml").write_text('[poc]\ndrain_file = "missing/dir/drain"\n')
    with pytest.raises(RavenError, match="does not exist"):
        update_drain(tmp_path, [2])


def test_parse_ranks_and_drain_text():
    assert parse_ranks(["3", "1", "3"]) == [1, 3]
    for bad in (["0"], ["-1"], ["x"], ["1.5"], []):
        with pytest.raises(RavenError):
            parse_ranks(bad)
    assert parse_drain("1\n\n# c\n2 3 # note\n4,5\n") == ([1, 2, 3, 4, 5], [])
    assert parse_drain("1\nzero\n0\n")[1] == ["zero", "0"]


def test_snippets_are_counted_per_rank_for_chunks():
    """A chunk is one copy holding several snippets: the rank rows count the
    snippets in returned and in accepted grad copies."""
    from raven_hpc.report import ledger_summary

    led = Ledger()
    led.run(0, ranks=3)
    led.copy(0, 1, 1, "accepted")
    led.rec(**{**json.loads(led.lines[-1]), "snippets": [0, 1, 2, 3, 4, 5, 6]})   # a 7-snippet chunk
    led.lines.pop(-2)
    led.copy(0, 8, 2, "accepted")                          # 2 snippets
    led.copy(0, 8, 1, "duplicate")                         # a backup's copy of it
    led.copy(0, 9, 2, "lost")                              # never returned: not counted
    s = ledger_summary(json.loads(x) for x in led.lines)
    assert (row(s, 1)["snippets"], row(s, 1)["snippets_accepted"]) == (9, 7)
    assert (row(s, 2)["snippets"], row(s, 2)["snippets_accepted"]) == (2, 2)


# ------------------------------------------------- ledgers with step records --
class Run(Ledger):
    """Ledger lines in the format with a plan in the run record and a step
    record after each applied step.  A step has ``tasks`` grad tasks of
    ``per_task`` snippets (accepted on one rank, a duplicate on another); an
    epoch's ``steps_per_epoch`` steps cover every snippet of
    range(train_snippets) once, in an order that depends on the epoch."""

    def __init__(self, tasks=3, per_task=2, steps_per_epoch=4, epochs=2, max_steps=0):
        super().__init__()
        self.tasks, self.per_task, self.spe, self.epochs, self.max_steps = (tasks, per_task, steps_per_epoch,
                                                                          epochs, max_steps)
        self.n = tasks * per_task * steps_per_epoch
        self.next_task = 0

    def run(self, start, ranks=4, resumed=None, hosts=None) -> None:
        self.t = 0.0
        self.rec(ev="run", unix_time=1.7e9 + start, start_step=start, resumed=start > 0 if resumed is None else resumed,
                 ranks=ranks, hosts=hosts or HOSTS, poc={"redundancy": 2}, faults=[], train_snippets=self.n,
                 steps_per_epoch=self.spe, epochs=self.epochs, max_steps=self.max_steps)

    def ids(self, step, k) -> list[int]:
        e, i = divmod(step, self.spe)
        base = (i * self.tasks + k) * self.per_task
        return [(base + j + 5 * e) % self.n for j in range(self.per_task)]

    def step(self, s, *, record=True, snippets=None) -> list[int]:
        """Step ``s``: its copies and its record; ``snippets`` {k: ids}
        replaces the ids of task k.  Returns the task ids."""
        tids = []
        total = 0
        for k in range(self.tasks):
            task = self.next_task
            self.next_task += 1
            tids.append(task)
            ids = (snippets or {}).get(k, self.ids(s, k))
            total += len(ids)
            self.copy(s, task, 1 + k % 3, "accepted", snippets=ids, verified=True, agreed=True)
            self.copy(s, task, 1 + (k + 1) % 3, "duplicate", snippets=ids, verified=True, agreed=True)
        if record:
            e, i = divmod(s, self.spe)
            self.rec(ev="step", step=s, epoch=e, step_in_epoch=i + 1, tasks=self.tasks, snippets=total,
                     samples=total * 32, t=round(self.t, 3))
        return tids

    def steps(self, a, b) -> None:
        for s in range(a, b):
            self.step(s)

    def end(self, step, status="finished") -> None:
        self.rec(ev="end", step=step, t=round(self.t, 3), status=status)


def integ(L: Ledger) -> dict:
    return ledger_summary(json.loads(x) for x in L.lines)["integrity"]


def complete_run(**kw) -> Run:
    L = Run(**kw)
    L.run(0)
    L.steps(0, 8)
    L.end(8)
    return L


def test_a_complete_run_with_step_records_is_ok():
    L = complete_run()
    s = ledger_summary(json.loads(x) for x in L.lines)
    i = s["integrity"]
    assert i["status"] == "OK" and i["ok"] and i["problems"] == [] and i["notes"] == []
    assert i["first_missing_step"] is None and i["steps"] == 8 and i["first_step"] == 0 and i["last_step"] == 7
    assert i["epochs"] == {"complete": 2, "counted_once": 2, "in_progress": [], "checked": True}
    assert i["checked_tasks"] == 24 and not i["limited"]
    assert s["ignored_events"] == {}


def test_a_gap_in_the_middle_fails_with_the_first_missing_step():
    L = complete_run()
    L.lines = [x for x in L.lines if json.loads(x).get("step") not in (3, 4)]
    i = integ(L)
    assert i["status"] == "FAILED" and not i["ok"] and i["first_missing_step"] == 3
    assert i["problems"][0] == "steps 3-4 missing (records of steps 5-7 present)"
    # the epochs miss the snippets of those steps too
    assert any(p.startswith("epoch 0: 6 of 24 snippets never counted") for p in i["problems"])


def test_a_gap_in_an_old_ledger_without_step_records_fails():
    """The ledger of a run killed and resumed in another job whose records of
    steps 5-7 were lost: every task it has was accepted once, but steps are
    missing in the middle."""
    L = Ledger()
    L.run(0, ranks=3)
    for step in range(10):
        if step not in (5, 6, 7):
            L.copy(step, 2 * step, 1, "accepted")
            L.copy(step, 2 * step + 1, 2, "accepted")
    L.rec(ev="end", step=10, t=1.0, status="finished")
    i = integ(L)
    assert i["violation_count"] == 0
    assert i["status"] == "FAILED" and i["first_missing_step"] == 5
    assert i["problems"] == ["steps 5-7 missing (records of steps 8-9 present)"]
    assert i["limited"] and i["notes"][0].startswith("ledger without step records")


def test_a_resume_past_the_last_recorded_step_leaves_a_gap():
    L = Run()
    L.run(0)
    L.steps(0, 3)
    L.end(3, "interrupted")
    L.run(5)                      # steps 3 and 4 were applied (the checkpoint is at 5): their records are gone
    L.steps(5, 8)
    L.end(8)
    i = integ(L)
    assert i["status"] == "FAILED" and i["first_missing_step"] == 3
    assert i["problems"][0] == "steps 3-4 missing (run 2 starts at step 5; records of steps 5-7 present)"


def test_the_end_record_past_the_last_step_record_is_a_gap():
    L = complete_run()
    L.lines = [x for x in L.lines if json.loads(x).get("step") != 7 or json.loads(x)["ev"] == "end"]
    i = integ(L)
    assert i["status"] == "FAILED" and i["first_missing_step"] == 7
    assert i["problems"][0] == "step 7 missing (the end record says the run stopped at step 8)"


def test_a_killed_run_is_incomplete_at_the_step_in_flight():
    L = Run()
    L.run(0)
    L.steps(0, 6)
    L.step(6, record=False)       # in flight when killed
    i = integ(L)
    assert i["status"] == "INCOMPLETE" and not i["ok"] and i["first_missing_step"] == 6
    assert i["problems"] == ["the run has not finished (or was killed) at step 6 of 8: no end record"]
    assert i["open_tasks"] == 3 and i["violation_count"] == 0
    assert i["epochs"]["complete"] == 1 and i["epochs"]["in_progress"] == [1]


def test_an_interrupted_run_is_incomplete():
    L = Run()
    L.run(0)
    L.steps(0, 5)
    L.end(5, "interrupted")
    i = integ(L)
    assert i["status"] == "INCOMPLETE" and i["first_missing_step"] == 5
    assert i["problems"] == ["the run was interrupted at step 5 of 8 (end record): --resume continues it"]


def test_a_run_stopped_by_max_steps_inside_an_epoch_is_ok():
    L = Run(max_steps=6)
    L.run(0)
    L.steps(0, 6)
    L.end(6)
    i = integ(L)
    assert i["status"] == "OK", i["problems"]
    assert i["epochs"] == {"complete": 1, "counted_once": 1, "in_progress": [1], "checked": True}


def make_run_dir(path, L: Ledger, summary_steps=None, checkpoint_step=None, tail=""):
    path.mkdir(parents=True, exist_ok=True)
    L.write(path / "ledger.jsonl", tail=tail)
    if summary_steps is not None:
        (path / "summary.json").write_text(json.dumps({"steps": summary_steps, "history": []}))
    if checkpoint_step is not None:
        import h5py

        with h5py.File(path / "checkpoint.h5", "w") as f:
            f.attrs["train_state"] = json.dumps({"epoch": 1, "step_in_epoch": 0, "step": checkpoint_step,
                                                 "samples": 0, "history": []})
    return path


def test_a_ledger_cut_short_of_summary_json_is_incomplete(tmp_path):
    """The run finished (summary.json: 8 steps) but its ledger ends after step 5."""
    L = complete_run()
    full = list(L.lines)
    cut = next(n for n, x in enumerate(full) if json.loads(x).get("step") == 6)
    L.lines = full[:cut]
    i = run_report(make_run_dir(tmp_path / "a", L, summary_steps=8))["ledger"]["integrity"]
    assert i["status"] == "INCOMPLETE" and i["first_missing_step"] == 6
    assert i["problems"] == ["no records from step 6 on (summary.json says 8 steps)"]
    # the whole ledger agrees with summary.json
    L.lines = full
    i = run_report(make_run_dir(tmp_path / "b", L, summary_steps=8))["ledger"]["integrity"]
    assert i["status"] == "OK" and i["summary_steps"] == 8


def test_a_ledger_behind_the_checkpoint_is_incomplete(tmp_path):
    pytest.importorskip("h5py")
    L = complete_run()
    i = run_report(make_run_dir(tmp_path / "a", L, summary_steps=8, checkpoint_step=8))["ledger"]["integrity"]
    assert i["status"] == "OK" and i["checkpoint_step"] == 8
    # an ended ledger whose tail is gone is checked against the checkpoint too
    L = Run()
    L.run(0)
    L.steps(0, 4)
    L.end(4, "finished")
    i = run_report(make_run_dir(tmp_path / "b", L, checkpoint_step=6))["ledger"]["integrity"]
    assert i["status"] == "INCOMPLETE" and i["first_missing_step"] == 4
    assert i["problems"] == ["no records from step 4 on (checkpoint.h5 says 6 steps)"]
    i = run_report(make_run_dir(tmp_path / "c", L, summary_steps=6, checkpoint_step=6))["ledger"]["integrity"]
    assert i["problems"] == ["no records from step 4 on (summary.json and checkpoint.h5 say 6 steps)"]
    i = run_report(make_run_dir(tmp_path / "d", L, summary_steps=8, checkpoint_step=6))["ledger"]["integrity"]
    assert i["problems"] == ["no records from step 4 on (summary.json says 8 steps; checkpoint.h5 says 6 steps)"]


def test_a_failed_ledger_stays_failed_when_also_behind_summary_json(tmp_path):
    L = complete_run()
    L.lines = [x for x in L.lines if json.loads(x).get("step") not in (2,) and json.loads(x)["ev"] != "end"]
    i = run_report(make_run_dir(tmp_path / "a", L, summary_steps=10))["ledger"]["integrity"]
    assert i["status"] == "FAILED" and i["first_missing_step"] == 2
    assert i["problems"][0] == "step 2 missing (records of steps 3-7 present)"
    assert i["problems"][i["failures"]] == "no records from step 8 on (summary.json says 10 steps)"


@pytest.mark.parametrize("kind", ["empty", "random", "cut", "garbled", "damaged"])
def test_unreadable_ledgers_are_not_ok(tmp_path, kind):
    import random

    p = tmp_path / "ledger.jsonl"
    text = complete_run().text()
    if kind == "empty":
        p.write_bytes(b"")
        want = ("FAILED", "the ledger is empty: no records")
    elif kind == "random":
        p.write_bytes(random.Random(1).randbytes(5000))
        want = ("FAILED", "the ledger holds no records: none of its")
    elif kind == "cut":
        p.write_text(text[:len(text) // 2 + 7])
        want = ("INCOMPLETE", "the last line (")
    elif kind == "garbled":
        lines = text.splitlines()
        p.write_text("\n".join(x if n % 3 == 0 else x[::-1] for n, x in enumerate(lines)) + "\n")
        want = ("FAILED", "the ledger is garbled: ")
    else:
        lines = text.splitlines()
        lines[10] = lines[10][:25] + "\x00\x00" + lines[10][25:]
        p.write_text("\n".join(lines) + "\n")
        want = ("FAILED", "the ledger is damaged: line 11 in the middle is not a JSON record")
    i = summarize_ledger(p)["integrity"]
    assert i["status"] == want[0] and not i["ok"]
    assert any(x.startswith(want[1]) for x in i["problems"]), i["problems"]
    if kind == "cut":
        assert any(x.endswith("is cut mid-record: the run was killed while writing it") for x in i["problems"])
        assert "the run has not finished (or was killed) at step 3 of 8: no end record" in i["problems"]


def test_a_snippet_counted_twice_in_an_epoch_fails():
    L = Run()
    L.run(0)
    L.steps(0, 2)
    dup = L.ids(0, 1)                    # step 2's task 0 holds the snippets of step 0's task 1
    L.step(2, snippets={0: dup})
    L.steps(3, 8)
    L.end(8)
    i = integ(L)
    assert i["status"] == "FAILED" and i["violation_count"] == 0
    assert f"epoch 0: snippet {dup[0]} counted 2 times (steps 0, 2)" in i["problems"]
    missing = L.ids(2, 0)
    assert (f"epoch 0: 2 of 24 snippets never counted (ids {missing[0]}, {missing[1]})" in i["problems"])
    assert i["epochs"]["counted_once"] == 1


def test_a_snippet_counted_twice_in_the_epoch_in_progress_fails():
    L = Run()
    L.run(0)
    L.steps(0, 5)
    L.step(5, snippets={2: L.ids(4, 0)})
    i = integ(L)
    assert i["status"] == "FAILED"
    assert f"epoch 1: snippet {L.ids(4, 0)[0]} counted 2 times (steps 4, 5)" in i["problems"]


def test_a_completed_epoch_missing_a_snippet_fails():
    L = Run()
    L.run(0)
    L.steps(0, 5)
    short = L.ids(5, 1)[:1]               # a task of step 5 holds one snippet of its two
    L.step(5, snippets={1: short})
    L.steps(6, 8)
    L.end(8)
    i = integ(L)
    assert i["status"] == "FAILED" and i["first_missing_step"] is None
    assert i["problems"] == [f"epoch 1: 1 of 24 snippet never counted (id {L.ids(5, 1)[1]})"]


def test_snippet_ids_outside_the_training_split_fail():
    L = Run()
    L.run(0)
    L.step(0, snippets={0: [0, 999]})
    L.steps(1, 8)
    L.end(8)
    assert "epoch 0: snippet id 999 at step 0 is not one of the training split's 0-23" in integ(L)["problems"]


def test_step_records_must_match_their_copies_and_come_in_order():
    L = complete_run()
    n = next(k for k, x in enumerate(L.lines) if json.loads(x).get("ev") == "step" and json.loads(x)["step"] == 2)
    rec = json.loads(L.lines[n])
    L.lines[n] = json.dumps({**rec, "tasks": 4, "snippets": 5})
    i = integ(L)
    assert i["status"] == "FAILED" and i["first_missing_step"] == 2
    assert i["problems"] == ["step 2: its record counts 4 grad tasks, the ledger has 3 accepted grad copies of it",
                             "step 2: its record counts 5 snippets, its accepted grad copies hold 6"]
    # the records of steps 2 and 3 swapped
    L = complete_run()
    idx = [k for k, x in enumerate(L.lines) if json.loads(x).get("ev") == "step"]
    L.lines[idx[2]], L.lines[idx[3]] = L.lines[idx[3]], L.lines[idx[2]]
    i = integ(L)
    assert i["status"] == "FAILED"
    assert "step 2: a step record after the one of step 3 (out of order)" in i["problems"]
    # an accepted copy after its step's record
    L = complete_run()
    L.lines.insert(idx[4] + 1, L.lines[idx[4] - 1].replace('"duplicate"', '"accepted"'))
    i = integ(L)
    assert i["status"] == "FAILED"
    assert any(p.startswith("step 4: task 14 accepted after the step's record") for p in i["problems"])


def test_accepted_copies_without_a_step_record_fail():
    L = complete_run()
    L.lines = [x for x in L.lines if not (json.loads(x)["ev"] == "step" and json.loads(x)["step"] == 6)]
    i = integ(L)
    assert i["status"] == "FAILED" and i["first_missing_step"] == 6
    assert i["problems"][0] == "step 6 missing (records of step 7 present)"
    assert "step 6: 3 accepted grad copies but no step record" in i["problems"]


# ------------------------------------------------- audits and rollbacks --
def audited(L: Run, step, task, ok, ranks) -> None:
    L.rec(ev="audit", step=step, task=task, rank=0, host="n0", ok=ok, ranks=ranks,
          reason=f"task {task}: " + ("agrees" if ok else "wrong"))


def rollback_run(with_rollback=True, to_step=3, at_step=6) -> Run:
    """Steps 0-5 applied; during step 6 the audit of a task of step 3 fails:
    back to step ``to_step``, the steps from there redone, the run finishes at 8."""
    L = Run()
    L.run(0)
    tids = {}
    for s in range(0, at_step):
        tids[s] = L.step(s)
    audited(L, 4, tids[3][0], True, [1, 2])
    L.step(at_step, record=False)                 # in flight
    audited(L, at_step, tids[3][1], False, [2, 3])
    L.event("exclude", at_step, 2, "proven wrong by a trusted audit")
    L.event("exonerate", at_step, 1, "1 strike cleared: an audit proved rank 2 wrong", strikes=0)
    if with_rollback:
        L.rec(ev="rollback", step=at_step, to_step=to_step, guilty=[2, 3], reason="audit of task failed",
              checkpoint=None)
        L.copy(at_step, tids[at_step - 1][0] + 3, 3, "late", reason="rolled back")   # a copy the rollback dropped
    L.steps(to_step, 8)
    L.end(8)
    return L


def test_a_rollback_voids_the_steps_it_redoes():
    s = ledger_summary(json.loads(x) for x in rollback_run().lines)
    i = s["integrity"]
    assert i["status"] == "OK", i["problems"]
    assert i["steps"] == 8 and i["epochs"]["counted_once"] == 2 and i["rollbacks"] == 1
    assert i["audits"] == 2 and i["failed_audits"] == 1
    assert i["redone_tasks"] == 3 * 3 + 3 + 1       # steps 3-5, the step in flight, the dropped copy
    assert s["rollbacks"] == [{"step": 6, "to_step": 3, "guilty": [2, 3], "reason": "audit of task failed",
                               "checkpoint": None, "run": 0}]
    fa = s["audits"]["failed_audits"]
    assert s["audits"]["count"] == 2 and len(fa) == 1
    assert fa[0]["task_step"] == 3 and fa[0]["ranks"] == [2, 3] and fa[0]["step"] == 6
    assert fa[0]["voided_by"] == "the rollback at step 6 goes back to step 3"
    # the same records without the rollback: steps 3-5 twice, snippets twice, the wrong result stands
    i = integ(rollback_run(with_rollback=False))
    assert i["status"] == "FAILED"
    assert "step 3: a step record after the one of step 5 (out of order)" in i["problems"]
    assert ("the audit of task 10 (step 3) found ranks 2, 3 wrong, but no rollback to step 3 or earlier follows: "
            "the wrong result stands") in i["problems"]


def test_a_rollback_into_a_closed_epoch_reopens_it():
    # epoch 0 is steps 0-3: the rollback from step 6 to 2 reopens it
    assert integ(rollback_run(to_step=2))["status"] == "OK"
    # the redone step 2 counts other snippets than it should: epoch 0 is wrong
    L = rollback_run(to_step=2)
    n = max(k for k, x in enumerate(L.lines) if json.loads(x).get("ev") == "rollback")
    redo = [k for k, x in enumerate(L.lines) if k > n and json.loads(x).get("step") == 2
            and json.loads(x)["ev"] == "copy"]
    for k in redo[:2]:                      # task 0 of the redone step 2 holds task 0 of step 0's snippets
        rec = json.loads(L.lines[k])
        L.lines[k] = json.dumps({**rec, "snippets": L.ids(0, 0)})
    i = integ(L)
    assert i["status"] == "FAILED"
    assert i["problems"] == ["epoch 0: the snippets its steps before 2 counted (before a rollback or resume) and "
                             "those of the redone steps are not every snippet once (24 counted, 24 snippets)"]


def test_a_rollback_of_the_current_step():
    """A failed audit before the step is applied: the step is redone (K == S)."""
    L = Run()
    L.run(0)
    L.steps(0, 4)
    tids = L.step(4, record=False)
    audited(L, 4, tids[2], False, [3])
    L.rec(ev="rollback", step=4, to_step=4, guilty=[3], reason="audit failed", checkpoint=None)
    L.steps(4, 8)
    L.end(8)
    i = integ(L)
    assert i["status"] == "OK", i["problems"]
    assert i["redone_tasks"] == 3
    # without the rollback record step 4's copies are accepted twice
    L.lines = [x for x in L.lines if json.loads(x)["ev"] != "rollback"]
    i = integ(L)
    assert i["status"] == "FAILED"
    assert i["problems"][0].startswith("step 4: its record counts 3 grad tasks, the ledger has 6 accepted")


def test_rollbacks_and_audits_must_agree():
    L = Run()
    L.run(0)
    L.steps(0, 4)
    L.rec(ev="rollback", step=4, to_step=5, guilty=[2], reason="?", checkpoint=None)
    L.steps(5, 8)
    L.end(8)
    i = integ(L)
    assert i["status"] == "FAILED"
    assert "the rollback at step 4 goes forward, to step 5" in i["problems"]
    assert ("the rollback at step 4 names rank 2 guilty, but no failed audit before it proved it wrong, nor was it "
            "excluded") in i["problems"]
    # ranks excluded by their strikes: the results only they vouched for are undone
    L = Run()
    L.run(0)
    L.steps(0, 4)
    L.event("exclude", 4, 3, "3 strikes")
    L.rec(ev="rollback", step=4, to_step=2, guilty=[3], reason="rank 3 excluded: the results only it vouched for "
          "since step 2 are undone", checkpoint="/runs/x/checkpoints/step-000000002.h5")
    L.steps(2, 8)
    L.end(8)
    assert integ(L)["status"] == "OK"
    # an audit of a task the ledger never accepted
    L = complete_run()
    audited(L, 8, 999, True, [1])
    assert integ(L)["problems"] == ["the audit at step 8 of task 999: no accepted copy of that task before it "
                                    "(since the last resume or rollback)"]
    # a failed audit the killed run had no time to roll back: incomplete, not failed
    L = Run()
    L.run(0)
    tids = L.step(0)
    L.steps(1, 3)
    audited(L, 3, tids[0], False, [1])
    i = integ(L)
    assert i["status"] == "INCOMPLETE"
    assert ("the audit of task 0 (step 0) found rank 1 wrong, but no rollback to step 0 or earlier follows "
            "(the run stopped first)") in i["problems"]
    # ... and a resume to a checkpoint before that step voids the wrong result
    L.run(0, resumed=True)
    L.next_task = 0
    L.steps(0, 8)
    L.end(8)
    assert integ(L)["status"] == "OK"


def test_every_record_kind_the_master_writes_is_read():
    L = rollback_run()
    L.rec(ev="arbitrated", step=7, rank=0, host="n0", reason="task 40 of step 7 computed by the master")
    L.rec(ev="checkpoint", step=8, path="/runs/x/checkpoint.h5")
    L.event("strike", 2, 1, "disagreed with the quorum")
    L.rec(ev="heartbeat", t=1.0)
    s = ledger_summary(json.loads(x) for x in L.lines)
    assert s["ignored_events"] == {"heartbeat": 1}
    kinds = {json.loads(x)["ev"] for x in L.lines} - {"heartbeat"}
    from raven_hpc.report import KNOWN_KINDS

    assert kinds <= set(KNOWN_KINDS)
    assert {"run", "copy", "step", "audit", "rollback", "exonerate", "exclude", "arbitrated", "checkpoint",
            "end", "strike"} <= kinds
    assert s["arbitrations"]["count"] == 1 and s["arbitrations"]["first"][0]["step"] == 7
    assert s["checkpoints"] == {"count": 1, "last": {"step": 8, "path": "/runs/x/checkpoint.h5"}}


def test_exonerated_strikes_are_cleared_in_the_rank_row():
    L = Run()
    L.run(0)
    L.steps(0, 2)
    for n, step in enumerate((0, 1, 1), 1):
        L.event("strike", step, 3, "disagreed with the quorum (off by 5x)", strikes=n)
    L.event("exonerate", 2, 3, "2 strikes cleared: an audit proved rank 1 wrong", strikes=1)
    s = ledger_summary(json.loads(x) for x in L.lines)
    r3 = row(s, 3)
    assert r3["strikes"] == 1 and r3["strikes_cleared"] == 2 and len(r3["strike_events"]) == 3
    assert r3["exonerations"] == [{"step": 2, "cleared": 2, "reason": "2 strikes cleared: an audit proved rank 1 "
                                                                      "wrong"}]
    sus = next(x for x in s["suspects"] if x["rank"] == 3)
    assert sus["reasons"][:2] == ["3 strikes: disagreed with the quorum at steps 0, 1",
                                  "2 strikes cleared by audits at step 2"]
    assert s["totals"]["strikes"] == 3 and s["totals"]["strikes_cleared"] == 2


def test_read_history_drops_metrics_lines_a_rollback_voids(tmp_path):
    lines = [{"event": "step", "step": 2, "epoch": 0, "loss": 1.0},
             {"event": "epoch", "epoch": 1, "step": 4, "loss": 0.9},
             {"event": "step", "step": 6, "epoch": 1, "loss": 0.8},
             {"event": "epoch", "epoch": 2, "step": 8, "loss": 0.7},        # voided: redone after step 5
             {"event": "rollback", "step": 9, "to_step": 5},
             {"event": "step", "step": 6, "epoch": 1, "loss": 0.75},
             {"event": "epoch", "epoch": 2, "step": 8, "loss": 0.6}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    h = read_history(tmp_path)
    assert [(e["epoch"], e["loss"]) for e in h["epochs"]] == [(1, 0.9), (2, 0.6)]
    assert h["rollbacks"] == [{"event": "rollback", "step": 9, "to_step": 5}]
    # a rollback to an epoch's last step keeps that epoch
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines[:2] + [
        {"event": "rollback", "step": 6, "to_step": 4}]))
    assert [e["epoch"] for e in read_history(tmp_path)["epochs"]] == [1]


def test_streaming_with_step_records_is_fast_enough(tmp_path):
    """The step-record format adds per-snippet work; a ledger of them still
    costs a small multiple of parsing its JSON lines."""
    L = Run(tasks=64, per_task=4, steps_per_epoch=50, epochs=8)
    L.run(0)
    L.steps(0, 400)                    # 51,200 copies, 400 step records, 8 epochs of 12,800 snippets
    L.end(400)
    path = L.write(tmp_path / "ledger.jsonl")
    t0 = time.process_time()
    with open(path) as fh:
        for line in fh:
            json.loads(line)
    t_json = time.process_time() - t0
    t0 = time.process_time()
    s = summarize_ledger(path)
    t_sum = time.process_time() - t0
    assert s["integrity"]["status"] == "OK", s["integrity"]["problems"]
    assert s["integrity"]["epochs"]["counted_once"] == 8
    assert t_sum < 4 * t_json + 0.5 and t_sum < 30, f"{t_sum:.2f} s (json.loads alone: {t_json:.2f} s)"
