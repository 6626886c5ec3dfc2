"""Every engine op on the CUDA backend: the OpCase table of the CPU tests
(``tests/unit/engine``), run with :func:`use_backend` so each op takes its
kernels, GEMMs and scratch arrays from the CUDA backend -- forward and
backward in float64 and float32, against the CPU backend on the same
inputs (float64: to round-off; float32: to the CPU's own float32 tolerance
against torch)."""
from __future__ import annotations

import numpy as np
import pytest

from raven_hpc.engine import Tensor
from raven_hpc.engine.workspace import use_backend
from tests.unit.engine.test_ops import OP_CASES


def _run(case, arrays, extras, dtype, R, backend=None):
    put = (lambda a: a) if backend is None else backend.to_device
    get = (lambda a: a) if backend is None else backend.to_host
    ts = [Tensor(put(a.astype(dtype)), requires_grad=r) for a, r in zip(arrays, case.needs(len(arrays)))]
    dev_extras = {k: (put(v) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v) for k, v in extras.items()}
    with use_backend(backend):
        out = case.fn(*ts, **(extras if backend is None else dev_extras))
        out.backward(put(R.astype(dtype).reshape(out.shape)))
    return np.array(get(out.data)), [None if t.grad is None else np.array(get(t.grad)) for t in ts]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", OP_CASES, ids=str)
def test_op_on_cuda_matches_cpu(case, dtype, cuda_backend):
    if cuda_backend.simulated and (dtype == np.float32 or "many_blocks" in case.name):
        # the simulator runs each CUDA thread in Python: it runs the table in
        # float64; float32 is covered per kernel there (tests/gpu/test_<family>.py)
        pytest.skip("float32 and the multi-block conv run on a GPU (RAVEN_TEST_GPU=1); the simulator runs float64")
    rng = np.random.default_rng(11)
    arrays, extras = case.inputs(rng)
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    with use_backend(None):
        probe = case.fn(*[Tensor(a.astype(dtype)) for a in arrays], **extras)
    R = np.asarray(rng.standard_normal(probe.shape)).reshape(probe.shape)
    out_cpu, g_cpu = _run(case, arrays, extras, dtype, R)
    out_gpu, g_gpu = _run(case, arrays, extras, dtype, R, cuda_backend)
    rtol, atol = (1e-9, 1e-11) if dtype == np.float64 else (case.torch_rtol, case.torch_atol)
    assert out_gpu.dtype == out_cpu.dtype
    np.testing.assert_allclose(out_gpu, out_cpu, rtol=rtol, atol=atol, err_msg=f"{case.name}: forward")
    for i, (a, b) in enumerate(zip(g_gpu, g_cpu)):
        assert (a is None) == (b is None), f"{case.name}: input {i} gradient presence"
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"{case.name}: d/d input {i}")
