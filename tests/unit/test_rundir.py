"""The run directory claim (raven_hpc.rundir): one job at a time, writable,
or one clear error."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from raven_hpc import rundir
from raven_hpc.errors import RunDirError
from tests.conftest import REPO

HOLD = textwrap.dedent("""
    import sys, time
    from raven_hpc import rundir
    rundir.claim(sys.argv[1])
    print("held", flush=True)
    time.sleep(60)
""")


@pytest.fixture(autouse=True)
def _release():
    yield
    rundir.release()


def holder(d: Path) -> subprocess.Popen:
    """Another process holding d's lock (as a running job does)."""
    env = dict(os.environ, SLURM_JOB_ID="4242", PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(d)], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "held"
    return p


def test_claim_creates_the_directory_and_records_the_holder(tmp_path):
    d = tmp_path / "a" / "run"
    assert rundir.claim(d) is None
    info = json.loads((d / rundir.LOCK_NAME).read_text())
    assert info["pid"] == os.getpid() and info["host"] == os.uname().nodename
    assert rundir.claim(d) is None   # again from the same process: nothing to do
    assert not [p for p in d.iterdir() if p.name != rundir.LOCK_NAME]   # the write probe is gone


def test_a_second_job_is_refused_naming_the_directory_and_the_holder(tmp_path):
    d = tmp_path / "run"
    p = holder(d)
    try:
        with pytest.raises(RunDirError) as e:
            rundir.claim(d)
    finally:
        p.kill()
        p.wait()
    msg = str(e.value)
    assert f"run directory {d} is in use by Slurm job 4242" in msg
    assert f"pid {p.pid}" in msg and os.uname().nodename in msg and "--run-dir" in msg


def test_the_lock_file_of_a_dead_job_does_not_block(tmp_path):
    d = tmp_path / "run"
    p = holder(d)
    p.kill()
    p.wait()
    assert rundir.holder_of(d)["pid"] == p.pid   # the file stays behind
    assert rundir.claim(d) is None
    assert rundir.holder_of(d)["pid"] == os.getpid()


def test_released_lock_can_be_taken_by_another_process(tmp_path):
    d = tmp_path / "run"
    rundir.claim(d)
    rundir.release(d)
    p = holder(d)
    p.kill()
    p.wait()


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_file_in_the_way_is_one_clear_error(tmp_path, where):
    f = tmp_path / "taken"
    f.write_text("x")
    d = f if where == "a file" else f / "run"
    with pytest.raises(RunDirError, match="is a file, not a directory" if where == "a file" else "Not a directory"):
        rundir.claim(d)


READ_ONLY = textwrap.dedent("""
    import sys
    from raven_hpc import rundir
    from raven_hpc.errors import RunDirError
    try:
        rundir.claim(sys.argv[1])
    except RunDirError as exc:
        print(exc)
    else:
        print("claimed")
""")


def test_a_read_only_directory_is_one_clear_error():
    """Root writes anywhere, so as root the claim runs as user nobody."""
    d = Path(tempfile.mkdtemp(prefix="raven-ro-"))
    try:
        os.chmod(d, 0o555)
        cmd = [sys.executable, "-c", READ_ONLY, str(d)]
        if os.geteuid() == 0:
            try:
                nobody = pwd.getpwnam("nobody")
            except KeyError:
                pytest.skip("running as root and there is no user nobody to test a read-only directory with")
            if not shutil.which("setpriv"):
                pytest.skip("running as root and there is no setpriv to run as user nobody")
            cmd = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"] + cmd
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                             env=dict(os.environ, PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1"))
        if os.geteuid() == 0 and "Permission denied" in res.stderr and "raven_hpc" in res.stderr:
            pytest.skip(f"user nobody cannot import raven_hpc here: {res.stderr.strip().splitlines()[-1]}")
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == f"run directory {d} is not writable (Permission denied): checkpoints and " \
                                     "metrics go there; choose another --run-dir (or [run] dir)", res.stdout
    finally:
        os.chmod(d, 0o755)
        shutil.rmtree(d)
