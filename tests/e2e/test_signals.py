"""SIGUSR1 (Slurm's warning before a time limit) sent to every task: the
master writes a checkpoint at a step boundary and stops with one message;
workers ignore the signal; the run resumes from there."""
from __future__ import annotations

import json
import signal
import subprocess
import time

import h5py

from tests.conftest import mpiexec_cmd, raven_cmd, run, write_config
from tests.conftest import test_env as env_for_tests


def rank_pids(run_dir) -> list[int]:
    """The raven-hpc processes of this run (not mpiexec)."""
    out = subprocess.run(["ps", "-ewwo", "pid=,args="], capture_output=True, text=True).stdout
    pids = []
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if str(run_dir) in args and "raven-hpc" in args and "mpiexec" not in args.split()[0]:
            pids.append(int(pid))
    return pids


def test_sigusr1_checkpoints_and_stops_then_resumes(tmp_path, small_h5):
    cfg = write_config(tmp_path / "c.toml", small_h5, epochs=200, task_snippets=1)
    rd = tmp_path / "run"
    cmd = mpiexec_cmd(3) + raven_cmd() + ["train", str(cfg), "--run-dir", str(rd), "--set", "train.eval_every=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env_for_tests())
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            m = rd / "metrics.jsonl"
            if m.exists() and sum(1 for _ in m.open()) >= 2:
                break
            time.sleep(0.2)
        pids = rank_pids(rd)
        assert len(pids) == 3, (pids, proc.poll(), subprocess.run(["ps", "-ewwo", "pid=,args="], capture_output=True,
                                                                  text=True).stdout[-3000:])
        for pid in pids:
            subprocess.run(["kill", "-USR1", str(pid)])
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "stopped by SIGUSR1" in out and "--resume" in out, out
    assert "Traceback" not in out
    with h5py.File(rd / "checkpoint.h5", "r") as f:
        step = json.loads(f.attrs["train_state"])["step"]
    assert step >= 10
    last = [json.loads(x) for x in (rd / "ledger.jsonl").read_text().splitlines()][-1]
    assert last["ev"] == "end" and last["status"] == "interrupted" and last["step"] == step
    run(mpiexec_cmd(2) + raven_cmd() + ["train", str(cfg), "--run-dir", str(rd), "--resume",
                                        "--set", f"train.max_steps={step + 2}", "--set", "train.eval_every=0"],
        timeout=120, check=True)
    assert json.loads((rd / "summary.json").read_text())["steps"] == step + 2
