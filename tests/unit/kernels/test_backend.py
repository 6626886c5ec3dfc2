"""Backends: the CPU backend object, the CUDA backend under the simulator and
its clear refusal on a node without a GPU, unknown names."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from raven_hpc.errors import ConfigError
from raven_hpc.kernels import CpuBackend, get_backend, get_kernel


def test_unknown_backend():
    with pytest.raises(ConfigError, match="unknown kernel backend 'tpu'"):
        get_kernel("sgd_step", "tpu")
    with pytest.raises(ConfigError):
        get_backend("tpu")


def test_cpu_backend_object():
    be = get_backend("cpu")
    assert isinstance(be, CpuBackend) and be.xp is np
    assert be.kernel("sgd_step") is get_kernel("sgd_step")
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(be.gemm(a, a.T), a @ a.T)
    assert be.to_host(be.to_device(a)) is a
    out = np.empty_like(a)
    assert be.to_host(a, out=out) is out and np.array_equal(out, a)


def test_cuda_backend_under_the_simulator_has_every_cpu_op():
    from raven_hpc.kernels import cuda, kernel_ops

    if not cuda.simulated():
        pytest.skip("the simulator is off (RAVEN_TEST_GPU=1)")
    be = get_backend("cuda")
    assert be.name == "cuda" and be.gemm_impl == "numba" and "simulator" in be.describe()
    missing = [op for op in kernel_ops("cpu") if op not in kernel_ops("cuda")]
    assert not missing, f"ops without a CUDA kernel: {missing}"
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    d = be.to_device(a)
    assert d is not a
    np.testing.assert_array_equal(be.to_host(be.gemm(d, be.to_device(a.T.copy()))), a @ a.T)


def test_cuda_without_a_gpu_is_one_clear_refusal():
    """Without the simulator and without a GPU, asking for CUDA raises a
    ConfigError naming the reason (checked in a fresh process: the
    simulator is chosen when numba is first imported)."""
    code = ("from raven_hpc.kernels import get_backend, cuda\n"
            "if cuda.device_count():\n    print('GPU'); raise SystemExit\n"
            "try:\n    get_backend('cuda')\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if out.stdout.strip() == "GPU":  # pragma: no cover - GPU nodes
        pytest.skip("this node has a GPU")
    assert "BackendUnavailableError CUDA backend not available" in out.stdout, out.stdout + out.stderr


def test_auto_takes_the_cpu_without_a_real_gpu_and_says_why():
    """The simulator is used only when CUDA is asked for by name: "auto" on
    a node without a GPU is the CPU, with the reason kept for the logs."""
    from raven_hpc.kernels import auto_reason, cuda

    if cuda.device_count():  # pragma: no cover - GPU nodes
        pytest.skip("this node has a GPU")
    be = get_backend("auto")
    assert isinstance(be, CpuBackend) and be.label() == "cpu"
    assert "no CUDA GPU" in auto_reason()
    assert cuda.local_device() is None


def test_a_ranks_gpu_is_its_local_rank_modulo_the_gpus(monkeypatch):
    from raven_hpc.kernels import cuda

    monkeypatch.setattr(cuda, "device_count", lambda: 4)
    for local, want in [(0, 0), (1, 1), (5, 1), (8, 0)]:
        cuda.set_local_rank(local)
        assert cuda.local_device() == want
    cuda.set_local_rank(0)
