"""Numba kernels vs the plain NumPy references in ``_naive.py``; the registry."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from raven_hpc.errors import ConfigError, RavenError
from raven_hpc.kernels import (
    ACTIVATIONS,
    BackendUnavailableError,
    available_backends,
    get_kernel,
    kernel_ops,
)

from . import _naive

DTYPES = [np.float32, np.float64]
SHAPES = [(1, 1), (3, 7), (128, 10), (65, 257)]
ACTS = sorted(ACTIVATIONS.items())


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act_name,act", ACTS)
def test_bias_act(dtype, shape, act_name, act):
    rng = np.random.default_rng(sum(shape) + act)
    z = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    out = z.copy()
    get_kernel("bias_act_forward")(out, b, act)
    np.testing.assert_allclose(out, _naive.bias_act_forward(z, b, act), **_tol(dtype))

    gy = rng.standard_normal(shape).astype(dtype)
    gz = np.empty_like(gy)
    db = np.full(shape[1], np.nan, dtype)  # the kernel must overwrite, not add
    get_kernel("bias_act_backward")(gy, out, act, gz, db)
    ref_gz, ref_db = _naive.bias_act_backward(gy, out, act)
    np.testing.assert_allclose(gz, ref_gz, **_tol(dtype))
    np.testing.assert_allclose(db, ref_db, **_tol(dtype))

    gy2 = gy.copy()  # in place: gz is gy
    get_kernel("bias_act_backward")(gy2, out, act, gy2, db)
    np.testing.assert_allclose(gy2, ref_gz, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act_name,act", ACTS)
def test_elementwise_act(dtype, act_name, act):
    rng = np.random.default_rng(act)
    x = rng.standard_normal(1000).astype(dtype)
    y = np.empty_like(x)
    get_kernel("act_forward")(x, y, act)
    np.testing.assert_array_equal(y, _naive.act_forward(x, act))
    gy = rng.standard_normal(1000).astype(dtype)
    g = np.empty_like(x)
    get_kernel("act_backward")(gy, y, g, act)
    np.testing.assert_array_equal(g, _naive.act_backward(gy, y, act))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_col_sum(dtype, shape):
    g = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    out = np.full(shape[1], np.nan, dtype)
    get_kernel("col_sum")(g, out)
    np.testing.assert_allclose(out, _naive.col_sum(g), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c,scale", [(1, 2, 1.0), (7, 3, 5.0), (128, 10, 3.0), (33, 100, 50.0)])
def test_softmax_xent(dtype, n, c, scale):
    rng = np.random.default_rng(n * c)
    logits = (rng.standard_normal((n, c)) * scale).astype(dtype)
    labels = rng.integers(0, c, n).astype(np.int64)
    grad = np.empty_like(logits)
    loss, correct, bad = get_kernel("softmax_xent")(logits, labels, grad, True)
    ref_loss, ref_correct, ref_grad = _naive.softmax_xent(logits, labels)
    assert bad == -1 and correct == ref_correct
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(grad, ref_grad, **_tol(dtype))
    loss2, correct2, _ = get_kernel("softmax_xent")(logits, labels, np.empty((0, 0), dtype), False)
    assert loss2 == loss and correct2 == correct


def test_softmax_xent_bad_label_row():
    logits = np.zeros((4, 3), np.float32)
    out = get_kernel("softmax_xent")(logits, np.array([0, 1, 3, 0]), np.empty_like(logits), True)
    assert out[2] == 2


@pytest.mark.parametrize("grad_dtype", DTYPES)
@pytest.mark.parametrize(
    "momentum,dampening,weight_decay,nesterov",
    [(0.0, 0.0, 0.0, False), (0.0, 0.0, 1e-2, False), (0.9, 0.0, 0.0, False), (0.9, 0.0, 5e-4, True),
     (0.5, 0.3, 1e-3, False)],
)
def test_sgd_step(grad_dtype, momentum, dampening, weight_decay, nesterov):
    rng = np.random.default_rng(7)
    p = rng.standard_normal(1001).astype(np.float32)
    buf = np.zeros(1001 if momentum else 0, np.float32)
    ref_p, ref_buf = p.astype(np.float64), buf.astype(np.float64)
    for step in range(4):
        g = rng.standard_normal(1001).astype(grad_dtype)
        get_kernel("sgd_step")(p, g, buf, 0.1, momentum, dampening, weight_decay, nesterov, step == 0)
        ref_p, ref_buf = _naive.sgd_step(ref_p, g, ref_buf, 0.1, momentum, dampening, weight_decay,
                                         nesterov, step == 0)
        np.testing.assert_allclose(p, ref_p, rtol=1e-5, atol=1e-6)
        if momentum:
            np.testing.assert_allclose(buf, ref_buf, rtol=1e-5, atol=1e-6)


# -- registry -----------------------------------------------------------------------


def test_registry_cpu():
    assert available_backends()[0] == "cpu"
    ops = kernel_ops("cpu")
    for op in ("bias_act_forward", "bias_act_backward", "softmax_xent", "sgd_step", "col_sum"):
        assert op in ops
        assert callable(get_kernel(op))
        assert get_kernel(op, "cpu") is get_kernel(op)
    with pytest.raises(KeyError, match="no kernel 'nope'"):
        get_kernel("nope")


def test_registry_kernels_cached_without_fastmath():
    for op in kernel_ops("cpu"):
        k = get_kernel(op)
        assert type(k._cache).__name__ != "NullCache", f"{op} is not @njit(cache=True)"
        assert not k.targetoptions.get("fastmath", False), f"{op} uses fastmath"


def test_cuda_backend_raises_clear_error():
    if "cuda" in available_backends():  # pragma: no cover - GPU nodes with CUDA kernels
        pytest.skip("CUDA backend is available here")
    with pytest.raises(BackendUnavailableError, match="CUDA backend not available") as info:
        get_kernel("sgd_step", "cuda")
    assert isinstance(info.value, RavenError) and isinstance(info.value, ConfigError)


def test_unknown_backend():
    with pytest.raises(ConfigError, match="unknown kernel backend 'tpu'"):
        get_kernel("sgd_step", "tpu")


def test_engine_and_kernels_never_import_mpi():
    code = ("import sys; import raven_hpc.engine, raven_hpc.kernels, raven_hpc.kernels.cuda; "
            "assert 'mpi4py' not in sys.modules, 'mpi4py imported'; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


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
