"""CPU and CUDA ranks in one job (the CUDA rank in numba's simulator, so
this runs in CI; with ``RAVEN_TEST_GPU=1`` on a GPU node it uses the GPU).

Rank 0 is the master, rank 1 a CPU worker, rank 2 a CUDA worker (MPMD:
``RAVEN_BACKEND`` is ``cpu`` for ranks 0-1 and ``cuda`` for rank 2;
the configuration is rank 0's, so a per-rank backend comes from the
rank's own environment).  Sums are float64 and
``max_chunk = 1``, so the job must give the parameters of a CPU-only run to
float32 round-off; with every task computed by both workers (redundancy 2),
their fingerprints must agree across the backends; and a CUDA rank
returning wrong numbers is caught and excluded like any other.
"""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from tests.conftest import mpiexec_cmd, raven_cmd, run

TIMEOUT = 300
STEPS = 3
GPU = os.environ.get("RAVEN_TEST_GPU", "0") == "1"


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    """A small synthetic problem (12 features, 3 classes) and a 12-8-3 MLP:
    small enough for the simulator, which runs every CUDA thread in Python."""
    from raven_hpc.data import prepare

    d = tmp_path_factory.mktemp("cuda")
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, 12)) * 2.0
    y = rng.integers(0, 3, 768)
    x = (centers[y] + rng.standard_normal((768, 12))).astype(np.float32)
    np.savez(d / "blobs.npz", x_train=x[:640], y_train=y[:640], x_test=x[640:], y_test=y[640:])
    prepare(str(d / "blobs.npz"), str(d / "blobs.h5"), snippet_size=16)
    path = d / "c.toml"
    path.write_text(f"""
[data]
path = "{d / 'blobs.h5'}"
[model]
layers = [{{type = "dense", units = 8, activation = "relu"}}, {{type = "dense", units = 3}}]
seed = 5
[optimizer]
name = "sgd"
lr = 0.1
momentum = 0.9
[train]
epochs = 1
batch_size = 32
task_snippets = 1
max_steps = {STEPS}
eval_every = 0
[cluster]
max_chunk = 1
""")
    return path


def mixed(cfg, run_dir, *extra):
    """mpiexec: ranks 0-1 on the CPU, rank 2 on CUDA."""
    args = ["train", str(cfg), "--run-dir", str(run_dir), *extra]
    head = mpiexec_cmd(2)   # ends with "-n 2", replaced below by the two segments
    def env(value):
        if "--oversubscribe" in head:  # pragma: no cover - Open MPI spells it -x
            return ["-x", f"RAVEN_BACKEND={value}"]
        return ["-env", "RAVEN_BACKEND", value]

    cmd = head[:-2] + ["-n", "2", *env("cpu"), *raven_cmd(), *args, ":", "-n", "1", *env("cuda"), *raven_cmd(), *args]
    return run(cmd, timeout=TIMEOUT)


def ok(res):
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def params_of(run_dir):
    with h5py.File(run_dir / "checkpoint.h5", "r") as f:
        return f["params"][()]


def ledger(run_dir):
    return [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def cpu_only(cfg, tmp_path_factory):
    rd = tmp_path_factory.mktemp("cpu") / "run"
    ok(run(mpiexec_cmd(3) + raven_cmd() + ["train", str(cfg), "--run-dir", str(rd), "--set", 'cluster.backend="cpu"'],
           timeout=TIMEOUT))
    return rd


def test_a_cuda_worker_and_a_cpu_worker_give_the_cpu_parameters(cfg, cpu_only, tmp_path):
    """Redundancy 1: each task is computed once, by whichever rank the
    scheduler picks.  The simulated GPU takes ~3 s a task, so the CPU rank
    sleeps 4 s a task to leave it a share."""
    rd = tmp_path / "mixed"
    res = ok(mixed(cfg, rd, "--set", 'faults.rules=[{rank = 1, mode = "sleep", seconds = 4.0}]'))
    done = {e["rank"] for e in ledger(rd) if e["ev"] == "copy" and e.get("state") == "accepted"}
    assert {1, 2} <= done, done
    np.testing.assert_allclose(params_of(rd), params_of(cpu_only), rtol=1e-5, atol=1e-6)
    assert "rank 2" in res.stdout and "cuda" in res.stdout, res.stdout   # the start-up line names the backend


def test_copies_on_cpu_and_cuda_agree_and_a_wrong_cuda_rank_is_excluded(cfg, cpu_only, tmp_path):
    """Redundancy 2: every task is computed on both backends and compared by
    fingerprint (poc.rtol).  Honest: no disputes.  Rank 2 (CUDA) halving its
    gradients: the master arbitrates, names rank 2 and excludes it; no wrong
    update is applied."""
    both = ["--set", "poc.redundancy=2", "--set", "poc.quorum=2"]
    rd = tmp_path / "agree"
    ok(mixed(cfg, rd, *both))
    evs = ledger(rd)
    assert not [e for e in evs if e["ev"] in ("strike", "exclude", "arbitrated")], \
        [e for e in evs if e["ev"] in ("strike", "exclude", "arbitrated")]
    np.testing.assert_allclose(params_of(rd), params_of(cpu_only), rtol=1e-5, atol=1e-6)

    rd = tmp_path / "wrong"
    res = ok(mixed(cfg, rd, *both, "--set", 'faults.rules=[{rank = 2, mode = "scale", factor = 0.5}]'))
    assert [e["rank"] for e in ledger(rd) if e["ev"] == "exclude"] == [2], res.stdout
    np.testing.assert_allclose(params_of(rd), params_of(cpu_only), rtol=1e-5, atol=1e-6)


def test_cuda_on_a_node_without_a_gpu_is_one_line_and_every_rank_down(cfg, tmp_path):
    """``backend = "cuda"`` where numba finds no GPU (and the simulator is
    off): one clear line, a non-zero exit, every rank gone within seconds."""
    import subprocess
    import time

    from raven_hpc.kernels import cuda
    from tests.conftest import test_env

    if cuda.device_count():  # pragma: no cover - GPU nodes
        pytest.skip("this node has a GPU")
    env = {k: v for k, v in test_env().items() if k != "NUMBA_ENABLE_CUDASIM"}
    cmd = mpiexec_cmd(3) + raven_cmd() + ["train", str(cfg), "--run-dir", str(tmp_path / "r"),
                                          "--set", 'cluster.backend="cuda"']
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    took = time.monotonic() - t0
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert out.count("CUDA backend not available") == 1, out
    assert "Traceback" not in out, out
    assert took < 60, f"{took:.0f} s"
