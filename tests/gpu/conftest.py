"""CUDA kernels against the CPU backend.

Without ``RAVEN_TEST_GPU=1`` the kernels run in numba's simulator
(``NUMBA_ENABLE_CUDASIM=1``, set by ``tests/conftest.py``): every kernel is
exercised in CI on small shapes.  With ``RAVEN_TEST_GPU=1`` they run on the
GPU and a missing GPU is a failure, not a skip.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

WANT_GPU = os.environ.get("RAVEN_TEST_GPU", "0") == "1"


@pytest.fixture(scope="session")
def cuda_backend():
    from raven_hpc.kernels import cuda

    if not cuda.is_available():
        if WANT_GPU:
            pytest.fail("RAVEN_TEST_GPU=1 but numba finds no CUDA GPU here")
        pytest.skip("no CUDA GPU and the simulator is off")
    if WANT_GPU and cuda.simulated():
        pytest.fail("RAVEN_TEST_GPU=1 but NUMBA_ENABLE_CUDASIM=1 is set")
    return cuda.CudaBackend()


def run_both(backend, op, args, outs=(), rtol=1e-5, atol=1e-6):
    """Run the CPU kernel of ``op`` on host copies of ``args`` and the CUDA
    one on device copies; assert the arrays at positions ``outs`` (written
    in place by the kernels) and the return values agree.  Scalars pass
    through unchanged.  Returns ``(cpu_args, cuda_args_on_host, cpu_ret, cuda_ret)``."""
    from raven_hpc.kernels import get_kernel

    host = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    dev = [backend.to_device(a) if isinstance(a, np.ndarray) else a for a in args]
    r_cpu = get_kernel(op, "cpu")(*host)
    r_gpu = backend.kernel(op)(*dev)
    back = [backend.to_host(d) if isinstance(a, np.ndarray) else d for a, d in zip(args, dev)]
    for i in outs:
        np.testing.assert_allclose(back[i], host[i], rtol=rtol, atol=atol, err_msg=f"{op}: argument {i}")
    if r_cpu is not None or r_gpu is not None:
        np.testing.assert_allclose(np.asarray(r_gpu, dtype=np.float64), np.asarray(r_cpu, dtype=np.float64),
                                   rtol=rtol, atol=atol, err_msg=f"{op}: return value")
    return host, back, r_cpu, r_gpu
