"""CUDA dense kernels (``kernels/cuda/dense.py``) against the CPU ones, and the GEMM against NumPy."""
from __future__ import annotations

import numpy as np
import pytest

from raven_hpc.kernels import ACTIVATIONS, get_kernel
from raven_hpc.kernels.activations import SAVES_INPUT
from tests.gpu.conftest import run_both

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=2e-6, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}

CODES = sorted(set(ACTIVATIONS.values()))
NAME = {code: name for name, code in sorted(ACTIVATIONS.items(), reverse=True)}

SHAPE = (5, 37)  # columns not a multiple of a warp, rows not of a block's warps


def data(rng, shape, dtype, scale=3.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


@pytest.fixture(params=[32, 96], ids=["block32", "block96"])
def block(request):
    """Block sizes for the column reductions: one warp (a thread per
    column), and three warps splitting the rows."""
    from raven_hpc.kernels.cuda import _launch

    old = _launch.threads()
    _launch.set_threads(request.param)
    yield request.param
    _launch.set_threads(old)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", CODES, ids=lambda c: NAME[c])
def test_bias_act_forward(cuda_backend, act, dtype):
    rng = np.random.default_rng(act)
    z, b = data(rng, SHAPE, dtype), data(rng, SHAPE[1], dtype)
    run_both(cuda_backend, "bias_act_forward", [z, b, act], outs=[0], **TOL[dtype])
    y = np.empty_like(z)
    run_both(cuda_backend, "bias_act_forward_keep", [z, b, y, act], outs=[0, 2], **TOL[dtype])


@pytest.mark.parametrize("name,p0,p1", [("leaky_relu", 0.3, np.nan), ("elu", 0.4, np.nan),
                                        ("hardtanh", -0.25, 2.0), ("softplus", 3.0, 2.0)])
def test_bias_act_parameters(cuda_backend, name, p0, p1):
    act = ACTIVATIONS[name]
    rng = np.random.default_rng(11)
    z, b = data(rng, (3, 21), np.float32), data(rng, 21, np.float32)
    _, back, _, _ = run_both(cuda_backend, "bias_act_forward", [z, b, act, p0, p1], outs=[0], **TOL[np.float32])
    default = z.copy()
    get_kernel("bias_act_forward", "cpu")(default, b, act)
    assert not np.array_equal(back[0], default), "the parameters made no difference"
    y = np.empty_like(z)
    _, back, _, _ = run_both(cuda_backend, "bias_act_forward_keep", [z, b, y, act, p0, p1], outs=[0, 2],
                             **TOL[np.float32])
    saved = back[0] if act in SAVES_INPUT else back[2]
    gy = data(rng, z.shape, np.float32)
    run_both(cuda_backend, "bias_act_backward", [gy, saved, act, np.empty_like(z), np.empty_like(b), p0, p1],
             outs=[3, 4], **TOL[np.float32])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", CODES, ids=lambda c: NAME[c])
def test_bias_act_backward(cuda_backend, act, dtype):
    rng = np.random.default_rng(100 + act)
    n, m = SHAPE
    pre = data(rng, SHAPE, dtype)
    if act in SAVES_INPUT:
        saved = pre
    else:
        saved = np.empty_like(pre)
        get_kernel("act_forward", "cpu")(pre.reshape(-1), saved.reshape(-1), act)
    gy = data(rng, SHAPE, dtype, 1.0)
    db = np.full(m, 9.0, dtype=dtype)  # overwritten, not accumulated into
    run_both(cuda_backend, "bias_act_backward", [gy, saved, act, np.empty_like(gy), db], outs=[3, 4],
             **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 37), (40, 3), (0, 5)])
def test_col_sum(cuda_backend, block, shape, dtype):
    rng = np.random.default_rng(shape[0])
    g = data(rng, shape, dtype)
    out = np.full(shape[1], 5.0, dtype=dtype)
    _, back, _, _ = run_both(cuda_backend, "col_sum", [g, out], outs=[1], **TOL[dtype])
    np.testing.assert_allclose(back[1], g.sum(axis=0, dtype=np.float64), **TOL[dtype])


def test_bias_act_backward_in_place(cuda_backend, block):
    """``gz`` may be ``gy``; ``db`` sums the gradient, not the incoming ``gy``."""
    act = ACTIVATIONS["tanh"]
    rng = np.random.default_rng(5)
    gy = data(rng, (9, 35), np.float64)
    saved = np.tanh(data(rng, (9, 35), np.float64))
    want_gz, want_db = np.empty_like(gy), np.empty(35)
    get_kernel("bias_act_backward", "cpu")(gy, saved, act, want_gz, want_db)
    d = cuda_backend.to_device(gy)
    db = cuda_backend.zeros(35, dtype=np.float64)
    cuda_backend.kernel("bias_act_backward")(d, cuda_backend.to_device(saved), act, d, db)
    np.testing.assert_allclose(cuda_backend.to_host(d), want_gz, **TOL[np.float64])
    np.testing.assert_allclose(cuda_backend.to_host(db), want_db, **TOL[np.float64])


# -- GEMM ---------------------------------------------------------------------------------
#: operand layouts: the host base's shape from the operand's (rows, cols), and the view of it
LAYOUTS = {
    "c": (lambda r, c: (r, c), lambda x: x),                # C-contiguous
    "t": (lambda r, c: (c, r), lambda x: x.T),              # a transposed view (column-major)
    "s": (lambda r, c: (r, 2 * c), lambda x: x[:, ::2]),    # every other column: not contiguous
}


def operand(backend, rng, rows, cols, dtype, layout):
    """A ``(rows, cols)`` operand laid out as ``layout`` says: (host view, device view)."""
    shape_of, view = LAYOUTS[layout]
    base = data(rng, shape_of(rows, cols), dtype, 1.0)
    return view(base), view(backend.to_device(base))


#: (m, k, n), layouts of a and b, dtype: non-square shapes, ragged tiles along every
#: axis (17 rows, 20 and 33 columns, k = 37 and 19), a single row, every layout
GEMM_CASES = [
    ((5, 37, 7), "cc", np.float32), ((5, 37, 7), "cc", np.float64),
    ((5, 37, 7), "tt", np.float32), ((5, 37, 7), "tt", np.float64),
    ((17, 3, 20), "tc", np.float32), ((1, 16, 33), "ct", np.float64),
    ((4, 19, 6), "ss", np.float32), ((4, 19, 6), "ts", np.float64),
]


@pytest.mark.parametrize("mkn,layout,dtype", GEMM_CASES,
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else
                         (v if isinstance(v, str) else np.dtype(v).name))
def test_gemm(cuda_backend, mkn, layout, dtype):
    m, k, n = mkn
    rng = np.random.default_rng(m * 100 + n)
    a, da = operand(cuda_backend, rng, m, k, dtype, layout[0])
    b, db = operand(cuda_backend, rng, k, n, dtype, layout[1])
    assert (da.strides, db.strides) == (a.strides, b.strides)
    out = cuda_backend.zeros((m, n), dtype=dtype)
    get_kernel("gemm", "cuda")(da, db, out)
    want = a.astype(np.float64) @ b.astype(np.float64)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cuda_backend.to_host(out), want, **tol)


def test_gemm_through_the_backend(cuda_backend):
    """``CudaBackend.gemm`` without ``out`` allocates it; under the simulator it is this kernel."""
    rng = np.random.default_rng(2)
    x, w = data(rng, (6, 19), np.float32, 1.0), data(rng, (19, 4), np.float32, 1.0)
    got = cuda_backend.gemm(cuda_backend.to_device(x), cuda_backend.to_device(w))
    assert got.shape == (6, 4) and got.dtype == np.float32
    np.testing.assert_allclose(cuda_backend.to_host(got), x @ w, rtol=1e-5, atol=1e-5)


def test_gemm_empty_inner_dimension_gives_zeros(cuda_backend):
    a, b = np.empty((3, 0)), np.empty((0, 4))
    out = cuda_backend.to_device(np.full((3, 4), 7.0))
    get_kernel("gemm", "cuda")(cuda_backend.to_device(a), cuda_backend.to_device(b), out)
    np.testing.assert_array_equal(cuda_backend.to_host(out), np.zeros((3, 4)))


def test_gemm_refuses_mismatched_shapes(cuda_backend):
    a, b = cuda_backend.zeros((3, 4)), cuda_backend.zeros((5, 2))
    with pytest.raises(ValueError, match="do not match"):
        get_kernel("gemm", "cuda")(a, b, cuda_backend.zeros((3, 2)))
