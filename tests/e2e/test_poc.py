"""Proof-of-Calculation under mpiexec with injected faults: exactly-once with
redundancy, corrupting workers caught and excluded without touching the
model, slow and hung workers, draining.  Every run has a hard timeout."""
from __future__ import annotations

import collections
import json

import h5py
import numpy as np
import pytest

from tests.conftest import mpiexec_cmd, raven_cmd, run, write_config

TIMEOUT = 180
STEPS = 12


def train(n, cfg, run_dir, *extra, timeout=TIMEOUT):
    return run(mpiexec_cmd(n) + raven_cmd() + ["train", str(cfg), "--run-dir", str(run_dir),
                                                "--set", f"train.max_steps={STEPS}", "--set", "train.eval_every=0",
                                                *extra], timeout=timeout)


def ok(res):
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def faults(*rules) -> list[str]:
    return ["--set", "faults.rules=[" + ", ".join(rules) + "]"]


def params_of(run_dir):
    with h5py.File(run_dir / "checkpoint.h5", "r") as f:
        return f["params"][()]


def ledger(run_dir):
    return [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines() if x.strip()]


def accepted_once(records):
    """Every snippet of every step settled exactly once -- by one accepted
    copy (tasks may be merged into chunks) or by the master's arbitration;
    returns the accepted (step, snippet) counts."""
    grad = [e for e in records if e["ev"] == "copy" and e["kind"] == "grad"]
    snippets = {(e["step"], e["task"]): e["snippets"] for e in grad}
    acc = collections.Counter((e["step"], s) for e in grad if e["state"] == "accepted" for s in e["snippets"])
    arbitrated = {e["reason"] for e in records if e["ev"] == "arbitrated"}
    missing = {(step, s) for (step, tid), ss in snippets.items() for s in ss
               if acc[(step, s)] == 0 and not any(f"task {tid} of step {step} " in a for a in arbitrated)}
    assert not missing, f"snippets never accepted: {sorted(missing)[:5]}"
    assert all(v == 1 for v in acc.values()), [k for k, v in acc.items() if v != 1][:5]
    return acc


@pytest.fixture(scope="module")
def cfg(tmp_path_factory, small_h5):
    d = tmp_path_factory.mktemp("poc")
    return write_config(d / "c.toml", small_h5, epochs=1, task_snippets=1)


@pytest.fixture(scope="module")
def clean(tmp_path_factory, cfg):
    """Single-process reference run over the same global batches."""
    rd = tmp_path_factory.mktemp("clean") / "run"
    ok(train(1, cfg, rd))
    return params_of(rd)


def test_exactly_once_with_redundancy_3_and_random_delays(tmp_path, cfg, clean):
    rd = tmp_path / "run"
    ok(train(4, cfg, rd, "--set", "poc.redundancy=3",
             *faults('{rank = [1, 2, 3], mode = "sleep", seconds = 0.01, jitter = true}')))
    np.testing.assert_allclose(params_of(rd), clean, rtol=1e-6, atol=1e-7)
    rec = ledger(rd)
    acc = accepted_once(rec)
    assert len(acc) == STEPS * 4                      # 128 samples / 32 per snippet = 4 per step
    dup = [e for e in rec if e["ev"] == "copy" and e["state"] == "duplicate"]
    assert dup and all(e["agreed"] for e in dup if e["verified"])
    credited = collections.Counter((e["step"], e["task"]) for e in rec if e["ev"] == "copy" and e["credited"])
    assert max(credited.values()) <= 3


@pytest.mark.parametrize("mode", ['mode = "scale", factor = -1.0',
                                  'mode = "scale", factor = 1.01',
                                  'mode = "bitflip", count = 2',
                                  'mode = "nan"'])
def test_corrupting_worker_never_changes_the_model_under_quorum(tmp_path, cfg, clean, mode):
    rd = tmp_path / "run"
    res = ok(train(3, cfg, rd, "--set", "poc.redundancy=2", "--set", "poc.quorum=2",
                   *faults(f"{{rank = 2, {mode}, from_step = 2}}")))
    np.testing.assert_allclose(params_of(rd), clean, rtol=1e-6, atol=1e-7)
    rec = ledger(rd)
    accepted_once(rec)
    excl = [e for e in rec if e["ev"] == "exclude"]
    assert [e["rank"] for e in excl] == [2], res.stdout
    assert excl[0]["step"] <= 2 + 3          # three strikes within three steps of the first fault
    assert excl[0]["host"]
    assert "rank 2" in res.stdout and "excluded" in res.stdout
    assert not [e for e in rec if e["ev"] == "strike" and e["rank"] != 2]
    summary = json.loads((rd / "summary.json").read_text())
    assert summary["workers_status"]["2"]["status"] == "excluded"


def test_sampled_verification_catches_a_corrupting_worker(tmp_path, cfg):
    rd = tmp_path / "run"
    ok(train(3, cfg, rd, "--set", "poc.verify=0.25", "--set", f"train.max_steps={3 * STEPS}",
             *faults('{rank = 1, mode = "scale", factor = 2.0}')))
    rec = ledger(rd)
    excl = [e for e in rec if e["ev"] == "exclude"]
    assert [e["rank"] for e in excl] == [1]
    # verify = 0.25: rank 1's 4th task at the latest is verified; then it is a
    # suspect and every task of it is verified, so 3 strikes come quickly
    assert excl[0]["step"] <= 8


def test_slow_worker_does_not_hold_the_step_and_shows_as_slowest(tmp_path, cfg):
    rd = tmp_path / "run"
    ok(train(3, cfg, rd, *faults('{rank = 2, mode = "slow", factor = 4.0}')))
    rec = ledger(rd)
    accepted_once(rec)
    copies = [e for e in rec if e["ev"] == "copy" and e["kind"] == "grad" and e["compute_s"]]
    per_sample = {r: np.median([e["compute_s"] / e["samples"] for e in copies if e["rank"] == r]) for r in (1, 2)}
    assert per_sample[2] > 2.5 * per_sample[1]
    acc = collections.Counter()
    for e in copies:
        if e["state"] == "accepted":
            acc[e["rank"]] += len(e["snippets"])
    # the step is not shared 1:1: the slow worker gets at most what it can
    # finish in time (its share of the work, about 1/5, or less), and what it
    # does not finish in time goes to the fast one as a backup (a probe, an
    # extra copy to re-measure it after 10 idle steps, may come second anyway)
    assert acc[2] <= 0.3 * (acc[1] + acc[2]), acc
    late = [e for e in rec if e["ev"] == "copy" and e["rank"] == 2 and e["state"] in ("duplicate", "late")
            and not e["probe"]]
    assert not late or any(e["backup"] for e in copies)


def test_hung_worker_is_removed_after_its_timeout_and_training_finishes(tmp_path, cfg, clean):
    rd = tmp_path / "run"
    # rank 1 takes 0.1 s per task, so the run outlasts the timeout
    res = ok(train(3, cfg, rd, "--set", "poc.worker_timeout_s=1.0",
                   *faults('{rank = 2, mode = "hang", seconds = 8.0, from_step = 3}',
                           '{rank = 1, mode = "sleep", seconds = 0.1}')))
    rec = ledger(rd)
    lost = [e for e in rec if e["ev"] == "lost"]
    assert [e["rank"] for e in lost] == [2] and "hung" in lost[0]["reason"]
    assert "rank 2" in res.stdout and "lost" in res.stdout
    accepted_once(rec)
    np.testing.assert_allclose(params_of(rd), clean, rtol=1e-6, atol=1e-7)


def test_drained_worker_gets_no_work(tmp_path, cfg, clean):
    rd = tmp_path / "run"
    rd.mkdir()
    (rd / "drain").write_text("2\n")
    ok(train(3, cfg, rd))
    rec = ledger(rd)
    assert any(e["ev"] == "drain" and e["rank"] == 2 for e in rec)
    first = next(i for i, e in enumerate(rec) if e["ev"] == "drain")
    assert not [e for e in rec[first:] if e["ev"] == "copy" and e["rank"] == 2 and e["step"] > 0]
    np.testing.assert_allclose(params_of(rd), clean, rtol=1e-6, atol=1e-7)


def test_ledger_survives_resume(tmp_path, cfg):
    rd = tmp_path / "run"
    ok(train(3, cfg, rd))
    n1 = len(ledger(rd))
    ok(run(mpiexec_cmd(2) + raven_cmd() + ["train", str(cfg), "--run-dir", str(rd), "--resume",
                                           "--set", f"train.max_steps={STEPS + 4}", "--set", "train.eval_every=0"],
           timeout=TIMEOUT))
    rec = ledger(rd)
    runs = [e for e in rec if e["ev"] == "run"]
    assert len(runs) == 2 and runs[1]["resumed"] and runs[1]["start_step"] == STEPS
    assert len(rec) > n1
    accepted_once(rec)


def test_quorum_1_dispute_inside_the_step_replaces_the_wrong_result(tmp_path, cfg, clean):
    """Redundancy 2, quorum 1, one task out per worker (``prefetch = 1``,
    no chunks): from step 2 rank 1 returns gradients off by 1% (below the
    norm screen; the fingerprints catch it) after 20 ms, rank 2 the right
    ones after 30 ms.  So rank 1's copy of the step's first task is applied
    first, and rank 2's copy disputes it while the step's other tasks are
    still open (rank 1 is only on its second): the master computes the task,
    takes rank 1's result out of the step's sum and adds its own.  The
    ledger shows it replaced, no wrong result disputed inside its step stays
    applied, and -- none outliving its step -- the model equals a clean run."""
    rd = tmp_path / "run"
    res = ok(train(3, cfg, rd, "--set", "poc.redundancy=2", "--set", "cluster.max_chunk=1",
                   "--set", "cluster.prefetch=1",
                   *faults('{rank = 1, mode = "scale", factor = 1.01, from_step = 2}',
                           '{rank = 1, mode = "sleep", seconds = 0.02}',
                           '{rank = 2, mode = "sleep", seconds = 0.03}')))
    rec = ledger(rd)
    accepted_once(rec)
    assert [e["rank"] for e in rec if e["ev"] == "exclude"] == [1], res.stdout
    replaced = [e for e in rec if e["ev"] == "copy" and "replaced by the master" in e["reason"]]
    assert replaced, "no wrong result was replaced"
    assert all(e["rank"] == 1 and e["state"] == "rejected" for e in replaced)
    wrong_applied = [e for e in rec if e["ev"] == "copy" and e["rank"] == 1 and e["step"] >= 2
                     and e["state"] == "accepted"]
    # a wrong result may stay applied only if no copy disputed it before its
    # step ended (the step's last acceptance)
    copies = [e for e in rec if e["ev"] == "copy" and e["kind"] == "grad"]
    step_end = collections.defaultdict(float)
    for e in copies:
        if e["state"] == "accepted":
            step_end[e["step"]] = max(step_end[e["step"]], e["finished"])
    for e in wrong_applied:
        early = [d for d in copies if d["task"] == e["task"] and d["rank"] == 2
                 and d["state"] == "rejected" and d["finished"] < step_end[e["step"]]]
        assert not early, f"task {e['task']}: disputed at {early[0]['finished']} inside its step, not replaced"
    if not wrong_applied:
        np.testing.assert_allclose(params_of(rd), clean, rtol=1e-6, atol=1e-6)



def test_copies_still_queued_when_their_step_ends_are_skipped_not_computed_on_later_parameters(tmp_path, cfg, clean):
    """Redundancy 2, quorum 1, three copies out per worker (``prefetch = 3``,
    no chunks): at step 2 rank 2 stalls 0.5 s before each task, while rank 1
    (30 ms a task) settles the step alone and training goes on.  So when
    rank 2 has computed its first copy of step 2, its other two are still
    queued and later parameter versions have reached it: it skips them
    (``skipped``) instead of computing them on another step's parameters,
    where they would disagree with the accepted results and an honest rank
    would be rejected (struck, under a quorum).  No copy is rejected,
    nobody is struck, and the model is a clean run's."""
    rd = tmp_path / "run"
    ok(train(3, cfg, rd, "--set", "poc.redundancy=2", "--set", "cluster.max_chunk=1", "--set", "cluster.prefetch=3",
             *faults('{rank = 1, mode = "sleep", seconds = 0.03}',
                     '{rank = 2, mode = "sleep", seconds = 0.5, from_step = 2, until_step = 3}')))
    rec = ledger(rd)
    accepted_once(rec)
    copies = [e for e in rec if e["ev"] == "copy"]
    assert not [e for e in copies if e["state"] == "rejected"], [e for e in copies if e["state"] == "rejected"]
    assert not [e for e in rec if e["ev"] in ("strike", "exclude")]
    lagging = {e["state"] for e in copies if e["rank"] == 2 and e["step"] == 2 and e["state"] != "accepted"}
    assert "skipped" in lagging and lagging <= {"skipped", "duplicate", "late"}, lagging
    np.testing.assert_allclose(params_of(rd), clean, rtol=1e-6, atol=1e-7)

def test_bad_poc_and_fault_settings_fail_fast(tmp_path, cfg):
    for extra, words in ((["--set", "poc.quorum=2"], "quorum"),
                         (faults('{rank = 0, mode = "slow", factor = 2.0}'), "rank"),
                         (faults('{rank = 1, mode = "melt"}'), "melt")):
        res = train(3, cfg, tmp_path / "run", *extra, timeout=60)
        assert res.returncode != 0
        assert words in (res.stdout + res.stderr) and "Traceback" not in res.stdout + res.stderr
