"""CUDA kernels of the normalisation, dropout and embedding layers.

Each launcher has the signature, argument meaning, in-place outputs and
return value of its CPU twin in :mod:`raven_hpc.kernels.norm`.

* **Reductions are deterministic** -- no float atomics.  A per-channel
  (batch norm) or per-row (layer norm) statistic belongs to one block: each
  thread sums a fixed stride of the values in float64, then a shared-memory
  tree adds the threads' partials in a fixed pattern
  (:func:`~raven_hpc.kernels.cuda._blocks.block_sum`).  Per-column sums
  over the batch (layer norm's ``dgamma``/``dbeta``) belong to one thread
  looping over the rows in order.  The result therefore depends only on the
  block size, never on timing.
* **Batch norm** views ``x`` as ``(n, C, L)``; its statistics are shifted by
  the channel's first value as on the CPU, so a large mean does not cancel
  the variance away.  The backward's per-channel sums also produce the
  ``dx`` coefficients in the data dtype (rounded as the CPU rounds them),
  which an elementwise kernel then applies.
* **Layer norm** views ``x`` as ``(n, D)``: one block per row computes the
  row's moments and, after a barrier, normalises the row.
* **Dropout** applies the mask given by the caller's float32 uniforms ``u``
  (kept where ``u >= rate``), comparing in ``u``'s dtype and scaling in the
  data dtype exactly as the CPU kernel does, so both backends drop the
  same elements for the same ``u``.
* **Embedding**: :func:`embedding_indices` reports the first invalid id
  through an integer ``atomic.min`` (order-independent, hence exact);
  :func:`embedding_backward` gives every ``dW`` element one owning thread,
  which zeroes it and then adds the matching gradient rows in index order,
  the CPU's order.

Launchers receive device arrays (CuPy on a GPU, NumPy under the simulator)
and never call NumPy on them; scratch space is ``cuda.device_array``.
Zero-size arrays (``dx`` not wanted, no affine parameters) are never
passed to a kernel: the launcher skips that kernel or passes a one-element
stand-in (:func:`~raven_hpc.kernels.cuda.reduce.dummy`) that the kernel
does not read.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64, int64

from .._registry import register
from . import _launch
from ._blocks import MAX_THREADS, block_sum
from .reduce import dummy

__all__ = [
    "batchnorm_stats",
    "batchnorm_apply",
    "batchnorm_backward",
    "layernorm_forward",
    "layernorm_backward",
    "dropout_forward",
    "dropout_backward",
    "embedding_indices",
    "embedding_backward",
]

#: owner threads :func:`embedding_backward` aims for, per thread of a block
_EMB_OWNERS_PER_THREAD = 64


def _blocks(n: int) -> int:
    """Blocks for a block-per-item loop over ``n`` items (channels, rows)."""
    return max(1, min(_launch.MAX_BLOCKS, int(n)))


@cuda.jit(device=True)
def _split_ncl(j, CL, L):
    """``(i, c, l)`` of the flat C-order index ``j`` of an ``(n, C, L)`` array (``CL = C * L``)."""
    i = j // CL
    r = j - i * CL
    c = r // L
    return i, c, r - c * L


# -- batch norm --------------------------------------------------------------------
@cuda.jit
def _bn_stats_k(x, mean, var):
    sh = cuda.shared.array(MAX_THREADS, float64)
    n, C, L = x.shape
    count = n * L
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for c in range(cuda.blockIdx.x, C, cuda.gridDim.x):
        k = float64(x[0, c, 0])
        a = 0.0
        q = 0.0
        for j in range(t, count, nt):
            i = j // L
            d = x[i, c, j - i * L] - k
            a += d
            q += d * d
        sa_tot = block_sum(sh, a)
        sq_tot = block_sum(sh, q)
        if t == 0:
            m = sa_tot / count
            mean[c] = k + m
            v = sq_tot / count - m * m
            var[c] = v if v > 0.0 else 0.0


@register("batchnorm_stats", "cuda")
def batchnorm_stats(x, mean, var):
    """Per-channel mean and biased variance of ``x`` (n, C, L) into float64 ``mean``, ``var`` (C,)."""
    n, C, L = x.shape
    if n * L == 0:
        raise ValueError(f"batchnorm_stats needs at least one value per channel, got x of shape {tuple(x.shape)}")
    if C == 0:
        return
    _bn_stats_k[_blocks(C), _launch.threads()](x, mean, var)


@cuda.jit
def _bn_apply_k(x, mean, scale, beta, y):
    n, C, L = x.shape
    CL = C * L
    for j in range(cuda.grid(1), n * CL, cuda.gridsize(1)):
        i, c, l = _split_ncl(j, CL, L)
        y[i, c, l] = (x[i, c, l] - mean[c]) * scale[c] + beta[c]


@register("batchnorm_apply", "cuda")
def batchnorm_apply(x, mean, scale, beta, y):
    """``y = (x - mean[c]) * scale[c] + beta[c]`` over ``x``, ``y`` (n, C, L).

    ``mean``, ``scale`` (= gamma / std) and ``beta`` are (C,) in the data
    dtype; ``y`` may be ``x`` (each element is read before it is written,
    by the same thread).
    """
    if x.size == 0:
        return
    _bn_apply_k[_launch.grid(x.size)](x, mean, scale, beta, y)


@cuda.jit
def _bn_back_sums_k(g, x, mean, invstd, gamma, training, sum_g, sum_gxhat, coef):
    sh = cuda.shared.array(MAX_THREADS, float64)
    n, C, L = x.shape
    count = n * L
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for c in range(cuda.blockIdx.x, C, cuda.gridDim.x):
        m = float64(mean[c])
        a = 0.0
        q = 0.0
        for j in range(t, count, nt):
            i = j // L
            l = j - i * L
            gv = float64(g[i, c, l])
            a += gv
            q += gv * (x[i, c, l] - m)
        s1 = block_sum(sh, a)
        s2 = block_sum(sh, q)
        if t == 0:
            r = float64(invstd[c])
            sum_g[c] = s1
            sum_gxhat[c] = s2 * r
            # dx = coef0 * g - coef1 - coef2 * (x - coef3), coefficients in dx's dtype
            k = gamma[c] * r
            coef[0, c] = k
            coef[3, c] = m
            if training:
                coef[1, c] = k * s1 / count
                coef[2, c] = k * r * r * s2 / count
            else:
                coef[1, c] = 0.0
                coef[2, c] = 0.0


@cuda.jit
def _bn_back_dx_k(g, x, coef, dx):
    n, C, L = x.shape
    CL = C * L
    for j in range(cuda.grid(1), n * CL, cuda.gridsize(1)):
        i, c, l = _split_ncl(j, CL, L)
        dx[i, c, l] = coef[0, c] * g[i, c, l] - coef[1, c] - coef[2, c] * (x[i, c, l] - coef[3, c])


@register("batchnorm_backward", "cuda")
def batchnorm_backward(g, x, mean, invstd, gamma, training, sum_g, sum_gxhat, dx):
    """Gradients of batch norm given the output gradient ``g`` (n, C, L).

    ``mean``/``invstd`` (C,) float64 are what the forward pass normalised
    with (batch statistics when ``training``, running ones otherwise).
    Writes ``sum_g = dbeta`` and ``sum_gxhat = dgamma`` (C,), and -- unless
    ``dx`` is empty (the input needs no gradient) -- ``dx`` (n, C, L)::

        training: dx = gamma*invstd * (g - mean_c(g) - xhat * mean_c(g*xhat))
        eval:     dx = gamma*invstd * g
    """
    n, C, L = x.shape
    if C == 0:
        return
    coef = cuda.device_array((4, C), dtype=dx.dtype)
    _bn_back_sums_k[_blocks(C), _launch.threads()](g, x, mean, invstd, gamma, bool(training),
                                                    sum_g, sum_gxhat, coef)
    if dx.size == 0:
        return
    _bn_back_dx_k[_launch.grid(dx.size)](g, x, coef, dx)


# -- layer norm --------------------------------------------------------------------
@cuda.jit(device=True)
def _ln_row_stats(sh, x, i, D, eps, mean, invstd, mr):
    """Moments of row ``i`` (shifted by its first value); thread 0 stores them.

    ``mean``/``invstd`` get them in float64, ``mr[i]`` in the data dtype.
    Ends with a barrier, so every thread of the block may read ``mr[i]``.
    """
    t = cuda.threadIdx.x
    k = float64(x[i, 0])
    a = 0.0
    q = 0.0
    for d in range(t, D, cuda.blockDim.x):
        v = x[i, d] - k
        a += v
        q += v * v
    sa_tot = block_sum(sh, a)
    sq_tot = block_sum(sh, q)
    if t == 0:
        s = sa_tot / D
        var = sq_tot / D - s * s
        if not var > 0.0:
            var = 0.0
        m = k + s
        r = 1.0 / math.sqrt(var + eps)
        mean[i] = m
        invstd[i] = r
        mr[i, 0] = m
        mr[i, 1] = r
    cuda.syncthreads()


@cuda.jit
def _ln_forward_k(x, affine, gamma, beta, eps, y, mean, invstd, mr):
    sh = cuda.shared.array(MAX_THREADS, float64)
    n, D = x.shape
    for i in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        _ln_row_stats(sh, x, i, D, eps, mean, invstd, mr)
        mt = mr[i, 0]
        rt = mr[i, 1]
        for d in range(cuda.threadIdx.x, D, cuda.blockDim.x):
            if affine:
                y[i, d] = (x[i, d] - mt) * rt * gamma[d] + beta[d]
            else:
                y[i, d] = (x[i, d] - mt) * rt


@register("layernorm_forward", "cuda")
def layernorm_forward(x, gamma, beta, affine, eps, y, mean, invstd):
    """Normalise each row of ``x`` (n, D) into ``y``; per-row ``mean``/``invstd`` (n,) float64 out.

    ``y = (x - mean) * invstd * gamma + beta`` (``gamma``/``beta`` (D,) used
    only when ``affine``); the variance is the biased one, as in torch.
    Statistics are float64; the normalisation runs in the data dtype.
    """
    n, D = x.shape
    if n == 0:
        return
    if D == 0:
        raise ValueError("layernorm_forward needs rows of at least one value, got x of shape "
                         f"{tuple(x.shape)}")
    mr = cuda.device_array((n, 2), dtype=y.dtype)
    if not affine:  # gamma and beta may be empty: a stand-in the kernel never reads
        gamma = beta = dummy(x.dtype)
    _ln_forward_k[_blocks(n), _launch.threads()](x, bool(affine), gamma, beta, float(eps), y, mean, invstd, mr)


@cuda.jit
def _ln_rows_cast_k(mean, invstd, mr):
    for i in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        mr[i, 0] = mean[i]
        mr[i, 1] = invstd[i]


@cuda.jit
def _ln_param_grads_k(g, x, mr, dgamma, dbeta):
    n, D = x.shape
    for d in range(cuda.grid(1), D, cuda.gridsize(1)):
        a = 0.0
        b = 0.0
        for i in range(n):
            gv = g[i, d]
            a += gv
            b += gv * ((x[i, d] - mr[i, 0]) * mr[i, 1])
        dbeta[d] = a
        dgamma[d] = b


@cuda.jit
def _ln_dx_k(g, x, mr, affine, gamma, ab, dx):
    """``dx`` of layer norm, one block per row; ``gg`` is ``g * gamma`` when
    ``affine``, else ``g``."""
    sh = cuda.shared.array(MAX_THREADS, float64)
    n, D = x.shape
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for i in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        mt = mr[i, 0]
        rt = mr[i, 1]
        a = 0.0
        b = 0.0
        for d in range(t, D, nt):
            gg = g[i, d] * gamma[d] if affine else g[i, d]
            a += gg
            b += gg * float64((x[i, d] - mt) * rt)
        sa_tot = block_sum(sh, a)
        sb_tot = block_sum(sh, b)
        if t == 0:
            ab[i, 0] = sa_tot / D
            ab[i, 1] = sb_tot / D
        cuda.syncthreads()
        ma = ab[i, 0]
        mb = ab[i, 1]
        for d in range(t, D, nt):
            gg = g[i, d] * gamma[d] if affine else g[i, d]
            dx[i, d] = rt * (gg - ma - (x[i, d] - mt) * rt * mb)


@register("layernorm_backward", "cuda")
def layernorm_backward(g, x, mean, invstd, gamma, affine, dx, dgamma, dbeta):
    """Gradients of layer norm given the output gradient ``g`` (n, D).

    ``dx`` (n, D) is written unless empty; ``dgamma``/``dbeta`` (D,) are
    written when ``affine``::

        gg = g * gamma;  dx = invstd * (gg - mean_d(gg) - xhat * mean_d(gg * xhat))

    ``dgamma``/``dbeta`` are summed over the rows in row order in float64
    (one thread per column).
    """
    n, D = x.shape
    want_dx = dx.size > 0
    if D == 0 or (not affine and not want_dx):
        return
    mr = cuda.device_array((max(n, 1), 2), dtype=x.dtype)
    if n > 0:
        _ln_rows_cast_k[_launch.grid(n)](mean, invstd, mr)
    if affine:
        _ln_param_grads_k[_launch.grid(D)](g, x, mr, dgamma, dbeta)
    if not want_dx or n == 0:
        return
    ab = cuda.device_array((n, 2), dtype=x.dtype)
    if not affine:  # gamma may be empty: a stand-in the kernel never reads
        gamma = dummy(x.dtype)
    _ln_dx_k[_blocks(n), _launch.threads()](g, x, mr, bool(affine), gamma, ab, dx)


# -- dropout -----------------------------------------------------------------------
@cuda.jit
def _dropout_k(x, u, rate, scale, y):
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        y[i] = x[i] * scale if u[i] >= rate else 0


def _dropout(data, u, rate, scale, out):
    """Launch :func:`_dropout_k` over 1-D ``data``, with ``rate`` in ``u``'s
    dtype and ``scale`` in the data dtype, as the CPU kernel casts them."""
    if data.shape[0] == 0:
        return
    r, s = np.dtype(u.dtype).type(rate), np.dtype(data.dtype).type(scale)
    _dropout_k[_launch.grid(data.shape[0])](data, u, r, s, out)


@register("dropout_forward", "cuda")
def dropout_forward(x, u, rate, scale, y):
    """``y = x * scale`` where ``u >= rate``, else 0 (1-D arrays; ``y`` may be ``x``)."""
    _dropout(x, u, rate, scale, y)


@register("dropout_backward", "cuda")
def dropout_backward(g, u, rate, scale, dx):
    """``dx = g * scale`` where ``u >= rate``, else 0 (the same mask as forward)."""
    _dropout(g, u, rate, scale, dx)


# -- embedding ---------------------------------------------------------------------
@cuda.jit
def _emb_indices_k(x, num, idx, first_bad):
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        v = x[i]
        ok = v >= 0 and v < num
        if ok:
            j = int64(v)
            ok = j == v
            if ok:
                idx[i] = j
        if not ok:
            cuda.atomic.min(first_bad, 0, int64(i))


@register("embedding_indices", "cuda")
def embedding_indices(x, num, idx):
    """Checked ``idx = int64(x)`` for 1-D float token ids ``x``.

    Returns -1 when every value is an integer in ``[0, num)``, otherwise the
    position of the first that is not (NaN included); ``idx`` is then
    only partly written.  (Reading the answer back waits for the device.)
    """
    m = x.shape[0]
    if m == 0:
        return -1
    first_bad = cuda.to_device(np.full(1, m, dtype=np.int64))
    _emb_indices_k[_launch.grid(m)](x, int(num), idx, first_bad)
    bad = int(_launch.read_scalar(first_bad))
    return -1 if bad >= m else bad


@cuda.jit
def _emb_backward_k(idx, g, dW, owners, chunk):
    V, dim = dW.shape
    m = idx.shape[0]
    for t in range(cuda.grid(1), owners * dim, cuda.gridsize(1)):
        ob = t // dim
        d = t - ob * dim
        lo = ob * chunk
        hi = min(lo + chunk, V)
        for r in range(lo, hi):
            dW[r, d] = 0
        for i in range(m):
            r = idx[i]
            if r >= lo and r < hi:
                dW[r, d] += g[i, d]


@register("embedding_backward", "cuda")
def embedding_backward(idx, g, dW):
    """``dW = 0; dW[idx[i]] += g[i]`` (``g`` (m, dim), ``dW`` (V, dim)).

    Each element of ``dW`` has one owning thread (a range of rows x one
    column), which adds its gradient rows in index order, in ``dW``'s dtype,
    like the CPU kernel.  ``idx`` comes from :func:`embedding_indices`;
    an index outside ``[0, V)`` matches no owner and is not written.
    """
    V, dim = dW.shape
    if V == 0 or dim == 0:
        return
    owners = max(1, min(V, _launch.threads() * _EMB_OWNERS_PER_THREAD // dim))
    chunk = (V + owners - 1) // owners
    owners = (V + chunk - 1) // chunk
    _emb_backward_k[_launch.grid(owners * dim)](idx, g, dW, owners, chunk)
