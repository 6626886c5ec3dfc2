"""CUDA kernels: the dense layer's fused bias/activation passes and a tiled GEMM.

Launchers take the arguments of the CPU kernels of
:mod:`raven_hpc.kernels.dense` and compute the same values; activations go
through :func:`~.activations.act_value` / :func:`~.activations.act_grad`,
the device versions of the CPU's scalar rules (float64 math, rounded once
to the array's dtype).

* forward: one grid-stride pass over the flat ``(n, m)`` index adds the
  bias and applies the activation while the value is in a register
  (adjacent threads touch adjacent elements of C-contiguous ``z``);
* column sums (``db`` of the backward, :func:`col_sum`): a block owns 32
  adjacent columns and its warps split the rows between them, so every row
  is read coalesced; each thread sums its rows in a fixed order in float64,
  and the first warp adds the other warps' partials in warp order -- the
  result depends only on the block size, not on timing (no atomics).
  :func:`bias_act_backward` writes ``gz`` in the same pass.
* :func:`gemm`: ``out = a @ b`` with 16x16 shared-memory tiles,
  accumulating in ``out``'s dtype.  It is the backend's GEMM when cuBLAS
  (CuPy) is absent, always under the simulator.  Operands may be any
  strided views; a column-major operand (a transpose such as ``x.T``) is
  loaded along its contiguous axis so that its tile loads stay coalesced.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32, float64

from .._registry import register
from ..activations import act_params
from . import _launch
from ._blocks import MAX_THREADS
from .activations import act_grad, act_value

__all__ = ["TILE", "bias_act_forward", "bias_act_forward_keep", "bias_act_backward", "col_sum", "gemm"]

#: side of the GEMM's square shared-memory tiles (threads per block: TILE * TILE)
TILE = 16

#: columns one block of a column reduction owns (one warp's width)
_COLS = 32


# -- fused forward --------------------------------------------------------------------------
@cuda.jit
def _bias_act_forward_kernel(z, b, act, p0, p1):
    n, m = z.shape
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for k in range(start, n * m, stride):
        i = k // m
        j = k - i * m
        v = z[i, j] + b[j]  # in the arrays' dtype, as the CPU kernel adds
        z[i, j] = act_value(float64(v), act, p0, p1)


@cuda.jit
def _bias_act_forward_keep_kernel(z, b, y, act, p0, p1):
    n, m = z.shape
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for k in range(start, n * m, stride):
        i = k // m
        j = k - i * m
        v = z[i, j] + b[j]
        z[i, j] = v
        y[i, j] = act_value(float64(v), act, p0, p1)


# -- column reductions --------------------------------------------------------------------
@cuda.jit(device=True)
def _combine_columns(part, out, j, m):
    """Thread ``(warp w, lane l)`` left its partial of column ``j`` in
    ``part[w * 32 + l]``; warp 0 adds them in warp order into ``out[j]``.
    Called by every thread of the block."""
    tid = cuda.threadIdx.x
    nw = cuda.blockDim.x // _COLS
    cuda.syncthreads()
    if tid < _COLS and j < m:
        tot = part[tid]
        for w in range(1, nw):
            tot += part[w * _COLS + tid]
        out[j] = tot
    cuda.syncthreads()  # part is free for the block's next columns


@cuda.jit
def _col_sum_kernel(g, out):
    part = cuda.shared.array(MAX_THREADS, float64)
    n, m = g.shape
    tid = cuda.threadIdx.x
    lane = tid % _COLS
    warp = tid // _COLS
    nw = cuda.blockDim.x // _COLS
    for j0 in range(cuda.blockIdx.x * _COLS, m, cuda.gridDim.x * _COLS):
        j = j0 + lane
        acc = 0.0
        if j < m:
            for i in range(warp, n, nw):
                acc += float64(g[i, j])
        part[tid] = acc
        _combine_columns(part, out, j, m)


@cuda.jit
def _bias_act_backward_kernel(gy, s, gz, db, act, p0, p1):
    part = cuda.shared.array(MAX_THREADS, float64)
    n, m = gy.shape
    tid = cuda.threadIdx.x
    lane = tid % _COLS
    warp = tid // _COLS
    nw = cuda.blockDim.x // _COLS
    for j0 in range(cuda.blockIdx.x * _COLS, m, cuda.gridDim.x * _COLS):
        j = j0 + lane
        acc = 0.0
        if j < m:
            for i in range(warp, n, nw):
                v = act_grad(float64(gy[i, j]), float64(s[i, j]), act, p0, p1)
                gz[i, j] = v
                acc += float64(gz[i, j])  # db sums gz as stored, like the CPU kernel
        part[tid] = acc
        _combine_columns(part, db, j, m)


def _column_grid(m: int) -> tuple:
    """``(blocks, threads)`` for a column reduction over ``m`` columns."""
    return max(1, min(_launch.MAX_BLOCKS, (int(m) + _COLS - 1) // _COLS)), _launch.threads()


# -- GEMM -----------------------------------------------------------------------------------
def _make_gemm(dt):
    """The tiled GEMM kernel whose tiles and accumulator have numba type ``dt``."""

    @cuda.jit
    def kernel(a, b, out, a_colmajor, b_colmajor):
        sa = cuda.shared.array((TILE, TILE), dt)
        sb = cuda.shared.array((TILE, TILE), dt)
        m, k = a.shape
        n = b.shape[1]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        r0 = cuda.blockIdx.y * TILE
        c0 = cuda.blockIdx.x * TILE
        acc = dt(0)
        for k0 in range(0, k, TILE):
            # sa[p, q] = a[r0 + p, k0 + q]; adjacent threads (tx) walk a's contiguous axis
            if a_colmajor:
                p, q = tx, ty
            else:
                p, q = ty, tx
            if r0 + p < m and k0 + q < k:
                sa[p, q] = a[r0 + p, k0 + q]
            else:
                sa[p, q] = 0
            # sb[p, q] = b[k0 + p, c0 + q]
            if b_colmajor:
                p, q = tx, ty
            else:
                p, q = ty, tx
            if k0 + p < k and c0 + q < n:
                sb[p, q] = b[k0 + p, c0 + q]
            else:
                sb[p, q] = 0
            cuda.syncthreads()
            for t in range(TILE):
                acc += sa[ty, t] * sb[t, tx]
            cuda.syncthreads()
        if r0 + ty < m and c0 + tx < n:
            out[r0 + ty, c0 + tx] = acc

    return kernel


_GEMM = {np.dtype(np.float32): _make_gemm(float32), np.dtype(np.float64): _make_gemm(float64)}


def _operand(x):
    """``x`` as a kernel argument.  On a GPU a CuPy array goes to numba as
    is (its ``__cuda_array_interface__`` carries the strides).  The simulator
    copies NumPy arguments to and from a buffer of their own and accepts
    only contiguous ones; wrapping the array as a simulated device array
    hands the kernel the view itself, whatever its strides."""
    if _launch.simulated() and isinstance(x, np.ndarray):
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return FakeCUDAArray(x)
    return x


def _colmajor(x) -> int:
    """Whether 2-D ``x`` is laid out column by column (its rows' stride is the smaller)."""
    return int(x.shape[0] > 1 and x.shape[1] > 1 and abs(x.strides[0]) < abs(x.strides[1]))


# -- launchers (the CPU kernels' signatures) ----------------------------------------------
@register("bias_act_forward", "cuda")
def bias_act_forward(z, b, act, p0=float("nan"), p1=float("nan")):
    """In place on C-contiguous ``z`` (n, m): ``z = act(z + b)``."""
    n, m = z.shape
    if n == 0 or m == 0:
        return
    act = int(act)
    p0, p1 = act_params(act, float(p0), float(p1))
    blocks, tpb = _launch.grid(n * m)
    _bias_act_forward_kernel[blocks, tpb](z, b, act, float(p0), float(p1))


@register("bias_act_forward_keep", "cuda")
def bias_act_forward_keep(z, b, y, act, p0=float("nan"), p1=float("nan")):
    """``z += b`` in place (``z`` keeps the pre-activation) and ``y = act(z)``;
    ``y`` (n, m) must not be ``z``."""
    n, m = z.shape
    if n == 0 or m == 0:
        return
    act = int(act)
    p0, p1 = act_params(act, float(p0), float(p1))
    blocks, tpb = _launch.grid(n * m)
    _bias_act_forward_keep_kernel[blocks, tpb](z, b, y, act, float(p0), float(p1))


@register("bias_act_backward", "cuda")
def bias_act_backward(gy, s, act, gz, db, p0=float("nan"), p1=float("nan")):
    """``gz = gy * act'(s)`` and ``db = gz.sum(axis=0)`` in one pass.

    ``s`` is what the forward saved: the layer output, or the
    pre-activation for codes in ``SAVES_INPUT``.  ``gz`` may be ``gy``;
    ``db`` is overwritten (zeros when ``gy`` has no rows).
    """
    n, m = gy.shape
    if m == 0:
        return
    act = int(act)
    p0, p1 = act_params(act, float(p0), float(p1))
    blocks, tpb = _column_grid(m)
    _bias_act_backward_kernel[blocks, tpb](gy, s, gz, db, act, float(p0), float(p1))


@register("col_sum", "cuda")
def col_sum(g, out):
    """``out = g.sum(axis=0)`` for 2-D ``g`` (zeros when ``g`` has no rows)."""
    n, m = g.shape
    if m == 0:
        return
    blocks, tpb = _column_grid(m)
    _col_sum_kernel[blocks, tpb](g, out)


@register("gemm", "cuda")
def gemm(a, b, out):
    """``out = a @ b`` for 2-D ``a`` (m, k), ``b`` (k, n), ``out`` (m, n):
    any strides, float32 or float64, accumulated in ``out``'s dtype."""
    m, k = a.shape
    k2, n = b.shape
    if k2 != k or tuple(out.shape) != (m, n):
        raise ValueError(f"gemm: shapes {tuple(a.shape)} @ {tuple(b.shape)} -> {tuple(out.shape)} do not match")
    kernel = _GEMM.get(np.dtype(out.dtype))
    if kernel is None:
        raise TypeError(f"gemm: out must be float32 or float64, not {out.dtype}")
    if m == 0 or n == 0:
        return
    blocks, tpb = _launch.grid_2d(m, n, TILE)
    kernel[blocks, tpb](_operand(a), _operand(b), _operand(out), _colmajor(a), _colmajor(b))
