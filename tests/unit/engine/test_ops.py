"""Every op's forward and backward vs finite differences and torch; the ops of ``ops.py``.

One row per op in ``OP_CASES`` -- this module's and each op family's
(``cases_*.py``) -- and each row runs through the same helper
(``_gradcheck.py``) for several seeds, i.e. several random shapes.  The
autograd core itself is tested in ``test_tensor.py``.
"""
from __future__ import annotations

import numpy as np
import pytest

from raven_hpc.engine import GRADIENTS, Tensor, add, dense, matmul, relu, reshape, softmax_cross_entropy
from raven_hpc.errors import DatasetError, ModelError

from . import cases_act, cases_conv, cases_norm
from .._gradcheck import OpCase, check_against_torch, check_finite_differences


SEEDS = [0, 1, 2]


def _dims(rng, lo=1, hi=9):
    return [int(v) for v in rng.integers(lo, hi + 1, size=3)]


def _away_from_zero(rng, shape):
    """Normal values pushed at least 0.1 from 0 (so ReLU's kink is far away)."""
    v = rng.standard_normal(shape)
    return np.sign(v) * (0.1 + np.abs(v))


def _mm_inputs(rng):
    n, k, m = _dims(rng)
    return [rng.standard_normal((n, k)), rng.standard_normal((k, m))], {}


def _add_inputs(shape_b):
    def make(rng):
        n, m, _ = _dims(rng)
        return [rng.standard_normal((n, m)), rng.standard_normal(shape_b(n, m))], {}
    return make


def _dense_inputs(bias):
    def make(rng):
        n, k, m = _dims(rng)
        arrays = [rng.standard_normal((n, k)), rng.standard_normal((k, m))]
        if bias:
            arrays.append(rng.standard_normal(m))
        return arrays, {}
    return make


def _xent_inputs(offset=0.0):
    def make(rng):
        n, c, _ = _dims(rng, 2, 12)
        return [rng.standard_normal((n, c)) * 3 + offset], {"labels": rng.integers(0, c, n).astype(np.int64)}
    return make


def _torch_dense(act):
    def f(torch, x, W, b=None):
        z = x @ W if b is None else x @ W + b
        return torch.relu(z) if act == "relu" else z
    return f


def _xent(logits, labels):
    return softmax_cross_entropy(logits, labels)[0]


def _torch_xent(torch, logits, labels):
    return torch.nn.functional.cross_entropy(logits, labels, reduction="sum")


OP_CASES = [
    OpCase("matmul", matmul, lambda torch, a, b: a @ b, _mm_inputs),
    OpCase("add", add, lambda torch, a, b: a + b, _add_inputs(lambda n, m: (n, m))),
    OpCase("add_bcast_row", add, lambda torch, a, b: a + b, _add_inputs(lambda n, m: (m,))),
    OpCase("add_bcast_col", add, lambda torch, a, b: a + b, _add_inputs(lambda n, m: (n, 1))),
    OpCase("add_bcast_scalar", add, lambda torch, a, b: a + b, _add_inputs(lambda n, m: (1, 1))),
    OpCase("relu", relu, lambda torch, a: torch.relu(a),
           lambda rng: ([_away_from_zero(rng, tuple(_dims(rng)))], {})),
    OpCase("reshape", lambda a: reshape(a, (a.shape[0], -1)), lambda torch, a: a.reshape(a.shape[0], -1),
           lambda rng: ([rng.standard_normal(tuple(_dims(rng)))], {})),
    OpCase("dense_linear", lambda x, W, b: dense(x, W, b), _torch_dense(None), _dense_inputs(True)),
    OpCase("dense_relu", lambda x, W, b: dense(x, W, b, "relu"), _torch_dense("relu"), _dense_inputs(True)),
    OpCase("dense_relu_nobias", lambda x, W: dense(x, W, None, "relu"), _torch_dense("relu"),
           _dense_inputs(False)),
    OpCase("dense_linear_nobias", lambda x, W: dense(x, W), _torch_dense(None), _dense_inputs(False)),
    OpCase("dense_relu_input_layer", lambda x, W, b: dense(x, W, b, "relu"), _torch_dense("relu"),
           _dense_inputs(True), requires_grad=(False, True, True)),
    OpCase("softmax_cross_entropy", _xent, _torch_xent, _xent_inputs()),
    OpCase("softmax_cross_entropy_large_logits", _xent, _torch_xent, _xent_inputs(offset=500.0),
           fd_eps=1e-5, fd_rtol=1e-4, fd_atol=1e-6, torch_atol=1e-3),
]

CORE_RULES = {"matmul", "add", "relu", "reshape", "dense", "softmax_cross_entropy"}

# each op family keeps its rows in its own table (tests/unit/engine/cases_*.py)
_FAMILIES = (cases_act, cases_conv, cases_norm)

OP_CASES = OP_CASES + [c for fam in _FAMILIES for c in fam.OP_CASES]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", OP_CASES, ids=str)
def test_op_vs_finite_differences(case, seed):
    check_finite_differences(case, seed)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", OP_CASES, ids=str)
def test_op_vs_torch(case, seed, torch):
    check_against_torch(case, seed, torch)


def test_every_rule_has_a_case():
    """A new gradient rule needs a row in OP_CASES."""
    tested = set(CORE_RULES).union(*(fam.RULES for fam in _FAMILIES))
    assert set(GRADIENTS) <= tested, f"untested gradient rules: {set(GRADIENTS) - tested}"


def test_input_layer_skips_dx():
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((4, 3)).astype(np.float32))
    W = Tensor(rng.standard_normal((3, 2)).astype(np.float32), requires_grad=True)
    b = Tensor(np.zeros(2, np.float32), requires_grad=True)
    loss, _ = softmax_cross_entropy(dense(x, W, b, "relu"), np.array([0, 1, 0, 1]))
    loss.backward()
    assert x.grad is None and W.grad is not None and b.grad is not None


def test_softmax_cross_entropy_counts_correct_and_checks_labels():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0]], np.float32)
    loss, correct = softmax_cross_entropy(logits, np.array([0, 1, 0]))
    assert correct == 2
    with pytest.raises(DatasetError, match="label 3 at batch row 1"):
        softmax_cross_entropy(logits, np.array([0, 3, 0]))
    with pytest.raises(DatasetError, match="label -1"):
        softmax_cross_entropy(logits, np.array([-1, 0, 0]))
    with pytest.raises(DatasetError, match="integers"):
        softmax_cross_entropy(logits, np.array([0.0, 1.0, 0.0]))


def test_softmax_cross_entropy_is_stable():
    logits = np.array([[1e4, -1e4, 0.0], [-1e30, 1e30, 0.0]], np.float32)
    t = Tensor(logits, requires_grad=True)
    loss, correct = softmax_cross_entropy(t, np.array([1, 1]))
    loss.backward()
    assert np.isfinite(loss.data) and np.all(np.isfinite(t.grad))
    np.testing.assert_allclose(float(loss.data), 2e4, rtol=1e-6)
    np.testing.assert_allclose(t.grad, [[1, -1, 0], [0, 0, 0]], atol=1e-6)


def test_unknown_activation():
    with pytest.raises(ModelError, match="unknown activation 'tanhh'"):
        dense(np.ones((1, 2)), np.ones((2, 2)), None, "tanhh")


def test_dense_workspace_reuse_gives_same_result():
    from raven_hpc.engine import Workspace

    rng = np.random.default_rng(3)
    ws = Workspace()
    x = rng.standard_normal((8, 5)).astype(np.float32)
    W = rng.standard_normal((5, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    ref = dense(x, W, b, "relu").data.copy()
    for n in (8, 3, 8):
        np.testing.assert_array_equal(dense(x[:n], W, b, "relu", ws=ws).data, ref[:n])
