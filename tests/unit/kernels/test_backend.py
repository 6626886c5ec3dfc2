"""Backends: the CPU backend object, the CUDA backend's clear refusal, unknown names."""
from __future__ import annotations

import pytest

from raven_hpc.errors import ConfigError, RavenError
from raven_hpc.kernels import BackendUnavailableError, available_backends, get_kernel



def test_cuda_backend_raises_clear_error():
    if "cuda" in available_backends():  # pragma: no cover - GPU nodes with CUDA kernels
        pytest.skip("CUDA backend is available here")
    with pytest.raises(BackendUnavailableError, match="CUDA backend not available") as info:
        get_kernel("sgd_step", "cuda")
    assert isinstance(info.value, RavenError) and isinstance(info.value, ConfigError)


def test_unknown_backend():
    with pytest.raises(ConfigError, match="unknown kernel backend 'tpu'"):
        get_kernel("sgd_step", "tpu")


def test_backend_object_cpu_and_cuda_refusal():
    import numpy as np
    import pytest
    from raven_hpc.errors import ConfigError
    from raven_hpc.kernels import BackendUnavailableError, CpuBackend, get_backend, get_kernel

    be = get_backend("cpu")
    assert isinstance(be, CpuBackend)
    assert be.kernel("sgd_step") is get_kernel("sgd_step")
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(be.gemm(a, a.T), a @ a.T)
    assert be.to_host(be.to_device(a)) is a
    with pytest.raises(BackendUnavailableError):
        get_backend("cuda")
    with pytest.raises(ConfigError):
        get_backend("tpu")
