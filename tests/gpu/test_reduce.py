"""CUDA reductions (kernels/cuda/reduce.py) against raven_hpc.kernels.reduce.

The CPU functions are not registered kernels, so each test calls both
directly: the CUDA one on device copies through the backend, the CPU one on
host copies.
"""
from __future__ import annotations

import numpy as np
import pytest

from raven_hpc.kernels import reduce as cpu

DTYPES = (np.float32, np.float64)


@pytest.fixture
def launch():
    from raven_hpc.kernels.cuda import _launch

    return _launch


def _fp_cuda(backend, x, seed):
    out = backend.zeros(cpu.FP_SIZE, np.float64)
    ok = backend.kernel("fingerprint")(backend.to_device(x), seed, out)
    return ok, backend.to_host(out)


def _fp_cpu(x, seed):
    out = np.zeros(cpu.FP_SIZE, np.float64)
    return cpu.fingerprint(x, seed, out), out


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_finite(cuda_backend, dtype):
    fn = cuda_backend.kernel("all_finite")
    x = np.random.default_rng(1).standard_normal(100).astype(dtype)
    assert fn(cuda_backend.to_device(x)) is True
    for pos, bad in ((0, np.nan), (50, np.inf), (99, -np.inf)):
        y = x.copy()
        y[pos] = bad
        assert cpu.all_finite(y) is False
        assert fn(cuda_backend.to_device(y)) is False, (pos, bad)
    assert fn(cuda_backend.to_device(np.zeros(0, dtype))) is True


def test_all_finite_huge_is_finite(cuda_backend):
    x = np.full(40, np.finfo(np.float32).max, np.float32)
    assert cuda_backend.kernel("all_finite")(cuda_backend.to_device(x)) is True


@pytest.mark.parametrize("op", ["accumulate", "assign"])
def test_accumulate_assign(cuda_backend, op):
    rng = np.random.default_rng(2)
    acc = rng.standard_normal(301)
    x = rng.standard_normal(301).astype(np.float32)
    want = acc.copy()
    getattr(cpu, op)(want, x)
    dev = cuda_backend.to_device(acc)
    assert cuda_backend.kernel(op)(dev, cuda_backend.to_device(x)) is None
    np.testing.assert_array_equal(cuda_backend.to_host(dev), want)


def test_accumulate_only_touches_the_length_of_x(cuda_backend):
    acc = np.arange(50, dtype=np.float64)
    x = np.ones(33, np.float32)
    dev = cuda_backend.to_device(acc)
    cuda_backend.kernel("accumulate")(dev, cuda_backend.to_device(x))
    got = cuda_backend.to_host(dev)
    np.testing.assert_array_equal(got[:33], acc[:33] + 1.0)
    np.testing.assert_array_equal(got[33:], acc[33:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 17, 301])
@pytest.mark.parametrize("seed", [0, 2**63 - 1])
def test_fingerprint_matches_cpu(cuda_backend, dtype, n, seed):
    x = np.random.default_rng(n).standard_normal(n).astype(dtype)
    ok_g, out_g = _fp_cuda(cuda_backend, x, seed)
    ok_c, out_c = _fp_cpu(x, seed)
    assert ok_g is True and ok_c is True
    norm = float(np.sqrt(out_c[-1]))
    np.testing.assert_allclose(out_g, out_c, rtol=1e-12, atol=1e-13 * norm * n)


@pytest.mark.parametrize("seed", [7, 2**63 - 12345])
def test_fingerprint_signs_bit_for_bit(cuda_backend, seed):
    """Powers of two in a 50-element window make every projection an exact
    float64 sum whose value spells out the window's signs, so equal sums
    mean equal signs; the windows cover all 203 elements (13 hash chunks)."""
    n = 203
    for lo in range(0, n, 50):
        x = np.zeros(n, np.float64)
        hi = min(n, lo + 50)
        x[lo:hi] = 2.0 ** -np.arange(hi - lo)
        ok_g, out_g = _fp_cuda(cuda_backend, x, seed)
        ok_c, out_c = _fp_cpu(x, seed)
        assert ok_g and ok_c
        np.testing.assert_array_equal(out_g[:cpu.FP_PROJECTIONS], out_c[:cpu.FP_PROJECTIONS], err_msg=f"window {lo}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_fingerprint_flags_nonfinite(cuda_backend, dtype, bad):
    x = np.random.default_rng(3).standard_normal(100).astype(dtype)
    x[57] = bad
    ok_g, out_g = _fp_cuda(cuda_backend, x, 99)
    ok_c, out_c = _fp_cpu(x, 99)
    assert ok_c is False
    assert ok_g is False
    assert not np.isfinite(out_g[-1])


def test_fingerprint_flags_overflowing_square_sum(cuda_backend):
    x = np.full(20, 1e200)
    assert _fp_cpu(x, 5)[0] is False
    assert _fp_cuda(cuda_backend, x, 5)[0] is False


def test_fingerprint_empty(cuda_backend):
    ok, out = _fp_cuda(cuda_backend, np.zeros(0, np.float32), 3)
    assert ok is True
    np.testing.assert_array_equal(out, np.zeros(cpu.FP_SIZE))


def test_fingerprint_deterministic_and_grid_independent(cuda_backend, launch, monkeypatch):
    """Same input, same bits on every call; a capped grid (threads striding
    over several chunks) and a block size that is no power of two give the
    same fingerprint up to round-off."""
    x = np.random.default_rng(4).standard_normal(600).astype(np.float32)
    ok_c, out_c = _fp_cpu(x, 11)
    first = _fp_cuda(cuda_backend, x, 11)[1]
    np.testing.assert_array_equal(_fp_cuda(cuda_backend, x, 11)[1], first)
    monkeypatch.setattr(launch, "MAX_BLOCKS", 1)
    monkeypatch.setattr(launch, "_THREADS", 96)
    ok, strided = _fp_cuda(cuda_backend, x, 11)
    assert ok
    np.testing.assert_allclose(strided, out_c, rtol=1e-12, atol=1e-10)
    np.testing.assert_array_equal(_fp_cuda(cuda_backend, x, 11)[1], strided)


def test_all_finite_strided(cuda_backend, launch, monkeypatch):
    monkeypatch.setattr(launch, "MAX_BLOCKS", 2)
    x = np.ones(300, np.float32)
    x[299] = np.nan
    fn = cuda_backend.kernel("all_finite")
    assert fn(cuda_backend.to_device(x)) is False
    x[299] = 0.0
    assert fn(cuda_backend.to_device(x)) is True
