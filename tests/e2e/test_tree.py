"""Gradient collectors under mpiexec: the tree keeps every promise of the star.

7 ranks as 2 groups (``collectors = 2``: 1 leads 2,3; 4 leads 5,6) and a
two-level tree at 13 ranks (``collectors = 4, fan_in = 2``: 1 and 7 lead the
collectors 4 and 10 as well as their own workers).  Every run under a hard
timeout.
"""
from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from raven_hpc.drain import update_drain
from tests.conftest import REPO, mpiexec_cmd, raven_cmd, run, write_config
from tests.conftest import test_env as child_env   # (an alias: not collected as a test)

TIMEOUT = 240
STEPS = 12


def train(n, cfg, run_dir, *extra, timeout=TIMEOUT):
    return run(mpiexec_cmd(n) + raven_cmd() + ["train", str(cfg), "--run-dir", str(run_dir), *extra],
               timeout=timeout)


def ok(res):
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def params_of(run_dir):
    with h5py.File(run_dir / "checkpoint.h5", "r") as f:
        return f["params"][()]


def records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def tree(groups: int, fan_in: int | None = None) -> list[str]:
    out = ["--set", f"cluster.collectors={groups}"]
    if fan_in is not None:
        out += ["--set", f"cluster.fan_in={fan_in}"]
    return out


COMMON = ["--set", f"train.max_steps={STEPS}", "--set", "train.eval_every=0", "--set", "cluster.max_chunk=1"]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory, small_h5):
    return write_config(tmp_path_factory.mktemp("tree") / "c.toml", small_h5, epochs=1, task_snippets=1)


@pytest.fixture(scope="module")
def flat(tmp_path_factory, cfg):
    """The reference: the same training on a flat star of 7 ranks."""
    rd = tmp_path_factory.mktemp("flat") / "run"
    ok(train(7, cfg, rd, *COMMON, "--set", "cluster.collectors=0"))
    return rd


def check_group_sums(rd: Path, collector: int) -> None:
    """Every sub-task a collector accepted went into exactly one sum it sent up."""
    recs = records(rd / f"ledger.collector-{collector}.jsonl")
    assert recs[0]["ev"] == "collector" and recs[0]["collector"] == collector
    accepted = {e["task"] for e in recs if e["ev"] == "copy" and e["state"] == "accepted"}
    summed = collections.Counter(s for e in recs if e["ev"] == "group_sum" for s in e["subs"])
    assert accepted and set(summed) == accepted and set(summed.values()) == {1}


def test_two_groups_and_two_levels_give_the_flat_parameters(tmp_path, cfg, flat):
    """Invariant 2 through the tree: redundancy 1, no faults."""
    rd = tmp_path / "two"
    res = ok(train(7, cfg, rd, *COMMON, *tree(2)))
    assert "2 collectors" in res.stdout
    np.testing.assert_allclose(params_of(rd), params_of(flat), rtol=1e-6, atol=1e-7)
    for c in (1, 4):
        check_group_sums(rd, c)
    root = records(rd / "ledger.jsonl")
    assert {e["rank"] for e in root if e["ev"] == "copy"} <= {1, 4}     # rank 0 hears only its collectors
    # two levels, with 12 tasks a step so that the second level has work:
    # the parameters of one process on the same batches
    big = ["--set", "train.batch_size=384"]
    rd13, one = tmp_path / "thirteen", tmp_path / "one"
    ok(train(13, cfg, rd13, *COMMON, *big, *tree(4, fan_in=2)))
    ok(train(1, cfg, one, *COMMON, *big))
    np.testing.assert_allclose(params_of(rd13), params_of(one), rtol=1e-6, atol=1e-7)
    assert {e["rank"] for e in records(rd13 / "ledger.jsonl") if e["ev"] == "copy"} <= {1, 7}
    for c in (1, 4, 7, 10):
        check_group_sums(rd13, c)
    rep = ok(run(raven_cmd() + ["report", str(rd13)], timeout=60))
    assert "integrity: OK" in rep.stdout


def test_chunks_through_the_tree_match_the_flat_run(tmp_path, cfg, flat):
    """With chunks (max_chunk 16) a collector cuts its chunk into pieces for
    its workers: the same parameters to float32 round-off."""
    rd = tmp_path / "chunks"
    ok(train(7, cfg, rd, "--set", f"train.max_steps={STEPS}", "--set", "train.eval_every=0", *tree(2)))
    np.testing.assert_allclose(params_of(rd), params_of(flat), rtol=1e-5, atol=1e-6)


def test_collectors_that_compute_too(tmp_path, cfg, flat):
    """``collector_computes``: a collector is also a worker of its group."""
    rd = tmp_path / "both"
    res = ok(train(7, cfg, rd, *COMMON, *tree(2), "--set", "cluster.collector_computes=true"))
    assert "6 worker(s)" in res.stdout
    np.testing.assert_allclose(params_of(rd), params_of(flat), rtol=1e-6, atol=1e-7)
    group = records(rd / "ledger.collector-1.jsonl")
    assert any(e["ev"] == "copy" and e["rank"] == 1 and e["state"] == "accepted" for e in group)
    check_group_sums(rd, 1)


def test_an_error_on_a_collector_ends_every_rank_with_one_message(tmp_path, cfg):
    rd = tmp_path / "err"
    res = train(7, cfg, rd, *COMMON, *tree(2),
                "--set", 'faults.rules=[{rank = 1, mode = "crash", how = "raise", from_step = 3}]', timeout=120)
    assert res.returncode != 0
    assert (res.stdout + res.stderr).count("injected crash") == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr


def test_a_wrong_worker_is_named_by_its_collector_and_only_it_leaves(tmp_path, cfg, flat):
    """Every task goes to both groups (redundancy 2, quorum 2): rank 2's
    halved gradients make group 1's sums disagree with group 4's; the master
    computes the disputed task, collector 1 recomputes its part, proves rank 2
    wrong and excludes it; collector 1 keeps its place (its strike cleared)
    and no wrong result reaches the model."""
    rd = tmp_path / "bad"
    res = ok(train(7, cfg, rd, *COMMON, *tree(2), "--set", "poc.redundancy=2", "--set", "poc.quorum=2",
                   "--set", 'faults.rules=[{rank = 2, mode = "scale", factor = 0.5}]'))
    assert "collector 1 excluded rank 2" in res.stdout
    group = records(rd / "ledger.collector-1.jsonl")
    assert [e["rank"] for e in group if e["ev"] == "exclude"] == [2]
    root = records(rd / "ledger.jsonl")
    assert not [e for e in root if e["ev"] == "exclude"]
    # each of its rejected sums gave collector 1 a strike, each was cleared
    cleared = [e["rank"] for e in root if e["ev"] == "exonerate"]
    assert cleared and set(cleared) == {1}
    assert len([e for e in root if e["ev"] == "strike"]) == len(cleared)
    assert json.loads((rd / "summary.json").read_text())["workers_status"]["1"]["status"] == "active"
    np.testing.assert_allclose(params_of(rd), params_of(flat), rtol=1e-5, atol=1e-6)


def test_a_collector_whose_own_sums_are_wrong_is_excluded_and_its_group_reattaches(tmp_path, cfg, flat):
    """Every task goes to both groups (redundancy 2, quorum 2) and collector
    1 halves each sum it sends up, its workers being right: the master
    computes every disputed task, collector 1 recomputes its parts and finds
    them all right -- so its own sum is wrong, and the master excludes
    collector 1 (strikes alone would take 100 results: the conviction does
    it).  Collector 1 releases its group: workers 2 and 3 re-attach to the
    master and work on; no wrong sum reaches the model."""
    rd = tmp_path / "badsum"
    res = ok(train(7, cfg, rd, *COMMON, *tree(2), "--set", "poc.redundancy=2", "--set", "poc.quorum=2",
                   "--set", "poc.max_strikes=100",
                   "--set", 'faults.rules=[{rank = 1, mode = "scale", factor = 0.5}]'))
    root = records(rd / "ledger.jsonl")
    excluded = [e for e in root if e["ev"] == "exclude"]
    assert [e["rank"] for e in excluded] == [1], excluded
    assert "found every part from its group right" in excluded[0]["reason"]
    assert not [e for e in records(rd / "ledger.collector-1.jsonl") if e["ev"] == "exclude"]   # its workers were right
    why = "its collector (rank 1) was excluded"
    assert {e["rank"]: e["reason"] for e in root if e["ev"] == "readmit"} == {2: f"re-attached: {why}",
                                                                              3: f"re-attached: {why}"}
    for r in (2, 3):
        assert f"re-attached to the master: {why}" in res.stdout
    # the re-attached workers' results were voted with and used; none of collector 1's sums was
    agreed = collections.Counter(e["rank"] for e in root if e["ev"] == "copy" and e["step"] > excluded[0]["step"]
                                 and (e["state"] == "accepted" or e["agreed"] is True))
    assert agreed[2] > 0 and agreed[3] > 0, agreed
    assert not [e for e in root if e["ev"] == "copy" and e["rank"] == 1 and e["state"] == "accepted"]
    assert json.loads((rd / "summary.json").read_text())["workers_status"]["1"]["status"] == "excluded"
    np.testing.assert_allclose(params_of(rd), params_of(flat), rtol=1e-5, atol=1e-6)



def test_copies_still_queued_when_their_step_ends_are_skipped_through_the_tree(tmp_path, cfg, flat):
    """Every task goes to both groups (5 ranks: 1 leads 2, 3 leads 4;
    redundancy 2, quorum 1; three tasks out per rank, ``prefetch = 3``): at
    step 2 rank 4 stalls 0.5 s before each piece, while group 1 (30 ms a
    task) settles the step and training goes on.  When the next parameter
    version reaches collector 3, its tasks of step 2 are still open: it drops
    them and tells the master ``skipped``, and rank 4 skips the pieces it
    still holds instead of computing them on another step's parameters (a
    wrong sum from an honest group, rejected -- struck, under a quorum).
    No copy is rejected at either level, nobody is struck, and the model is
    the flat run's."""
    rd = tmp_path / "lag"
    ok(train(5, cfg, rd, *COMMON, *tree(2), "--set", "poc.redundancy=2", "--set", "cluster.prefetch=3",
             "--set", 'faults.rules=[{rank = 2, mode = "sleep", seconds = 0.03}, '
                          '{rank = 4, mode = "sleep", seconds = 0.5, from_step = 2, until_step = 3}]'))
    root = records(rd / "ledger.jsonl")
    groups = {c: records(rd / f"ledger.collector-{c}.jsonl") for c in (1, 3)}
    for recs in (root, *groups.values()):
        assert not [e for e in recs if e["ev"] == "copy" and e["state"] == "rejected"]
        assert not [e for e in recs if e["ev"] in ("strike", "exclude")]
    lagging = {e["state"] for e in root if e["ev"] == "copy" and e["rank"] == 3 and e["step"] == 2
               and e["state"] != "accepted"}
    assert "skipped" in lagging and lagging <= {"skipped", "duplicate"}, lagging
    late = {e["state"] for e in groups[3] if e["ev"] == "copy" and e["rank"] == 4 and e["step"] == 2
            and e["state"] != "accepted"}
    assert late and late <= {"skipped", "late"}, late
    for c in (1, 3):
        check_group_sums(rd, c)
    np.testing.assert_allclose(params_of(rd), params_of(flat), rtol=1e-6, atol=1e-7)

def train_and(n, cfg, run_dir, *extra, when, then, timeout=TIMEOUT):
    """``train``, calling ``then()`` once, as soon as ``when(output so far)``
    holds (stdout and stderr together); a hard timeout on the whole run."""
    cmd = mpiexec_cmd(n) + raven_cmd() + ["train", str(cfg), "--run-dir", str(run_dir), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env())
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    out, done = [], False
    try:
        for line in proc.stdout:
            out.append(line)
            if not done and when("".join(out)):
                then()
                done = True
        proc.wait()
    finally:
        timer.cancel()
    if proc.returncode < 0:
        pytest.fail(f"killed after {timeout} s: {' '.join(cmd)}\n{''.join(out)}")
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(out), "")


def test_a_drained_collector_releases_its_group_and_comes_back_as_a_worker(tmp_path, cfg, flat):
    """Collector 4 is listed in the drain file from the start: once the
    tasks it holds are done it releases its group, whose workers 5 and 6
    re-attach to the master and do accepted work there.  When both have,
    its line is removed: rank 4 comes back as a worker of its own and
    computes its tasks itself.  The parameters are the flat run's.  (Its
    group's workers and 2, 3 sleep 50 ms a task, so steps last long enough
    for the drain file to be watched.)"""
    rd = tmp_path / "drained"
    rd.mkdir()
    (rd / "drain").write_text("4\n")
    why = "its collector (rank 4) was drained"
    res = ok(train_and(7, cfg, rd, *COMMON, *tree(2),
                       "--set", 'faults.rules=[{rank = [2, 3, 5, 6], mode = "sleep", seconds = 0.05}]',
                       when=lambda out: all(re.search(rf"rank {r} \([^)]*\) re-attached to the master: {re.escape(why)}",
                                                      out) for r in (5, 6)),
                       then=lambda: update_drain(rd, [4], undo=True)))
    assert "collector 4 (" in res.stdout and "drained: its group re-attaches to the master" in res.stdout
    root = records(rd / "ledger.jsonl")
    assert [e["rank"] for e in root if e["ev"] == "drain"] == [4]
    back = [e["step"] for e in root if e["ev"] == "undrain" and e["rank"] == 4]
    assert len(back) == 1, res.stdout
    assert {e["rank"]: e["reason"] for e in root if e["ev"] == "readmit"} == {5: f"re-attached: {why}",
                                                                              6: f"re-attached: {why}"}
    accepted = collections.Counter(e["rank"] for e in root if e["ev"] == "copy" and e["state"] == "accepted")
    assert accepted[5] > 0 and accepted[6] > 0, accepted
    # back, rank 4 computes alone: its results are accepted, and each piece is its own
    assert [e for e in root if e["ev"] == "copy" and e["rank"] == 4 and e["state"] == "accepted"
            and e["step"] > back[0]], res.stdout
    group = records(rd / "ledger.collector-4.jsonl")
    assert {e["rank"] for e in group if e["ev"] == "copy" and e["step"] > back[0]} == {4}
    check_group_sums(rd, 4)
    np.testing.assert_allclose(params_of(rd), params_of(flat), rtol=1e-6, atol=1e-7)
    rep = ok(run(raven_cmd() + ["report", str(rd)], timeout=60))
    assert "integrity: OK" in rep.stdout, rep.stdout


def test_straggler_hung_and_drained_workers_inside_groups(tmp_path, cfg):
    """Inside the groups, by their collectors (9 ranks: 1 leads 2,3,4; 5
    leads 6,7,8): a slow worker (rank 3, 4x) takes no larger share of its
    group's work than the others; hung workers (ranks 6 and 8, at their
    first task from step 3: silent for 8 s, past the 3 s timeout, then they
    wake to take their stop) are given up on by their collector; a drained one (rank 7,
    listed in the drain file) gets no work -- and the parameters are those
    of one process on the same batches.  12 tasks a step keep the groups
    busy."""
    big = ["--set", "train.batch_size=384"]
    rd = tmp_path / "members"
    rd.mkdir()
    (rd / "drain").write_text("7\n")
    # without backups: a backup copy in the other group would finish the
    # run before the hung workers' timeout, and nothing would be given up on
    ok(train(9, cfg, rd, *COMMON, *big, *tree(2), "--set", "poc.worker_timeout_s=3", "--set", "poc.backup=false",
             "--set", 'faults.rules=[{rank = 3, mode = "slow", factor = 4.0}, '
                          '{rank = [6, 8], mode = "hang", seconds = 8.0, from_step = 3}]'))
    g1 = records(rd / "ledger.collector-1.jsonl")
    g5 = records(rd / "ledger.collector-5.jsonl")
    done = collections.Counter(e["rank"] for e in g1 if e["ev"] == "copy" and e["state"] == "accepted")
    assert 0 < done[3] <= min(done[2], done[4]), done      # the slow one never takes the larger share
    lost = [e for e in g5 if e["ev"] == "lost"]
    assert lost and {e["rank"] for e in lost} <= {6, 8} and all("hung" in e["reason"] for e in lost), lost
    assert [e["rank"] for e in g5 if e["ev"] == "drain"] == [7]
    assert not [e for e in g5 if e["ev"] == "copy" and e["rank"] == 7]
    one = tmp_path / "one"
    ok(train(1, cfg, one, *COMMON, *big))
    np.testing.assert_allclose(params_of(rd), params_of(one), rtol=1e-6, atol=1e-7)


def test_resume_from_a_star_onto_a_tree_and_back(tmp_path, cfg, flat):
    """Checkpoints do not depend on the tree: 4 steps flat, 4 on 2 groups
    (7 ranks), 4 flat on 3 ranks give the uninterrupted flat run."""
    rd = tmp_path / "hop"
    base = ["--set", "train.eval_every=0", "--set", "cluster.max_chunk=1"]
    ok(train(7, cfg, rd, *base, "--set", "train.max_steps=4", "--set", "cluster.collectors=0"))
    ok(train(7, cfg, rd, *base, "--set", "train.max_steps=8", *tree(2), "--resume"))
    ok(train(3, cfg, rd, *base, "--set", f"train.max_steps={STEPS}", "--resume"))
    assert json.loads((rd / "summary.json").read_text())["steps"] == STEPS
    np.testing.assert_allclose(params_of(rd), params_of(flat), rtol=1e-6, atol=1e-7)


# -- process failures (Open MPI with ULFM; see test_ulfm.py) -------------------------
VENV = Path(os.environ.get("RAVEN_OMPI_VENV", REPO / ".venv-ompi"))
needs_ompi = pytest.mark.skipif(not (VENV / "bin" / "mpiexec").exists(),
                                reason=f"no Open MPI venv at {VENV} (tests/run.sh builds it)")


@needs_ompi
@pytest.mark.parametrize("victim, what", [(2, "a worker"), (1, "a collector")])
def test_a_killed_worker_or_collector_is_survived(tmp_path, cfg, victim, what):
    """SIGKILL of a worker: its collector gives its tasks to the group.  Of a
    collector: its workers re-attach to rank 0 and its tasks go elsewhere.
    Either way nothing is lost or applied twice."""
    from tests.e2e.test_ulfm import ompi, run_ompi

    rd = tmp_path / "run"
    rules = f'faults.rules=[{{rank = {victim}, mode = "crash", from_step = 4}}]'
    res = run_ompi(ompi(7, ft=True) + ["train", str(cfg), "--run-dir", str(rd), *COMMON, *tree(2),
                                       "--set", rules], timeout=180, tries=2)
    assert res.returncode == 0, what + "\n" + res.stdout + res.stderr
    if victim == 1:
        assert "re-attached" in res.stdout
        assert [e["rank"] for e in records(rd / "ledger.jsonl") if e["ev"] == "lost"] == [1]
    else:
        assert [e["rank"] for e in records(rd / "ledger.collector-1.jsonl") if e["ev"] == "lost"] == [2]
    ref = tmp_path / "ref"
    ok(run_ompi(ompi(7, ft=False) + ["train", str(cfg), "--run-dir", str(ref), *COMMON,
                                     "--set", "cluster.collectors=0"], timeout=180))
    np.testing.assert_allclose(params_of(rd), params_of(ref), rtol=1e-6, atol=1e-7)
