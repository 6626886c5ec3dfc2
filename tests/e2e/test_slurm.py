"""``slurm/train.sbatch`` on a real single-node Slurm, submitted as a user
submits it (only the config path given).

A private cluster in a temp dir: munged (as user munge, own key and
socket), slurmctld and slurmd on free ports, ``proctrack/linuxproc``,
``task/none``, ``select/cons_tres``; ``sbatch -O`` runs the script's 4 tasks
on however few CPUs there are.  ``AuthInfo=cred_expire`` is short because a
requeued job waits that long before it starts again (120 s by default).

* Time limit: ``scancel --batch -s USR1`` is what ``--signal=B:USR1@120``
  does before the limit.  Every task exits 75 (none killed), the script
  requeues the job, the requeued job continues from the checkpoint and ends
  with the parameters of an uninterrupted ``mpiexec`` run.
* ``scancel``: a checkpoint, every task exits 75, no requeue; submitting the
  same command again continues in the same run directory.

Skips (with the reason) unless running as root with Debian's ``slurm-wlm``
and ``munge`` installed (``.ci/run`` installs them).  Every wait has a
deadline; the cluster is stopped at the end, also after a failure.
"""
from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from raven_hpc.errors import EXIT_RESUMABLE
from tests.conftest import REPO, bin_dir, mpiexec_cmd, raven_cmd, run, write_config
from tests.conftest import test_env as env_for_tests

TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "squeue", "sinfo", "setpriv")
STEPS = 48             # 3 epochs of the 2048-sample set at batch 128
SLOW_S = 0.1           # each worker sleeps this long per task: >= 4.8 s of training to stop in
JOB_TIMEOUT = 240
OMPI_VENV = Path(os.environ.get("RAVEN_OMPI_VENV", REPO / ".venv-ompi"))


def _why_skip() -> str | None:
    if os.geteuid() != 0:
        return "needs root (slurmd runs jobs as their user, munged as user munge)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"Slurm/munge not installed (missing {', '.join(missing)}; apt-get install slurm-wlm munge)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no user munge (apt-get install munge)"
    return None


pytestmark = pytest.mark.skipif(_why_skip() is not None, reason=str(_why_skip()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A private single-node Slurm; ``sh`` runs its client commands."""

    def __init__(self, base: Path):
        self.base = base
        self.munge_dir = Path(tempfile.mkdtemp(prefix="raven-munge-"))   # munged checks the whole path
        self.conf = base / "slurm.conf"
        self.env = dict(env_for_tests(), SLURM_CONF=str(self.conf))
        self.env["PATH"] = f"{bin_dir()}:{self.env.get('PATH', '')}"
        self.env["RAVEN_VENV"] = str(bin_dir().parent)
        self.pidfiles = [base / "slurmd.pid", base / "slurmctld.pid", self.munge_dir / "munged.pid"]

    def sh(self, *cmd, timeout: float = 60, check: bool = True, cwd=None) -> subprocess.CompletedProcess:
        try:
            res = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=timeout,
                                 env=self.env, cwd=cwd)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"timed out after {timeout} s: {' '.join(map(str, cmd))}\n{exc.stdout}\n{exc.stderr}")
        if check and res.returncode != 0:
            pytest.fail(f"exit {res.returncode}: {' '.join(map(str, cmd))}\n{res.stdout}\n{res.stderr}\n{self.logs()}")
        return res

    def start(self) -> None:
        mu = pwd.getpwnam("munge")
        os.chmod(self.munge_dir, 0o755)
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        for p in (self.munge_dir, key):
            os.chown(p, mu.pw_uid, mu.pw_gid)
        sock = self.munge_dir / "munge.socket"
        self.sh("setpriv", f"--reuid={mu.pw_uid}", f"--regid={mu.pw_gid}", "--clear-groups", "munged",
                f"--socket={sock}", f"--key-file={key}", f"--pid-file={self.munge_dir}/munged.pid",
                f"--log-file={self.munge_dir}/munged.log", f"--seed-file={self.munge_dir}/munged.seed")
        b = self.base
        for d in ("state", "spool"):
            (b / d).mkdir()
        self.conf.write_text(f"""\
ClusterName=raventest
SlurmctldHost={socket.gethostname()}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={sock},cred_expire=5
CredType=cred/munge
StateSaveLocation={b}/state
SlurmdSpoolDir={b}/spool
SlurmctldPidFile={b}/slurmctld.pid
SlurmdPidFile={b}/slurmd.pid
SlurmctldLogFile={b}/slurmctld.log
SlurmdLogFile={b}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=30
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
        self.sh("slurmctld", "-f", self.conf)
        self.sh("slurmd", "-f", self.conf, "-N", "localhost")
        deadline = time.monotonic() + 60
        while self.sh("sinfo", "-h", "-o", "%T", check=False).stdout.strip() != "idle":
            if time.monotonic() > deadline:
                pytest.fail(f"the Slurm node did not come up within 60 s\n{self.logs()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Cancel every job, wait for them to end, stop the daemons."""
        try:
            jobs = self.sh("squeue", "-h", "-o", "%i", check=False, timeout=20).stdout.split()
            if jobs:
                self.sh("scancel", *jobs, check=False, timeout=20)
                deadline = time.monotonic() + 45
                while time.monotonic() < deadline and self.sh("squeue", "-h", "-o", "%i", check=False,
                                                              timeout=20).stdout.strip():
                    time.sleep(0.5)
        finally:
            _stop_pids(self.pidfiles)
            shutil.rmtree(self.munge_dir, ignore_errors=True)

    def job(self, jid: str) -> dict:
        out = self.sh("scontrol", "show", "job", "-o", jid).stdout
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

    def wait_job(self, jid: str, states: set, timeout: float = JOB_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(jid)
            if info.get("JobState") in states:
                return info
            if time.monotonic() > deadline:
                pytest.fail(f"job {jid} not {states} after {timeout} s: {info}\n{self.logs()}")
            time.sleep(0.5)

    def logs(self) -> str:
        out = []
        for name in ("slurmctld.log", "slurmd.log"):
            p = self.base / name
            if p.exists():
                out.append(f"--- {name}\n" + "\n".join(p.read_text().splitlines()[-30:]))
        for p in sorted(self.base.glob("**/raven-hpc-*.out")):
            out.append(f"--- {p}\n{p.read_text()[-4000:]}")
        return "\n".join(out)


def _stop_pids(pidfiles) -> None:
    """SIGTERM to every daemon named in pidfiles, SIGKILL to those still there 10 s later."""
    pids = []
    for pidfile in pidfiles:
        try:
            pids.append(int(pidfile.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            pass
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _alive(pid)]
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_h5):
    """The parameters of an uninterrupted mpiexec run of the same config."""
    base = tmp_path_factory.mktemp("reference")
    cfg = config(base, small_h5, base / "run")
    run(mpiexec_cmd(4) + raven_cmd() + ["train", str(cfg), "--set", "faults.rules=[]"], timeout=JOB_TIMEOUT,
        check=True)
    return params_of(base / "run")


def config(folder: Path, data: Path, run_dir: Path) -> Path:
    """The job's config: a small MLP over the embedded MNIST subset, a checkpoint every 5 steps,
    workers slowed so that there is time to stop it, one task per copy (how tasks merge into
    chunks depends on timings: round-off that many steps would grow)."""
    return write_config(folder / "c.toml", data, epochs=STEPS // 16, task_snippets=1,
                        extra=f'dir = "{run_dir}"\ncheckpoint_every_steps = 5\n'
                              f'[cluster]\nmax_chunk = 1\n'
                              f'[faults]\nrules = [{{rank = [1, 2, 3], mode = "sleep", seconds = {SLOW_S}}}]\n')


def params_of(run_dir: Path):
    with h5py.File(run_dir / "checkpoint.h5", "r") as f:
        return f["params"][()]


def submit(cluster: Cluster, folder: Path, cfg: Path, env: dict | None = None) -> str:
    export = ["--export=" + ",".join(["ALL"] + [f"{k}={v}" for k, v in (env or {}).items()])]
    res = cluster.sh("sbatch", "--parsable", "-O", *export, REPO / "slurm" / "train.sbatch", cfg, cwd=folder)
    return res.stdout.strip().split(";")[0]


def wait_for_steps(cluster: Cluster, jid: str, run_dir: Path, steps: int, timeout: float = JOB_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    m = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if m.exists() and sum('"event": "step"' in x for x in m.read_text().splitlines()) >= steps // 5:
            return
        state = cluster.job(jid).get("JobState")
        if state not in ("PENDING", "RUNNING", "CONFIGURING"):
            pytest.fail(f"job {jid} is {state} before step {steps}\n{cluster.logs()}")
        time.sleep(0.2)
    pytest.fail(f"job {jid}: no step {steps} within {timeout} s\n{cluster.logs()}")


def assert_every_task_exited_resumable(out: str) -> None:
    """srun's report of the step: every one of the 4 tasks exited 75, none killed."""
    if " srun " not in out.splitlines()[0] + " ":
        return   # launched with mpiexec: the script's exit status says it
    codes = {}
    for ranks, code in re.findall(r"tasks? ([\d,-]+): Exited with exit code (\d+)", out):
        for part in ranks.split(","):
            lo, _, hi = part.partition("-")
            for task in range(int(lo), int(hi or lo) + 1):
                codes[task] = int(code)
    assert codes == {task: EXIT_RESUMABLE for task in range(4)}, out
    assert "Killed" not in out, out


def ledger_runs(run_dir: Path) -> tuple[list, list]:
    rec = [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in rec if r["ev"] == "run"], [r for r in rec if r["ev"] == "end"]


@pytest.mark.parametrize("venv", ["main", "Open MPI"])
def test_time_limit_signal_checkpoints_requeues_and_the_job_finishes_as_if_never_stopped(
        cluster, reference, tmp_path, small_h5, venv):
    """Also with Open MPI (the venv tests/run.sh builds): Debian's Slurm has no
    usable pmix, so the script falls back to mpiexec inside the allocation."""
    env = {}
    if venv == "Open MPI":
        if not (OMPI_VENV / "bin" / "mpiexec").exists():
            pytest.skip(f"no Open MPI venv at {OMPI_VENV} (tests/run.sh builds it)")
        env["RAVEN_VENV"] = str(OMPI_VENV)
    rd = tmp_path / "run"
    cfg = config(tmp_path, small_h5, rd)
    jid = submit(cluster, tmp_path, cfg, env)
    wait_for_steps(cluster, jid, rd, 10)
    cluster.sh("scancel", "--batch", "-s", "USR1", jid)   # what --signal=B:USR1@120 does
    info = cluster.wait_job(jid, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"})
    out = (tmp_path / f"raven-hpc-{jid}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, out)
    assert info["Restarts"] == "1", (info, out)
    assert ("Open MPI" in out and ": mpiexec -n 4" in out) if venv == "Open MPI" else "srun --mpi=pmi2" in out, out
    assert "stopped by SIGUSR1" in out, out
    assert_every_task_exited_resumable(out)
    assert "requeueing job" in out and "(restart 1)" in out and "resuming from" in out, out
    assert "Killed" not in out and "Traceback" not in out and "raven-hpc: error" not in out, out
    runs, ends = ledger_runs(rd)
    assert [r["resumed"] for r in runs] == [False, True], runs
    assert ends[-1]["status"] == "finished" and 10 <= runs[1]["start_step"] < STEPS, (runs, ends)
    assert json.loads((rd / "summary.json").read_text())["steps"] == STEPS
    np.testing.assert_allclose(params_of(rd), reference, rtol=1e-5, atol=1e-6)


def test_scancel_checkpoints_without_requeue_and_a_resubmit_continues(cluster, reference, tmp_path, small_h5):
    rd = tmp_path / "run"
    cfg = config(tmp_path, small_h5, rd)
    jid = submit(cluster, tmp_path, cfg)
    wait_for_steps(cluster, jid, rd, 10)
    cluster.sh("scancel", jid)
    info = cluster.wait_job(jid, {"CANCELLED", "COMPLETED", "FAILED"})
    # the batch script has until KillWait to report; then the job is over for good
    deadline = time.monotonic() + 60
    while cluster.sh("squeue", "-h", "-j", jid, check=False).stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.5)
    info = cluster.job(jid)
    out = (tmp_path / f"raven-hpc-{jid}.out").read_text()
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", (info, out)
    assert "stopped by SIGTERM" in out, out
    assert_every_task_exited_resumable(out)
    assert "requeueing" not in out and "Killed" not in out and "Traceback" not in out, out
    runs, ends = ledger_runs(rd)
    assert len(runs) == 1 and [e["status"] for e in ends] == ["interrupted"], (runs, ends)
    stopped_at = ends[0]["step"]
    assert 10 <= stopped_at < STEPS
    # the same command again: same run directory, continues from the checkpoint
    jid2 = submit(cluster, tmp_path, cfg)
    info = cluster.wait_job(jid2, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
    out2 = (tmp_path / f"raven-hpc-{jid2}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, out2)
    assert f"resuming from {rd / 'checkpoint.h5'} (epoch {stopped_at // 16}, step {stopped_at})" in out2, out2
    runs, _ = ledger_runs(rd)
    assert [r["start_step"] for r in runs] == [0, stopped_at]
    np.testing.assert_allclose(params_of(rd), reference, rtol=1e-5, atol=1e-6)
