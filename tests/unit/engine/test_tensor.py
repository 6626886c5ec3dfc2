"""The autograd core (``tensor.py``): topological backward, accumulation, deep
graphs, ``no_grad``.
"""
from __future__ import annotations

import numpy as np
import pytest

from raven_hpc.engine import Tensor, add, dense, matmul, no_grad, relu



def test_shared_node_accumulates_and_order_is_topological():
    # y = (a + a) @ w, with a used twice and through two paths.
    rng = np.random.default_rng(0)
    a = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    w = Tensor(rng.standard_normal((4, 2)), requires_grad=True)
    h = add(a, a)
    y = add(matmul(h, w), matmul(a, w))
    y.backward(np.ones((3, 2)))
    expect = 3 * np.ones((3, 2)) @ w.data.T
    np.testing.assert_allclose(a.grad, expect, rtol=1e-12)
    np.testing.assert_allclose(w.grad, (3 * a.data).T @ np.ones((3, 2)), rtol=1e-12)


def test_backward_twice_accumulates():
    a = Tensor(np.array([[1.0, -2.0]]), requires_grad=True)
    y = relu(a)
    y.backward(np.ones((1, 2)))
    y.backward(np.ones((1, 2)))
    np.testing.assert_array_equal(a.grad, [[2.0, 0.0]])


def test_deep_graph_no_recursion_limit():
    a = Tensor(np.ones((2, 2)), requires_grad=True)
    h = a
    for _ in range(5000):
        h = add(h, 1.0)
    h.backward(np.ones((2, 2)))
    np.testing.assert_array_equal(a.grad, np.ones((2, 2)))


def test_no_grad_records_nothing():
    a = Tensor(np.ones((2, 3)), requires_grad=True)
    w = Tensor(np.ones((3, 2)), requires_grad=True)
    with no_grad():
        y = dense(a, w, None, "relu")
    assert not y.requires_grad and y.parents == () and y.ctx is None
    with pytest.raises(RuntimeError):
        y.backward(np.ones((2, 2)))
    y = dense(a, w)
    assert y.requires_grad and y.op == "dense"


def test_backward_needs_grad_for_non_scalar():
    a = Tensor(np.ones((2, 2)), requires_grad=True)
    with pytest.raises(RuntimeError, match="one-element"):
        relu(a).backward()
