"""raven_hpc.report.integrity / summary: the exactly-once, step, epoch, audit and rollback checks, on
synthetic ledgers (no MPI, no training)."""
from __future__ import annotations

import json

import pytest

from raven_hpc.report import ledger_summary, run_report, summarize_ledger

from tests.unit.report.ledgers import (Ledger, Run, audited, complete_run, integ, make_run_dir, rollback_run,
                                       row, scenario)


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
