"""raven_hpc.report.ledger / summary: reading the ledger, the per-rank rows, suspects, run_report and the
streaming speed, on synthetic ledgers (no MPI, no training)."""
from __future__ import annotations

import json
import time

import pytest

from raven_hpc.errors import RavenError
from raven_hpc.report import (
    iter_ledger,
    ledger_summary,
    read_history,
    read_ledger,
    run_report,
    summarize_ledger,
)

from tests.unit.report.ledgers import FAST, Ledger, Run, rollback_run, row


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
