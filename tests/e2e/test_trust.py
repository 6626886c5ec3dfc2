"""Trust under mpiexec: wrong workers that agree with each other, trusted
audits and rollback, exploding losses audited before a divergence is
declared, and a ledger without gaps after a SIGKILL and a resume.  Every
run has a hard timeout; the parameters are compared with a clean run's."""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest

from tests.conftest import mpiexec_cmd, raven_cmd, run, write_config
from tests.conftest import test_env as env_for_tests
from tests.e2e.test_poc import faults, ledger, ok, params_of

TIMEOUT = 240


def train(n, cfg, run_dir, *extra, timeout=TIMEOUT):
    return run(mpiexec_cmd(n) + raven_cmd() + ["train", str(cfg), "--run-dir", str(run_dir),
                                                "--set", "train.eval_every=0", *extra], timeout=timeout)


def statuses(run_dir) -> dict:
    return {int(r): w["status"] for r, w in json.loads((run_dir / "summary.json").read_text())["workers_status"].items()}


def applied_history(records) -> list[dict]:
    """The step records that stand: a rollback voids the records of steps
    >= its target written before it (as a resume does)."""
    steps: list[dict] = []
    for e in records:
        if e["ev"] == "step":
            steps.append(e)
        elif e["ev"] in ("rollback", "run"):
            start = e["to_step"] if e["ev"] == "rollback" else e["start_step"]
            steps = [s for s in steps if s["step"] < start]
    return steps


def assert_no_gap(records, last_step):
    steps = [s["step"] for s in applied_history(records)]
    assert steps == list(range(last_step)), f"steps with records: {steps[:5]}...{steps[-5:]} of {len(steps)}"


@pytest.fixture(scope="module")
def cfg(tmp_path_factory, small_h5):
    d = tmp_path_factory.mktemp("trust")
    return write_config(d / "c.toml", small_h5, epochs=1, task_snippets=1,
                        extra="checkpoint_every_steps = 4")


@pytest.fixture(scope="module")
def clean(tmp_path_factory, cfg):
    rd = tmp_path_factory.mktemp("clean") / "run"
    ok(train(1, cfg, rd))
    return params_of(rd)


@pytest.fixture(scope="module")
def clean_3_epochs(tmp_path_factory, cfg):
    rd = tmp_path_factory.mktemp("clean3") / "run"
    ok(train(1, cfg, rd, "--set", "train.epochs=3"))
    return params_of(rd)


PAIR = '{rank = [1, 2], mode = "scale", factor = -1.0, from_step = 5}'


def test_identical_wrong_pair_cannot_outvote_the_audits(tmp_path, cfg, clean):
    """Ranks 1 and 2 return the same wrong gradients from step 5 (redundancy
    3, quorum 2, 4 workers): the pair agrees with itself, so votes alone
    would strike the honest ranks.  Audits and rollback end the run with the
    clean run's parameters, the pair excluded and named, ranks 3 and 4 active."""
    rd = tmp_path / "run"
    res = ok(train(5, cfg, rd, "--set", "poc.redundancy=3", "--set", "poc.quorum=2", "--set", "poc.audit=0.2",
                   *faults(PAIR)))
    np.testing.assert_allclose(params_of(rd), clean, rtol=1e-6, atol=1e-7)
    assert statuses(rd) == {1: "excluded", 2: "excluded", 3: "active", 4: "active"}, res.stdout
    rec = ledger(rd)
    assert [e for e in rec if e["ev"] == "rollback"], res.stdout
    assert {e["rank"] for e in rec if e["ev"] == "exclude"} >= {1, 2}
    assert "rolled back" in res.stdout
    assert_no_gap(rec, 16)
    # every accepted copy that stands comes from an honest rank or the master
    standing = _standing_accepted(rec)
    assert standing and not [e for e in standing if e["rank"] in (1, 2) and e["step"] >= 5]


def test_trusted_rank_audits_and_a_subtly_wrong_pair_is_undone(tmp_path, cfg, clean):
    """A pair that halves its gradients (the loss still falls: only an audit
    can tell) with rank 4 marked trusted: audits chosen while the step runs
    go to rank 4 (four single-snippet tasks per step, no chunks, so there
    are such audits every step); the master takes those rank 4 cannot, and
    those chosen as the step ends.  The run ends with the clean run's
    parameters."""
    rd = tmp_path / "run"
    res = ok(train(5, cfg, rd, "--set", "poc.redundancy=2", "--set", "poc.quorum=2", "--set", "poc.audit=0.5",
                   "--set", "poc.trusted=[4]", "--set", "cluster.max_chunk=1",
                   *faults('{rank = [1, 2], mode = "scale", factor = 0.5, from_step = 5}')))
    np.testing.assert_allclose(params_of(rd), clean, rtol=1e-6, atol=1e-7)
    assert statuses(rd) == {1: "excluded", 2: "excluded", 3: "active", 4: "active"}, res.stdout
    audits = [e for e in ledger(rd) if e["ev"] == "audit"]
    assert 4 in {e["rank"] for e in audits} <= {0, 4}, audits
    assert not [e for e in audits if not e["ok"] and set(e["ranks"]) - {1, 2}]


def test_three_wrong_of_four_two_of_them_identical(tmp_path, cfg, clean):
    rd = tmp_path / "run"
    res = ok(train(5, cfg, rd, "--set", "poc.redundancy=3", "--set", "poc.quorum=2", "--set", "poc.audit=0.2",
                   *faults(PAIR, '{rank = 3, mode = "scale", factor = 3.0, from_step = 5}')))
    np.testing.assert_allclose(params_of(rd), clean, rtol=1e-6, atol=1e-7)
    assert statuses(rd) == {1: "excluded", 2: "excluded", 3: "excluded", 4: "active"}, res.stdout
    assert "diverged" not in res.stdout + res.stderr


def test_audit_clears_the_strikes_a_wrong_pair_gave_and_brings_the_honest_rank_back(tmp_path, cfg, clean_3_epochs):
    """Three workers, redundancy 2, quorum 2, no sampled audits: the pair
    outvotes rank 3 until it is excluded, then every result is the pair's and
    the loss explodes.  The exploding step is audited before anything is
    declared: the pair is proven wrong, rank 3's strikes are cleared and it
    comes back, and training goes back to before the pair's first result."""
    rd = tmp_path / "run"
    res = ok(train(4, cfg, rd, "--set", "train.epochs=3", "--set", "poc.redundancy=2", "--set", "poc.quorum=2",
                   *faults(PAIR)))
    np.testing.assert_allclose(params_of(rd), clean_3_epochs, rtol=1e-5, atol=1e-6)   # 48 steps of round-off
    assert statuses(rd) == {1: "excluded", 2: "excluded", 3: "active"}, res.stdout
    rec = ledger(rd)
    assert any("loss jumped" in e["reason"] for e in rec if e["ev"] == "rollback"), res.stdout
    failed = [e for e in rec if e["ev"] == "audit" and not e["ok"]]
    assert failed and set(failed[0]["ranks"]) == {1, 2}
    assert any(e["ev"] == "exonerate" and e["rank"] == 3 for e in rec)
    assert any(e["ev"] == "readmit" and e["rank"] == 3 for e in rec)


def test_non_finite_on_two_ranks_is_checked_by_the_master_not_called_a_divergence(tmp_path, cfg, clean):
    rd = tmp_path / "run"
    res = ok(train(4, cfg, rd, "--set", "poc.redundancy=2",
                   *faults('{rank = [1, 2], mode = "nan", from_step = 3}')))
    np.testing.assert_allclose(params_of(rd), clean, rtol=1e-6, atol=1e-7)
    assert "diverged" not in res.stdout + res.stderr
    st = statuses(rd)
    assert st[1] == st[2] == "excluded" and st[3] == "active"


def test_sigkill_then_resume_leaves_no_gap_in_the_ledger(tmp_path, cfg, clean_3_epochs):
    """The whole job is killed (SIGKILL) after a few checkpoints; the resumed
    run cuts the ledger back to its checkpoint, so every step 0..47 has its
    record exactly once and every snippet of every epoch is accepted once."""
    rd = tmp_path / "run"
    cmd = mpiexec_cmd(3) + raven_cmd() + ["train", str(cfg), "--run-dir", str(rd), "--set", "train.eval_every=0",
                                          "--set", "train.epochs=3", "--set", "run.checkpoint_every_steps=3",
                                          *faults('{rank = [1, 2], mode = "sleep", seconds = 0.03}')]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env_for_tests(),
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            kept = list((rd / "checkpoints").glob("step-*.h5")) if (rd / "checkpoints").exists() else []
            if any(int(p.stem.split("-")[1]) >= 9 for p in kept):
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    with h5py.File(rd / "checkpoint.h5", "r") as f:
        at = json.loads(f.attrs["train_state"])["step"]
    assert 9 <= at < 48
    ok(train(2, cfg, rd, "--resume", "--set", "train.epochs=3"))
    np.testing.assert_allclose(params_of(rd), clean_3_epochs, rtol=1e-5, atol=1e-6)   # 48 steps of round-off
    rec = ledger(rd)
    steps = [e["step"] for e in rec if e["ev"] == "step"]
    assert steps == list(range(48)), steps      # cut back at the checkpoint: each step once, in order
    standing = _standing_accepted(rec)
    counts = collections.Counter((e["step"] // 16, s) for e in standing for s in e["snippets"])
    assert len(counts) == 3 * 64 and set(counts.values()) == {1}
    runs = [e for e in rec if e["ev"] == "run"]
    assert len(runs) == 2 and runs[1]["start_step"] == at


def _standing_accepted(records) -> list[dict]:
    """Accepted grad copies not voided by a later rollback or resume."""
    out: list[dict] = []
    for e in records:
        if e["ev"] == "copy" and e["kind"] == "grad" and e["state"] == "accepted":
            out.append(e)
        elif e["ev"] in ("rollback", "run"):
            start = e["to_step"] if e["ev"] == "rollback" else e["start_step"]
            out = [c for c in out if c["step"] < start]
    return out
