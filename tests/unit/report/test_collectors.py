"""raven_hpc.report.collectors: the collectors' ledgers merged into the report (their workers' rows,
roles, suspects) and the group-sum check, on synthetic ledgers (no MPI, no training)."""
from __future__ import annotations

import json

import pytest

from raven_hpc.report import run_report, summarize_ledger
from raven_hpc.report.collectors import CLOCK_SLACK_S, find_group_ledgers

from tests.unit.report.ledgers import FAST, SLOW, SNIPPET, Tree, row, tree_run


def failed(T: Tree) -> list[str]:
    i = T.summary()["integrity"]
    assert i["status"] == "FAILED" and not i["ok"]
    return i["problems"]


def drop(g, ev, **match) -> None:
    """Remove the one record of kind ``ev`` whose fields match."""
    hits = [k for k, x in enumerate(g.lines)
            if json.loads(x)["ev"] == ev and all(json.loads(x).get(f) == v for f, v in match.items())]
    assert len(hits) == 1, hits
    del g.lines[hits[0]]


# ------------------------------------------------------------------ merge --
def test_workers_under_collectors_get_their_rows_from_the_collectors_ledgers():
    T = Tree()
    T.run(0)
    T.steps(0, 2)
    g1, g4 = T.groups[1], T.groups[4]
    # step 2: rank 2 hangs on its sub-task (a backup on rank 3 takes it), then rank 3 sends a non-finite
    # result and is struck; rank 6 is lost, rank 5 drained
    task = T.root.next_task
    T.root.next_task += 2
    ids = T.root.ids(2, 0)
    a = g1.sub(2, task, 3, snippets=ids[:1], latency=0.2)
    b = g1.sub(2, task, 3, snippets=ids[1:], backup=True)
    g1.sub(2, task, 2, "lost", snippets=ids[1:], task=b, latency=3.0, reason="worker lost")
    g1.event("lost", 2, 2, "no result for 3 s (hung)")
    g1.sum(2, task, [a, b])
    T.root.copy(2, task, 1, "accepted", snippets=ids, samples=2 * SNIPPET)
    g1.event("strike", 2, 3, "non-finite result (nan)", strikes=1)
    ids = T.root.ids(2, 1)
    g4.task(2, task + 1, ids)
    T.root.copy(2, task + 1, 4, "accepted", snippets=ids, samples=2 * SNIPPET)
    g4.event("drain", 2, 5, "listed in RUN_DIR/drain")
    g4.event("lost", 2, 6, "process failed (ULFM)")
    T.root.rec(ev="step", step=2, epoch=0, step_in_epoch=3, tasks=2, snippets=4, samples=4 * SNIPPET, t=1.0)
    T.end(3)
    s = T.summary()
    assert s["integrity"]["status"] == "OK", s["integrity"]["problems"]
    assert [d["rank"] for d in s["ranks"]] == [1, 2, 3, 4, 5, 6]
    # roles: a collector names its workers, a worker its collector
    assert [(d["role"], d["leader"], d["children"]) for d in s["ranks"]] == [
        ("collector", 0, [2, 3]), ("worker", 1, []), ("worker", 1, []),
        ("collector", 0, [5, 6]), ("worker", 4, []), ("worker", 4, [])]
    assert [g["rank"] for g in s["collectors"]] == [1, 4]
    assert s["collectors"][0]["children"] == [2, 3] and s["collectors"][0]["parent"] == 0
    assert s["collectors"][0]["sums"] == s["collectors"][0]["checked_sums"] == 3
    assert s["collectors"][0]["copies"] == {"accepted": 6, "lost": 1}
    # the collectors' copies: rank 0 sent each collector one task a step
    assert row(s, 1)["copies"] == row(s, 1)["accepted"] == 3 and row(s, 4)["accepted"] == 3
    # its workers: one sub-task per snippet
    r2, r3 = row(s, 2), row(s, 3)
    assert (r2["copies"], r2["accepted"], r2["lost"], r2["host"]) == (3, 2, 1, "n2")
    assert (r3["copies"], r3["accepted"], r3["backups"], r3["strikes"]) == (4, 4, 1, 1)
    assert r3["strike_events"] == [{"step": 2, "reason": "non-finite result (nan)", "collector": 1}]
    assert r2["median_latency_s"] == pytest.approx(0.05)       # the lost copy does not count
    assert [row(s, r)["status"] for r in range(1, 7)] == ["active", "lost", "active", "active", "drained", "lost"]
    assert row(s, 2)["membership"][0]["collector"] == 1
    # a collector's compute time is its group's: no speed of its own, and not in the reference
    assert row(s, 1)["relative_compute"] is None and row(s, 4)["relative_compute"] is None
    assert s["reference_compute_ms_per_sample"] == pytest.approx(1000 * FAST / SNIPPET)
    assert row(s, 3)["relative_compute"] == pytest.approx(SLOW / FAST)
    # the totals are the table's: every level's copies
    assert s["totals"]["copies"] == sum(d["copies"] for d in s["ranks"]) == 3 + 3 + 4 + 3 + 3 + 3
    # suspects name the collector that acted
    sus = {x["rank"]: x for x in s["suspects"]}
    assert set(sus) == {2, 3, 6}
    assert sus[2]["reasons"] == ["lost at step 2 by collector 1: no result for 3 s (hung)"]
    assert sus[2]["leader"] == 1 and sus[2]["status"] == "lost"
    assert sus[3]["reasons"] == ["1 strike from collector 1: non-finite result at step 2",
                                 "slow: 4.0x the median compute time per sample"]     # rank 3 computes slowly
    assert sus[6]["reasons"] == ["lost at step 2 by collector 4: process failed (ULFM)"]


def test_a_worker_excluded_by_its_collector_is_a_suspect_naming_it():
    T = tree_run()
    T.groups[1].event("exclude", 3, 2, "proven wrong by a trusted audit: its result differs from collector 1's")
    s = T.summary()
    assert row(s, 2)["status"] == "excluded"
    sus = {x["rank"]: x for x in s["suspects"]}
    assert sus[2]["reasons"] == [
        "excluded at step 3 by collector 1 (proven wrong by a trusted audit: its result differs from collector 1's)"]
    # rank 0's own strikes on a collector read as before
    T.root.event("strike", 3, 1, "disagreed with the quorum", strikes=1)
    s = T.summary()
    assert {x["rank"]: x for x in s["suspects"]}[1]["reasons"] == ["1 strike: disagreed with the quorum at step 3"]


def test_status_is_the_last_membership_record_of_any_ledger():
    T = tree_run()
    T.groups[1].event("exclude", 2, 2, "proven wrong")
    T.root.event("readmit", 3, 2, "re-attached: its collector failed")     # rank 0's record is the later one
    s = T.summary()
    assert row(s, 2)["status"] == "active"
    assert [(m["ev"], m.get("collector")) for m in row(s, 2)["membership"]] == [("exclude", 1), ("readmit", None)]
    # at the same step the collector's record comes first (a worker re-attaches after its collector's end)
    T = tree_run()
    T.root.event("readmit", 2, 2, "re-attached: its collector failed")
    T.groups[1].event("lost", 2, 2, "no result for 3 s (hung)")
    assert row(T.summary(), 2)["status"] == "active"
    # a collector's record of an earlier run: the resumed run started the rank afresh
    T = tree_run()
    T.groups[1].event("exclude", 3, 2, "proven wrong")
    T.run(4)
    T.steps(4, 6)
    T.end(6)
    assert row(T.summary(), 2)["status"] == "active"


def test_without_the_collectors_ledgers_the_collectors_keep_their_role(tmp_path):
    T = tree_run()
    s = summarize_ledger(T.root.write(tmp_path / "ledger.jsonl"))
    assert s["collectors"] == [] and s["integrity"]["collectors"] is None
    # rank 0's run record names the collectors: they keep their role, but no worker is under them
    assert [(d["rank"], d["role"], d["leader"]) for d in s["ranks"]][:2] == [(1, "collector", 0), (2, "worker", 0)]


def test_two_levels_check_each_collector_against_its_parent_collector():
    T = tree_run(levels=2)
    s = T.summary()
    assert s["integrity"]["status"] == "OK", s["integrity"]["problems"]
    assert s["integrity"]["collectors"] == {"ledgers": 2, "sums": 16, "checked_sums": 16, "unchecked_sums": 0,
                                            "problems": 0}
    assert [(d["rank"], d["role"], d["leader"]) for d in s["ranks"] if d["rank"] in (1, 2, 4, 5)] == [
        (1, "collector", 0), (2, "worker", 1), (4, "collector", 1), (5, "worker", 4)]
    # collector 4's sum disagrees with the sub-task collector 1 gave it
    g4 = T.groups[4]
    k = max(i for i, x in enumerate(g4.lines) if json.loads(x)["ev"] == "group_sum")
    last = json.loads(g4.lines[k])
    g4.lines[k] = json.dumps({**last, "samples": 3 * SNIPPET})
    sub = g4.lines[k - 1]
    g4.lines[k - 1] = json.dumps({**json.loads(sub), "samples": 3 * SNIPPET})
    assert failed(T) == [f"collector 4 step 3: its sum for task {last['task']} says 96 samples, the task collector 1 "
                         "gave it holds 32"]


# ---------------------------------------------------------------- failures --
def test_a_sum_of_a_sub_task_never_accepted():
    T = tree_run()
    g1 = T.groups[1]
    drop(g1, "group_sum", step=1)
    g1.sum(1, 2, [3, 4, 99], samples=64)
    assert failed(T) == ["collector 1 step 1: its sum for task 2 counts sub-task 99, which it never accepted"]


def test_a_sub_task_accepted_twice():
    T = tree_run()
    g1 = T.groups[1]
    g1.sub(2, 4, 3, task=5, snippets=[7])
    assert failed(T) == ["collector 1 step 2: its sum for task 4 counts sub-task 5, which it accepted 2 times"]


def test_a_sub_task_counted_in_two_sums():
    T = tree_run()
    g4 = T.groups[4]
    drop(g4, "group_sum", task=3)
    g4.sum(1, 3, [3, 4, 1])
    assert failed(T) == [
        "collector 4 step 0: its sum for task 1 counts sub-task 1, which its sum for task 3 (step 1) counts too",
        "collector 4 step 1: its sum for task 3 counts sub-task 1, which its sum for task 1 (step 0) counts too; "
        "counts sub-task 1 of task 1; says 96 samples, the task rank 0 gave it holds 64"]


def test_samples_that_do_not_add_up():
    T = tree_run()
    g1 = T.groups[1]
    drop(g1, "group_sum", task=4)
    g1.sum(2, 4, [5, 6], samples=60)
    assert failed(T) == ["collector 1 step 2: its sum for task 4 says 60 samples, its sub-tasks hold 64; "
                         "says 60 samples, the task rank 0 gave it holds 64"]
    # the sub-tasks and the sum agree, but not with the task rank 0 gave
    T = tree_run()
    k = next(i for i, x in enumerate(T.root.lines) if json.loads(x).get("task") == 4)
    T.root.lines[k] = json.dumps({**json.loads(T.root.lines[k]), "samples": 96})
    assert failed(T) == ["collector 1 step 2: its sum for task 4 says 64 samples, the task rank 0 gave it holds 96"]


def test_a_result_rank_0_accepted_without_its_sum():
    T = tree_run()
    drop(T.groups[4], "group_sum", task=7)
    assert failed(T) == ["collector 4 step 3: rank 0 accepted its result for task 7, but its ledger has no sum of "
                         "that task"]
    assert T.summary()["integrity"]["collectors"]["problems"] == 1


def test_problems_are_listed_per_sum_then_counted():
    T = tree_run()
    g1 = T.groups[1]
    drop(g1, "group_sum", task=2)
    g1.sum(1, 2, [3, 4, 95, 96, 97, 98], samples=64)
    assert failed(T) == ["collector 1 step 1: its sum for task 2 counts sub-task 95, which it never accepted; "
                         "counts sub-task 96, which it never accepted; counts sub-task 97, which it never accepted; "
                         "and 1 more"]


# --------------------------------------------------- what is not checked --
def test_sums_without_a_copy_of_the_parent_are_not_checked():
    """A resume cuts rank 0's ledger back to its checkpoint, not the
    collectors' ledgers: the sums of the steps redone have no parent copy."""
    T = Tree()
    T.run(0)
    T.steps(0, 3)
    cut = len(T.root.lines)
    T.step(3)                                       # applied after the checkpoint at step 3 ...
    del T.root.lines[cut:]                          # ... and cut off by the resume
    T.groups[1].sum(3, 7, [41, 42])                 # the killed run's last sum, wrong but never counted
    T.root.next_task = 0                            # the resumed master numbers its tasks afresh
    T.run(3)
    T.steps(3, 6)
    T.end(6)
    s = T.summary()
    i = s["integrity"]
    assert i["status"] == "OK", i["problems"]
    assert i["collectors"] == {"ledgers": 2, "sums": 15, "checked_sums": 12, "unchecked_sums": 3, "problems": 0}
    assert [g["runs"] for g in s["collectors"]] == [[1, 2], [1, 2]]
    # sub-task ids start again at each run start: the same ids in two runs are no double count
    assert [json.loads(x)["subs"] for x in T.groups[4].lines if json.loads(x)["ev"] == "group_sum"][-3] == [1, 2]
    # a rank 0 copy of the resumed run matches the resumed run's sum, not the first run's of the same task id
    k = max(i for i, x in enumerate(T.groups[4].lines) if json.loads(x)["ev"] == "group_sum")
    del T.groups[4].lines[k]
    assert failed(T) == ["collector 4 (run 2) step 5: rank 0 accepted its result for task 5, but its ledger has no "
                         "sum of that task"]


def test_a_segment_far_from_every_run_is_checked_on_its_own():
    T = tree_run()
    g1 = T.groups[1]
    first = json.loads(g1.lines[0])
    g1.lines[0] = json.dumps({**first, "unix_time": first["unix_time"] + 3 * CLOCK_SLACK_S})
    drop(g1, "group_sum", task=4)      # no sum for a task rank 0 accepted: not known to be a problem here
    g1.sub(3, 6, 2, snippets=[14], task=7)
    i = T.summary()["integrity"]       # a wrong sum is still found
    assert i["problems"] == ["collector 1 step 3: its sum for task 6 counts sub-task 7, which it accepted 2 times"]
    assert i["collectors"]["checked_sums"] == 7


def test_a_sum_rank_0_did_not_accept_is_checked_when_rank_0_has_its_copy():
    T = tree_run()
    k = next(i for i, x in enumerate(T.root.lines) if json.loads(x).get("task") == 1)
    T.root.copy(0, 1, 4, "duplicate", snippets=json.loads(T.root.lines[k])["snippets"], samples=64)
    T.groups[4].sum(0, 1, [1, 2])       # its second sum counts the same sub-tasks
    probs = failed(T)
    assert probs[0].startswith("collector 4 step 0: its sum for task 1 counts sub-task 1, which its sum for task 1 "
                               "(step 0) counts too")


# ------------------------------------------------------------------ files --
def test_the_run_directory_is_read_with_its_collectors_ledgers(tmp_path):
    T = tree_run()
    rd = T.write(tmp_path / "run")
    (rd / "ledger.collector-x.jsonl").write_text("")        # not a collector's ledger name
    assert find_group_ledgers(rd) == {1: rd / "ledger.collector-1.jsonl", 4: rd / "ledger.collector-4.jsonl"}
    rep = run_report(rd)
    led = rep["ledger"]
    assert led["integrity"]["status"] == "OK" and led["integrity"]["collectors"]["checked_sums"] == 8
    assert [g["path"] for g in led["collectors"]] == [str(rd / "ledger.collector-1.jsonl"),
                                                      str(rd / "ledger.collector-4.jsonl")]
    assert row(led, 5)["accepted"] == 4
    # a ledger named otherwise is read alone
    other = T.root.write(tmp_path / "copy.jsonl")
    assert summarize_ledger(other)["collectors"] == []


def test_a_damaged_collectors_ledger_fails_a_torn_tail_is_a_note(tmp_path):
    T = tree_run()
    T.groups[1].lines.insert(3, "{garbage")
    rd = T.write(tmp_path / "run", tails={4: '{"ev": "copy", "step": 4'})
    led = summarize_ledger(rd / "ledger.jsonl")
    assert led["integrity"]["status"] == "FAILED"
    assert led["integrity"]["problems"] == [
        "ledger.collector-1.jsonl is damaged: line 4 in the middle is not a JSON record (records lost)"]
    assert "ledger.collector-4.jsonl line 14 (the last): truncated record skipped (the run was killed while " \
           "writing it)" in led["warnings"]
    assert "ledger.collector-1.jsonl line 4: not a JSON record with an \"ev\"; skipped" in led["warnings"]


def test_a_killed_collectors_torn_line_before_the_next_run_is_a_note(tmp_path):
    T = Tree()
    T.run(0)
    T.steps(0, 2)
    T.groups[1].lines.append('{"ev": "copy", "step": 2, "ta')       # killed mid-line
    T.run(2)
    T.steps(2, 4)
    T.end(4)
    rd = T.write(tmp_path / "run")
    led = summarize_ledger(rd / "ledger.jsonl")
    assert led["integrity"]["status"] == "OK", led["integrity"]["problems"]
    assert ("ledger.collector-1.jsonl line 8: a truncated record (a killed run) before the next run's start; skipped"
            in led["warnings"])
