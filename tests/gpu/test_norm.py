"""CUDA batch norm, layer norm, dropout and embedding kernels against the CPU ones.

Shapes stay tiny: under the simulator every CUDA thread is a Python thread.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.gpu.conftest import run_both

DTYPES = [np.float32, np.float64]


def _tol(dtype):
    return dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)


def _rng(seed=0):
    return np.random.default_rng(seed)


# -- batch norm ------------------------------------------------------------------------
# (n, C) inputs are (n, C, 1); (n, C, H, W) images are (n, C, H*W)
BN_SHAPES = [(6, 3, 1), (3, 2, 6)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES, ids=["2d", "nchw"])
def test_batchnorm_stats(cuda_backend, dtype, shape):
    x = _rng(1).standard_normal(shape).astype(dtype)
    C = shape[1]
    _, back, _, _ = run_both(cuda_backend, "batchnorm_stats", [x, np.zeros(C), np.zeros(C)], outs=(1, 2), **_tol(dtype))
    np.testing.assert_allclose(back[1], x.astype(np.float64).mean(axis=(0, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(back[2], x.astype(np.float64).var(axis=(0, 2)), rtol=1e-5, atol=1e-6)


def test_batchnorm_stats_large_mean_keeps_variance(cuda_backend):
    # a mean of 1e4 against a spread of 1e-2: without the shift the float32
    # data's variance would cancel away in the sum of squares
    x = (1e4 + 1e-2 * _rng(2).standard_normal((4, 2, 5))).astype(np.float32)
    _, back, _, _ = run_both(cuda_backend, "batchnorm_stats", [x, np.zeros(2), np.zeros(2)], outs=(1, 2),
                             rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(back[2], x.astype(np.float64).var(axis=(0, 2)), rtol=1e-6)


def test_batchnorm_stats_block_size_not_a_power_of_two(cuda_backend):
    # 96 threads per block: the tree reduction's first step pairs 64 of them
    from raven_hpc.kernels.cuda import _launch

    old = _launch.threads()
    _launch.set_threads(96)
    try:
        x = _rng(3).standard_normal((2, 2, 70)).astype(np.float64)
        run_both(cuda_backend, "batchnorm_stats", [x, np.zeros(2), np.zeros(2)], outs=(1, 2), rtol=1e-12, atol=1e-13)
    finally:
        _launch.set_threads(old)


def test_batchnorm_stats_rejects_empty_batch(cuda_backend):
    x = cuda_backend.zeros((0, 2, 1), np.float32)
    with pytest.raises(ValueError, match="at least one value per channel"):
        cuda_backend.kernel("batchnorm_stats")(x, cuda_backend.zeros(2, np.float64), cuda_backend.zeros(2, np.float64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES, ids=["2d", "nchw"])
def test_batchnorm_apply(cuda_backend, dtype, shape):
    r = _rng(4)
    C = shape[1]
    x = r.standard_normal(shape).astype(dtype)
    mean, scale, beta = (r.standard_normal(C).astype(dtype) for _ in range(3))
    run_both(cuda_backend, "batchnorm_apply", [x, mean, scale, beta, np.zeros(shape, dtype)], outs=(4,), **_tol(dtype))


def test_batchnorm_apply_in_place(cuda_backend):
    r = _rng(5)
    x = r.standard_normal((3, 2, 4)).astype(np.float32)
    mean, scale, beta = (r.standard_normal(2).astype(np.float32) for _ in range(3))
    want = (x - mean[None, :, None]) * scale[None, :, None] + beta[None, :, None]
    d = cuda_backend.to_device(x)
    cuda_backend.kernel("batchnorm_apply")(d, cuda_backend.to_device(mean), cuda_backend.to_device(scale),
                                           cuda_backend.to_device(beta), d)
    np.testing.assert_allclose(cuda_backend.to_host(d), want, rtol=1e-6, atol=1e-6)


def _bn_backward_args(shape, dtype, training, want_dx):
    r = _rng(6)
    C = shape[1]
    x = r.standard_normal(shape).astype(dtype)
    g = r.standard_normal(shape).astype(dtype)
    mean = x.astype(np.float64).mean(axis=(0, 2)) + (0.0 if training else 0.3)
    var = x.astype(np.float64).var(axis=(0, 2)) + (0.0 if training else 0.5)
    invstd = 1.0 / np.sqrt(var + 1e-5)
    gamma = (1.0 + 0.5 * r.standard_normal(C)).astype(dtype)
    dx = np.full(shape, np.nan, dtype) if want_dx else np.empty((0, 0, 0), dtype)
    return [g, x, mean, invstd, gamma, training, np.full(C, np.nan, dtype), np.full(C, np.nan, dtype), dx]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES, ids=["2d", "nchw"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batchnorm_backward(cuda_backend, dtype, shape, training):
    args = _bn_backward_args(shape, dtype, training, want_dx=True)
    host, _, _, _ = run_both(cuda_backend, "batchnorm_backward", args, outs=(6, 7, 8), **_tol(dtype))
    assert np.isfinite(host[8]).all()


def test_batchnorm_backward_without_dx(cuda_backend):
    args = _bn_backward_args((3, 2, 6), np.float32, True, want_dx=False)
    run_both(cuda_backend, "batchnorm_backward", args, outs=(6, 7), **_tol(np.float32))


# -- layer norm ------------------------------------------------------------------------
def _ln_forward_args(dtype, affine, n=3, D=7):
    r = _rng(7)
    x = (2.0 + r.standard_normal((n, D))).astype(dtype)
    if affine:
        gamma = (1.0 + 0.5 * r.standard_normal(D)).astype(dtype)
        beta = r.standard_normal(D).astype(dtype)
    else:
        gamma = beta = np.empty(0, dtype)
    return [x, gamma, beta, affine, 1e-5, np.zeros((n, D), dtype), np.zeros(n), np.zeros(n)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_layernorm_forward(cuda_backend, dtype, affine):
    args = _ln_forward_args(dtype, affine)
    host, _, _, _ = run_both(cuda_backend, "layernorm_forward", args, outs=(5, 6, 7), **_tol(dtype))
    x = args[0].astype(np.float64)
    np.testing.assert_allclose(host[6], x.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(host[7], 1.0 / np.sqrt(x.var(axis=1) + 1e-5), rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine, want_dx", [(True, True), (False, True), (True, False)],
                         ids=["affine", "plain", "affine-no-dx"])
def test_layernorm_backward(cuda_backend, dtype, affine, want_dx):
    from raven_hpc.kernels import get_kernel

    n, D = 4, 6
    fwd = _ln_forward_args(dtype, affine, n, D)
    get_kernel("layernorm_forward", "cpu")(*fwd)
    x, gamma, _, _, _, _, mean, invstd = fwd
    g = _rng(8).standard_normal((n, D)).astype(dtype)
    dx = np.full((n, D), np.nan, dtype) if want_dx else np.empty((0, 0), dtype)
    if affine:
        dgamma, dbeta = np.full(D, np.nan, dtype), np.full(D, np.nan, dtype)
    else:
        dgamma = dbeta = np.empty(0, dtype)
    outs = ((6,) if want_dx else ()) + ((7, 8) if affine else ())
    run_both(cuda_backend, "layernorm_backward", [g, x, mean, invstd, gamma, affine, dx, dgamma, dbeta],
             outs=outs, **_tol(dtype))


# -- dropout ---------------------------------------------------------------------------
def _dropout_args(dtype, rate=0.7, m=40):
    r = _rng(9)
    u = r.random(m, dtype=np.float32)
    # the boundary: kept when u >= float32(rate), which is below 0.7 itself
    r32 = np.float32(rate)
    assert float(r32) < rate
    u[:3] = [r32, np.nextafter(r32, np.float32(0)), np.nextafter(r32, np.float32(1))]
    x = r.standard_normal(m).astype(dtype)
    return x, u, rate, 1.0 / (1.0 - rate)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["dropout_forward", "dropout_backward"])
def test_dropout(cuda_backend, dtype, op):
    x, u, rate, scale = _dropout_args(dtype)
    _, back, _, _ = run_both(cuda_backend, op, [x, u, rate, scale, np.full(x.shape, np.nan, dtype)], outs=(4,),
                             rtol=0, atol=0)
    y = back[4]
    assert y[0] != 0 and y[1] == 0 and y[2] != 0
    kept = u >= np.float32(rate)
    assert 0 < kept.sum() < kept.size
    np.testing.assert_array_equal(y != 0, kept)


def test_dropout_in_place(cuda_backend):
    x, u, rate, scale = _dropout_args(np.float32)
    want = np.where(u >= np.float32(rate), x * np.float32(scale), np.float32(0))
    d = cuda_backend.to_device(x)
    cuda_backend.kernel("dropout_forward")(d, cuda_backend.to_device(u), rate, scale, d)
    np.testing.assert_array_equal(cuda_backend.to_host(d), want)


# -- embedding -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_indices_valid(cuda_backend, dtype):
    x = np.array([0, 4, 2, 2, 1, 3, 0, 4, 1], dtype)
    _, back, r_cpu, r_gpu = run_both(cuda_backend, "embedding_indices", [x, 5, np.full(x.size, -7, np.int64)],
                                     outs=(2,), rtol=0, atol=0)
    assert r_cpu == -1 and r_gpu == -1 and isinstance(r_gpu, int)
    np.testing.assert_array_equal(back[2], x.astype(np.int64))


@pytest.mark.parametrize("bad", [np.nan, -1.0, 2.5, 5.0, np.inf], ids=["nan", "negative", "fraction", "num", "inf"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_indices_reports_first_bad_position(cuda_backend, dtype, bad):
    # the first bad value at position 3, a second one later: the first is reported
    x = np.array([0, 1, 4, bad, 2, 3, bad, 0, 1, 2, 3, 4, bad], dtype)
    _, _, r_cpu, r_gpu = run_both(cuda_backend, "embedding_indices", [x, 5, np.zeros(x.size, np.int64)],
                                  rtol=0, atol=0)
    assert r_cpu == 3 and r_gpu == 3 and isinstance(r_gpu, int)


def test_embedding_indices_bad_beyond_first_block(cuda_backend):
    # more ids than one block of threads: the smallest bad position wins across blocks
    x = np.zeros(150, np.float32)
    x[[140, 97, 149]] = -2.0
    _, _, r_cpu, r_gpu = run_both(cuda_backend, "embedding_indices", [x, 3, np.zeros(x.size, np.int64)],
                                  rtol=0, atol=0)
    assert r_cpu == 97 and r_gpu == 97


def test_embedding_indices_empty(cuda_backend):
    x = np.zeros(0, np.float32)
    assert cuda_backend.kernel("embedding_indices")(cuda_backend.to_device(x), 3,
                                                    cuda_backend.to_device(np.zeros(0, np.int64))) == -1


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_backward(cuda_backend, dtype):
    r = _rng(10)
    V, dim = 6, 3
    idx = np.array([2, 0, 2, 5, 2, 0, 3], np.int64)      # rows 1 and 4 get nothing: zeroed
    g = r.standard_normal((idx.size, dim)).astype(dtype)
    dW = np.full((V, dim), np.nan, dtype)
    _, back, _, _ = run_both(cuda_backend, "embedding_backward", [idx, g, dW], outs=(2,), rtol=0, atol=0)
    want = np.zeros((V, dim))
    np.add.at(want, idx, g.astype(np.float64))
    np.testing.assert_allclose(back[2], want, rtol=1e-6, atol=1e-6)


def test_embedding_backward_several_rows_per_owner(cuda_backend):
    # fewer owner threads than rows: each owns a range of rows of one column
    from raven_hpc.kernels.cuda import _launch, norm

    r = _rng(11)
    V, dim = 5000, 2
    owners_per_thread = norm._EMB_OWNERS_PER_THREAD
    norm._EMB_OWNERS_PER_THREAD = 1          # 32..1024 owners for 5000 rows
    try:
        assert _launch.threads() // dim < V
        idx = r.integers(0, V, 40).astype(np.int64)
        idx[:4] = [V - 1, 0, V - 1, 1234]
        g = r.standard_normal((idx.size, dim)).astype(np.float32)
        run_both(cuda_backend, "embedding_backward", [idx, g, np.full((V, dim), np.nan, np.float32)], outs=(2,),
                 rtol=0, atol=0)
    finally:
        norm._EMB_OWNERS_PER_THREAD = owners_per_thread
