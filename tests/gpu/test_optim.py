"""CUDA optimizer kernels (kernels/cuda/optim.py) against the CPU ones.

One step from random, non-zero state for every option the CPU kernels take;
parameters and every state array written in place are compared, and unused
state arrays are passed empty as the engine does.  333 parameters: not a
multiple of the block size.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.gpu.conftest import run_both

N = 333
EMPTY = np.zeros(0, np.float32)


def _vecs(dtype, k, seed=0, gdtype=None):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(N).astype(dtype)
    g = (rng.standard_normal(N) * 40.0).astype(gdtype or dtype)   # a gradient *sum*, scaled down in the kernel
    states = [np.abs(rng.standard_normal(N)).astype(dtype) * 0.1 for _ in range(k)]
    return p, g, states


def _tol(dtype):
    return dict(rtol=2e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)


# dtype of p/state, dtype of g
DTYPES = [(np.float32, np.float32), (np.float32, np.float64), (np.float64, np.float64)]

# momentum, dampening, weight_decay, nesterov, first, scale
SGD = [
    (0.0, 0.0, 0.0, False, False, 1.0),
    (0.0, 0.0, 1e-2, False, True, 0.25),
    (0.9, 0.0, 0.0, False, True, 0.25),
    (0.9, 0.1, 1e-2, False, False, 0.25),
    (0.9, 0.0, 5e-4, True, False, 1.0),
    (0.5, 0.3, 1e-2, True, True, 0.03),
]


@pytest.mark.parametrize("p_dt,g_dt", DTYPES)
@pytest.mark.parametrize("momentum,dampening,wd,nesterov,first,scale", SGD)
def test_sgd_step(cuda_backend, p_dt, g_dt, momentum, dampening, wd, nesterov, first, scale):
    p, g, (buf,) = _vecs(p_dt, 1, seed=1, gdtype=g_dt)
    buf = buf if momentum else EMPTY.astype(p_dt)
    outs = (0, 2) if momentum else (0,)
    run_both(cuda_backend, "sgd_step", [p, g, buf, 0.05, momentum, dampening, wd, nesterov, first, scale],
             outs=outs, **_tol(p_dt))


# weight_decay, decoupled, amsgrad, step, scale
ADAM = [
    (0.0, False, False, 1, 1.0),
    (1e-2, False, False, 7, 0.25),
    (1e-2, True, False, 3, 0.25),
    (0.0, False, True, 1, 0.5),
    (1e-2, True, True, 12, 0.25),
    (1e-2, False, True, 4, 1.0),
]


@pytest.mark.parametrize("p_dt,g_dt", DTYPES)
@pytest.mark.parametrize("wd,decoupled,amsgrad,step,scale", ADAM)
def test_adam_step(cuda_backend, p_dt, g_dt, wd, decoupled, amsgrad, step, scale):
    p, g, (m, v, vmax) = _vecs(p_dt, 3, seed=2, gdtype=g_dt)
    if amsgrad:
        vmax[::2] = 1e3    # half the maxima stay, half are overtaken by the new v
        vmax[1::2] = 0.0
    else:
        vmax = EMPTY.astype(p_dt)
    outs = (0, 2, 3, 4) if amsgrad else (0, 2, 3)
    _, back, _, _ = run_both(cuda_backend, "adam_step",
                             [p, g, m, v, vmax, 1e-3, 0.9, 0.999, 1e-8, wd, decoupled, amsgrad, step, scale],
                             outs=outs, **_tol(p_dt))
    if amsgrad:
        assert np.all(back[4][::2] == 1e3) and np.all(back[4][1::2] == back[3][1::2])


# weight_decay, momentum, centered, scale
RMSPROP = [
    (0.0, 0.0, False, 1.0),
    (1e-2, 0.0, False, 0.25),
    (0.0, 0.9, False, 0.25),
    (1e-2, 0.0, True, 0.25),
    (1e-2, 0.9, True, 0.5),
]


@pytest.mark.parametrize("p_dt,g_dt", DTYPES)
@pytest.mark.parametrize("wd,momentum,centered,scale", RMSPROP)
def test_rmsprop_step(cuda_backend, p_dt, g_dt, wd, momentum, centered, scale):
    p, g, (sq, avg, buf) = _vecs(p_dt, 3, seed=3, gdtype=g_dt)
    if centered:
        avg[::5] = 50.0      # s - a^2 < 0 here: the clamp at 0 is taken
    else:
        avg = EMPTY.astype(p_dt)
    if not momentum:
        buf = EMPTY.astype(p_dt)
    outs = (0, 2) + ((3,) if centered else ()) + ((4,) if momentum else ())
    run_both(cuda_backend, "rmsprop_step", [p, g, sq, avg, buf, 1e-2, 0.99, 1e-8, wd, momentum, centered, scale],
             outs=outs, **_tol(p_dt))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 0.125])
def test_sum_squares(cuda_backend, dtype, scale):
    g = np.random.default_rng(4).standard_normal(N).astype(dtype)
    _, _, r_cpu, r_gpu = run_both(cuda_backend, "sum_squares", [g, scale], rtol=1e-13, atol=0.0)
    assert isinstance(r_gpu, float)


def test_sum_squares_default_scale_and_empty(cuda_backend):
    fn = cuda_backend.kernel("sum_squares")
    assert fn(cuda_backend.to_device(np.zeros(0, np.float32))) == 0.0
    g = np.arange(5, dtype=np.float32)
    assert fn(cuda_backend.to_device(g)) == 30.0


def test_sum_squares_strided_deterministic(cuda_backend, monkeypatch):
    """Threads striding over several elements (grid capped at 2 blocks),
    blocks of 96 threads (no power of two), same bits on a repeat call."""
    from raven_hpc.kernels.cuda import _launch

    monkeypatch.setattr(_launch, "MAX_BLOCKS", 2)
    monkeypatch.setattr(_launch, "_THREADS", 96)
    g = (np.random.default_rng(5).standard_normal(500) * 1e3).astype(np.float32)
    _, _, r_cpu, r_gpu = run_both(cuda_backend, "sum_squares", [g, 0.5], rtol=1e-13, atol=0.0)
    assert cuda_backend.kernel("sum_squares")(cuda_backend.to_device(g), 0.5) == r_gpu


def test_sgd_strided(cuda_backend, monkeypatch):
    from raven_hpc.kernels.cuda import _launch

    monkeypatch.setattr(_launch, "MAX_BLOCKS", 2)
    p, g, (buf,) = _vecs(np.float32, 1, seed=6)
    run_both(cuda_backend, "sgd_step", [p, g, buf, 0.05, 0.9, 0.0, 1e-3, True, False, 0.25], outs=(0, 2),
             **_tol(np.float32))
