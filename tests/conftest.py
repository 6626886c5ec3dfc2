"""Shared fixtures.

* ``tests/unit``  -- one process, no MPI.
* ``tests/mpi``   -- pytest-mpi bodies run under ``mpiexec -n 3 ... --with-mpi``
  (driven from ``tests/e2e/test_mpi_suite.py`` with a hard timeout; collected
  directly only when pytest is given ``--with-mpi``).
* ``tests/e2e``   -- the CLI under ``mpiexec`` as a user runs it, each run with
  a timeout so a hang fails instead of stalling CI.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# CUDA kernels run in numba's simulator unless a real GPU is asked for
# (RAVEN_TEST_GPU=1; see tests/gpu/conftest.py).  It must be set before
# numba is first imported, which is why it is here and not in tests/gpu.
if os.environ.get("RAVEN_TEST_GPU", "0") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"
EMBEDDED_MNIST = REPO / "data" / "mnist-small"


def pytest_ignore_collect(collection_path, config):
    # The pytest-mpi suite only makes sense under mpiexec with --with-mpi.
    p = Path(str(collection_path))
    if p.name == "mpi" and p.parent.name == "tests":
        return not config.getoption("--with-mpi", default=False)
    return None


def bin_dir() -> Path:
    return Path(sys.executable).parent


def mpiexec_cmd(n: int) -> list[str]:
    """mpiexec for the MPI that this venv's mpi4py uses, with the flags it needs here."""
    exe = shutil.which("mpiexec", path=str(bin_dir())) or shutil.which("mpiexec")
    if exe is None:
        pytest.skip("no mpiexec found (install raven-hpc[mpich] or a site MPI)")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout + ""
    cmd = [exe]
    if "open mpi" in out.lower() or "open-mpi" in out.lower() or "openrte" in out.lower():
        cmd += ["--oversubscribe", "--bind-to", "none"]
        if os.geteuid() == 0:
            cmd += ["--allow-run-as-root"]
    return cmd + ["-n", str(n)]


def raven_cmd() -> list[str]:
    exe = bin_dir() / "raven-hpc"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "raven_hpc.cli"]


def test_env() -> dict:
    env = dict(os.environ)
    env.setdefault("OMPI_MCA_pml", "ob1")
    env.setdefault("OMPI_MCA_btl", "self,sm")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env.setdefault(var, "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(cmd: list[str], timeout: float, cwd=None, check=False) -> subprocess.CompletedProcess:
    """Run a command with a hard timeout; a hang fails the test with its output."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=test_env())
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"timed out after {timeout} s: {' '.join(map(str, cmd))}\n"
                    f"stdout:\n{exc.stdout}\nstderr:\n{exc.stderr}")
    if check and res.returncode != 0:
        pytest.fail(f"exit {res.returncode}: {' '.join(map(str, cmd))}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}")
    return res


@pytest.fixture(scope="session")
def small_h5(tmp_path_factory) -> Path:
    """The embedded MNIST subset, cut to 2048 train / 512 test samples."""
    from raven_hpc.data import prepare

    out = tmp_path_factory.mktemp("data") / "small.h5"
    prepare(str(EMBEDDED_MNIST), str(out), kind="mnist", snippet_size=32, limit=2048)
    return out


@pytest.fixture(scope="session")
def full_mnist_h5(tmp_path_factory) -> Path:
    if not SHARED_MNIST.is_dir():
        pytest.skip("../shared/data/mnist is absent")
    from raven_hpc.data import prepare

    out = tmp_path_factory.mktemp("mnist") / "mnist.h5"
    prepare(str(SHARED_MNIST), str(out), kind="mnist", snippet_size=32)
    return out


def write_config(path: Path, data: Path, *, layers=((64, "relu"), (10, None)), epochs=2, batch=128,
                 task_snippets=2, lr=0.05, extra: str = "") -> Path:
    rows = []
    for units, act in layers:
        rows.append(f'  {{type = "dense", units = {units}' + (f', activation = "{act}"' if act else "") + "},")
    text = f"""
[data]
path = "{data}"
[model]
layers = [
{chr(10).join(rows)}
]
seed = 3
[optimizer]
name = "sgd"
lr = {lr}
momentum = 0.9
[train]
epochs = {epochs}
batch_size = {batch}
task_snippets = {task_snippets}
log_every = 5
[run]
progress = "lines"
{extra}
"""
    path.write_text(text)
    return path
