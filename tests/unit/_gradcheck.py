"""One helper that checks an op's forward and backward.

An :class:`OpCase` describes an op once: the engine call, the same thing in
torch, how to draw inputs for a random shape.  Then

* :func:`check_finite_differences` runs the op in **float64**, back-propagates
  a random output gradient ``R`` and compares every input's gradient with
  central differences of ``sum(op(...) * R)``;
* :func:`check_against_torch` runs the op in **float32** in both engines and
  compares outputs and gradients with ``atol``/``rtol``.

Adding an op to the tests is one more ``OpCase`` row in ``OP_CASES``
(``engine/test_ops.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np

from raven_hpc.engine import Tensor, no_grad


@dataclass
class OpCase:
    name: str
    #: engine: fn(*tensors, **extras) -> Tensor
    fn: Callable[..., Tensor]
    #: torch: torch_fn(torch, *tensors, **extras) -> torch.Tensor
    torch_fn: Callable[..., Any]
    #: inputs(rng) -> (list of float64 arrays, extras dict of non-differentiable args)
    inputs: Callable[[np.random.Generator], Tuple[List[np.ndarray], Dict[str, Any]]]
    #: which inputs require grad (default: all)
    requires_grad: Sequence[bool] = field(default_factory=tuple)
    fd_eps: float = 1e-6
    fd_rtol: float = 1e-5
    fd_atol: float = 1e-7
    torch_rtol: float = 1e-4
    torch_atol: float = 1e-5

    def __str__(self) -> str:
        return self.name

    def needs(self, n: int) -> List[bool]:
        return list(self.requires_grad) if self.requires_grad else [True] * n


def _run(case: OpCase, arrays: Sequence[np.ndarray], extras: Dict[str, Any], dtype, grad_out=None):
    ts = [Tensor(a.astype(dtype), requires_grad=r) for a, r in zip(arrays, case.needs(len(arrays)))]
    out = case.fn(*ts, **extras)
    if grad_out is not None:
        out.backward(np.asarray(grad_out, dtype=dtype))
    return out, ts


def check_finite_differences(case: OpCase, seed: int, max_points: int = 24) -> None:
    """Analytic float64 gradients vs central differences at random elements."""
    rng = np.random.default_rng(seed)
    arrays, extras = case.inputs(rng)
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    out, _ = _run(case, arrays, extras, np.float64)
    assert out.dtype == np.float64, f"{case.name}: float64 in, {out.dtype} out"
    R = np.asarray(rng.standard_normal(out.shape)).reshape(out.shape)
    out, ts = _run(case, arrays, extras, np.float64, grad_out=R)

    def objective(xs):
        with no_grad():
            o = case.fn(*[Tensor(x) for x in xs], **extras)
        return float(np.sum(o.data * R))

    for i, (t, need) in enumerate(zip(ts, case.needs(len(arrays)))):
        if not need:
            assert t.grad is None, f"{case.name}: input {i} got a gradient it did not ask for"
            continue
        assert t.grad is not None, f"{case.name}: input {i} got no gradient"
        assert t.grad.shape == arrays[i].shape
        flat = arrays[i].reshape(-1)
        idx = np.arange(flat.size)
        if flat.size > max_points:
            idx = rng.choice(flat.size, max_points, replace=False)
        fd = np.empty(len(idx))
        for j, k in enumerate(idx):
            xs = [a.copy() for a in arrays]
            xs[i].reshape(-1)[k] += case.fd_eps
            fp = objective(xs)
            xs[i].reshape(-1)[k] -= 2 * case.fd_eps
            fm = objective(xs)
            fd[j] = (fp - fm) / (2 * case.fd_eps)
        np.testing.assert_allclose(
            t.grad.reshape(-1)[idx], fd, rtol=case.fd_rtol, atol=case.fd_atol,
            err_msg=f"{case.name}: d/d input {i} vs finite differences (seed {seed})",
        )


def check_against_torch(case: OpCase, seed: int, torch) -> None:
    """float32 forward and backward vs torch CPU."""
    rng = np.random.default_rng(seed)
    arrays, extras = case.inputs(rng)
    arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
    needs = case.needs(len(arrays))
    out, _ = _run(case, arrays, extras, np.float32)
    R = np.asarray(rng.standard_normal(out.shape), dtype=np.float32).reshape(out.shape)
    out, ts = _run(case, arrays, extras, np.float32, grad_out=R)
    assert out.dtype == np.float32

    tt = [torch.tensor(a, requires_grad=r) for a, r in zip(arrays, needs)]
    textras = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in extras.items()}
    tout = case.torch_fn(torch, *tt, **textras)
    tout.backward(torch.from_numpy(R).reshape(tout.shape))

    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=case.torch_rtol, atol=case.torch_atol,
                               err_msg=f"{case.name}: forward vs torch (seed {seed})")
    for i, (t, ref, need) in enumerate(zip(ts, tt, needs)):
        if not need:
            assert t.grad is None
            continue
        np.testing.assert_allclose(t.grad, ref.grad.numpy(), rtol=case.torch_rtol, atol=case.torch_atol,
                                   err_msg=f"{case.name}: d/d input {i} vs torch (seed {seed})")
