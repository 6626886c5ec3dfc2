"""Stopping and resuming as batch systems do it, under mpiexec.

* SIGUSR1 (Slurm's warning before a time limit) or SIGTERM (scancel), sent
  to every task as srun does, or to the master alone: the master writes a
  checkpoint at a step boundary and stops the workers; every rank exits with
  EXIT_RESUMABLE (75); ``--resume auto`` then finishes with the parameters
  of an uninterrupted run.
* ``--resume`` needs a checkpoint; ``--resume auto`` starts fresh without one.
* The run directory: a second job on it is refused while the first holds
  its lock; a run directory that is a file ends every rank with one line.
"""
from __future__ import annotations

import json
import os
import subprocess
import time

import h5py
import numpy as np
import pytest

from raven_hpc.errors import EXIT_RESUMABLE
from tests.conftest import mpiexec_cmd, raven_cmd, run, write_config
from tests.conftest import test_env as env_for_tests

TIMEOUT = 120
STEPS = 160        # 10 epochs of the 2048-sample set at batch 128
SLOW = 'faults.rules=[{rank = [1, 2], mode = "sleep", seconds = 0.05}]'   # >= 8 s of steps to stop in


def rank_pids(run_dir) -> list[int]:
    """The raven-hpc rank processes of this run (not mpiexec, not the exit-code wrapper)."""
    out = subprocess.run(["ps", "-ewwo", "pid=,args="], capture_output=True, text=True).stdout
    pids = []
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if (str(run_dir) in args and "raven-hpc" in args and "mpiexec" not in args.split()[0]
                and "rank_rc" not in args):
            pids.append(int(pid))
    return pids


def master_pid(run_dir) -> int:
    with open(run_dir / "run.lock") as fh:
        return json.load(fh)["pid"]


def rank_rc_wrapper(tmp_path):
    """A wrapper that records each rank's exit status in rc.<rank>."""
    w = tmp_path / "rank_rc.sh"
    w.write_text('#!/bin/bash\n"$@"; rc=$?\n'
                 'echo $rc > "$(dirname "$0")/rc.${PMI_RANK:-${OMPI_COMM_WORLD_RANK:-$$}}"\nexit $rc\n')
    w.chmod(0o755)
    return [str(w)]


def rank_rcs(tmp_path) -> dict:
    return {p.name: int(p.read_text()) for p in sorted(tmp_path.glob("rc.*"))}


def wait_for_steps(proc, run_dir, steps: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    m = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if m.exists() and sum('"event": "step"' in x for x in m.read_text().splitlines()) >= steps // 5:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before step {steps}:\n{proc.communicate()[0]}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"no step {steps} within {timeout} s:\n{proc.communicate()[0]}")


def params_of(run_dir):
    with h5py.File(run_dir / "checkpoint.h5", "r") as f:
        return f["params"][()]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory, small_h5):
    # one task per copy (no chunks): how tasks merge depends on timings, and
    # 160 steps of momentum SGD grow that float32 round-off past the tolerance
    return write_config(tmp_path_factory.mktemp("signals") / "c.toml", small_h5, epochs=10, task_snippets=1,
                        extra="checkpoint_every_steps = 40\n[cluster]\nmax_chunk = 1")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cfg):
    """The parameters of the uninterrupted run."""
    rd = tmp_path_factory.mktemp("reference") / "run"
    run(mpiexec_cmd(3) + raven_cmd() + ["train", str(cfg), "--run-dir", str(rd), "--set", "train.eval_every=0"],
        timeout=TIMEOUT, check=True)
    return params_of(rd)


@pytest.mark.parametrize("sig, to", [("USR1", "every rank"), ("TERM", "every rank"), ("USR1", "the master")])
def test_a_signal_checkpoints_every_rank_exits_resumable_and_resume_auto_finishes_the_run(
        tmp_path, cfg, reference, sig, to):
    rd = tmp_path / "run"
    cmd = (mpiexec_cmd(3) + rank_rc_wrapper(tmp_path) + raven_cmd()
           + ["train", str(cfg), "--run-dir", str(rd), "--resume", "auto", "--set", "train.eval_every=0",
              "--set", SLOW])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env_for_tests())
    try:
        wait_for_steps(proc, rd, 10)
        pids = rank_pids(rd)
        assert len(pids) == 3, pids
        if sig == "USR1" and to == "every rank":
            # a second job on the same run directory is refused while this one runs
            res = run(mpiexec_cmd(2) + raven_cmd() + ["train", str(cfg), "--run-dir", str(rd), "--resume", "auto"],
                      timeout=TIMEOUT)
            assert res.returncode == 2, res.stdout + res.stderr
            assert f"run directory {rd} is in use" in res.stderr, res.stderr
            assert f"pid {master_pid(rd)}" in res.stderr and os.uname().nodename in res.stderr, res.stderr
            assert res.stderr.count("raven-hpc: error:") == 1 and "Traceback" not in res.stderr
        for pid in pids if to == "every rank" else [master_pid(rd)]:
            os.kill(pid, getattr(__import__("signal"), f"SIG{sig}"))
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert f"stopped by SIG{sig}" in out and "--resume" in out, out
    assert f"exit status {EXIT_RESUMABLE} (resumable)" in out, out
    assert "Traceback" not in out and "raven-hpc: error" not in out, out
    # every rank (not only the one mpiexec reports) ends resumable
    assert proc.returncode == EXIT_RESUMABLE, out
    assert sorted(rank_rcs(tmp_path).values()) == [EXIT_RESUMABLE] * 3, (rank_rcs(tmp_path), out)
    with h5py.File(rd / "checkpoint.h5", "r") as f:
        step = json.loads(f.attrs["train_state"])["step"]
    assert 10 <= step < STEPS
    last = [json.loads(x) for x in (rd / "ledger.jsonl").read_text().splitlines()][-1]
    assert last["ev"] == "end" and last["status"] == "interrupted" and last["step"] == step
    if (sig, to) != ("USR1", "every rank"):
        return
    # the same command again continues (on another number of ranks) and ends
    # with the parameters of the run that was never stopped
    res = run(mpiexec_cmd(2) + raven_cmd() + ["train", str(cfg), "--run-dir", str(rd), "--resume", "auto",
                                              "--set", "train.eval_every=0"], timeout=TIMEOUT, check=True)
    assert f"resuming from {rd / 'checkpoint.h5'}" in res.stdout, res.stdout
    assert json.loads((rd / "summary.json").read_text())["steps"] == STEPS
    np.testing.assert_allclose(params_of(rd), reference, rtol=1e-5, atol=1e-6)


def test_resume_without_a_checkpoint_is_an_error_naming_the_run_directory(tmp_path, cfg):
    rd = tmp_path / "empty"
    res = run(mpiexec_cmd(3) + raven_cmd() + ["train", str(cfg), "--run-dir", str(rd), "--resume"], timeout=TIMEOUT)
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"the run directory {rd} holds no checkpoint.h5" in res.stderr, res.stderr
    assert "--resume auto" in res.stderr
    assert res.stderr.count("raven-hpc: error:") == 1 and "Traceback" not in res.stderr
    assert not rd.exists()


def test_resume_auto_starts_fresh_without_a_checkpoint_and_continues_with_one(tmp_path, cfg):
    rd = tmp_path / "run"
    first = run(mpiexec_cmd(2) + raven_cmd() + ["train", str(cfg), "--run-dir", str(rd), "--resume", "auto",
                                                "--set", "train.max_steps=6", "--set", "train.eval_every=0"],
                timeout=TIMEOUT, check=True)
    assert "resuming" not in first.stdout
    assert json.loads((rd / "summary.json").read_text())["steps"] == 6
    # the config's run.resume = "auto" does the same as the flag
    again = run(mpiexec_cmd(2) + raven_cmd() + ["train", str(cfg), "--run-dir", str(rd), "--set", 'run.resume="auto"',
                                                "--set", "train.max_steps=9", "--set", "train.eval_every=0"],
                timeout=TIMEOUT, check=True)
    assert "resuming from" in again.stdout and "(epoch 0, step 6)" in again.stdout, again.stdout
    assert json.loads((rd / "summary.json").read_text())["steps"] == 9
    # without --resume an existing checkpoint is still refused
    res = run(mpiexec_cmd(2) + raven_cmd() + ["train", str(cfg), "--run-dir", str(rd)], timeout=TIMEOUT)
    assert res.returncode == 2 and "--resume" in res.stderr, res.stderr


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_run_directory_that_is_a_file_ends_every_rank_with_one_line(tmp_path, cfg, where):
    f = tmp_path / "taken"
    f.write_text("not a directory\n")
    rd = f if where == "a file" else f / "run"
    res = run(mpiexec_cmd(3) + raven_cmd() + ["train", str(cfg), "--run-dir", str(rd)], timeout=TIMEOUT)
    assert res.returncode == 2, res.stdout + res.stderr
    assert str(rd) in res.stderr and ("is a file" in res.stderr or "Not a directory" in res.stderr), res.stderr
    assert res.stderr.count("raven-hpc: error:") == 1 and "Traceback" not in res.stderr, res.stderr
