"""The kernel backend reaches every op of a model through its workspaces.

A recording backend (the CPU backend that notes which kernels, GEMMs and
allocations were asked of it) is handed to ``build_model``; with the
CPU fallback of stand-alone ops made to fail, training, evaluation and an
optimizer step still run, and give the CPU backend's numbers bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest

from raven_hpc.engine import Workspace, build_model, make_optimizer
from raven_hpc.engine import workspace as workspace_mod
from raven_hpc.engine.workspace import CPU_BACKEND, CPU_KERNELS, KernelTable, buffer, kernels_of
from raven_hpc.kernels import CpuBackend, get_kernel

SPEC = {
    "layers": [
        {"type": "reshape", "shape": [1, 8, 8]},
        {"type": "conv2d", "filters": 3, "kernel_size": 3, "padding": 1, "activation": "gelu"},
        {"type": "max_pool2d", "pool_size": 2},
        {"type": "batchnorm"},
        {"type": "avg_pool2d", "pool_size": 2},
        {"type": "dense", "units": 8, "activation": "relu"},
        {"type": "dropout", "rate": 0.25},
        {"type": "layernorm"},
        {"type": "activation", "fn": "softmax"},
        {"type": "dense", "units": 4},
    ],
    "loss": {"name": "huber", "delta": 0.5},
}


class RecordingBackend(CpuBackend):
    """A device-like backend: memory of its own (copies in and out), every
    kernel, GEMM and allocation recorded."""

    name = "recording"

    def __init__(self):
        super().__init__()
        self.kernels, self.gemms, self.allocs, self.copies_in, self.copies_out = [], 0, 0, 0, 0

    def to_device(self, host):
        self.copies_in += 1
        return np.array(host, copy=True)

    def to_host(self, arr, out=None):
        self.copies_out += 1
        if out is None:
            return np.array(arr, copy=True)
        np.copyto(out, arr)
        return out

    def kernel(self, op):
        self.kernels.append(op)
        return super().kernel(op)

    def gemm(self, a, b, out=None):
        self.gemms += 1
        return super().gemm(a, b, out)

    def empty(self, shape, dtype=np.float32):
        self.allocs += 1
        return super().empty(shape, dtype)

    def zeros(self, shape, dtype=np.float32):
        self.allocs += 1
        return super().zeros(shape, dtype)


class _NoKernels:
    def __getattr__(self, op):
        raise AssertionError(f"kernel {op!r} taken from the CPU fallback, not the model's backend")


def _data():
    rng = np.random.default_rng(3)
    return rng.standard_normal((6, 64)).astype(np.float32), rng.integers(0, 4, 6)


def test_every_kernel_gemm_and_buffer_of_a_model_comes_from_its_backend(monkeypatch):
    x, y = _data()
    ref = build_model(SPEC, (64,), 4)
    ref_loss = ref.loss_and_grad(x, y, accumulate=False, key=(1,))
    ref_opt = make_optimizer({"name": "adam", "lr": 0.01, "clip_norm": 1.0}, ref)
    ref.apply_gradient(ref_opt, ref.grads.astype(np.float64), 6)

    be = RecordingBackend()
    cpu_kernels = workspace_mod.CPU_KERNELS
    monkeypatch.setattr(workspace_mod, "CPU_KERNELS", _NoKernels())
    m = build_model(SPEC, (64,), 4, backend=be)
    assert m.backend is be
    assert m.loss_and_grad(x, y, accumulate=False, key=(1,)) == ref_loss
    np.testing.assert_array_equal(m.grads, ref.grads)
    assert m.on_device and be.copies_out >= 1     # the gradient came back to the host vector
    # a device model's update steps its host vectors, on the CPU
    monkeypatch.setattr(workspace_mod, "CPU_KERNELS", cpu_kernels)
    opt = make_optimizer({"name": "adam", "lr": 0.01, "clip_norm": 1.0}, m)
    assert opt.backend.name == "cpu"
    m.apply_gradient(opt, m.grads.astype(np.float64), 6)
    monkeypatch.setattr(workspace_mod, "CPU_KERNELS", _NoKernels())
    np.testing.assert_array_equal(m.params, ref.params)
    assert m.evaluate(x, y) == ref.evaluate(x, y)
    np.testing.assert_array_equal(m.forward(x).data, ref.forward(x).data)
    for op in ("im2col", "col2im", "conv_bias_out", "conv_grad_in", "act_forward", "act_backward",
               "max_pool_forward", "max_pool_backward", "avg_pool_forward", "avg_pool_backward",
               "batchnorm_stats", "batchnorm_apply", "batchnorm_backward", "layernorm_forward",
               "layernorm_backward", "dropout_forward", "dropout_backward", "softmax_forward",
               "softmax_backward", "bias_act_forward", "bias_act_backward", "huber_onehot"):
        assert op in be.kernels, op
    assert be.gemms > 0 and be.allocs > 0


def test_kernels_are_bound_once_per_workspace_not_per_call():
    be = RecordingBackend()
    m = build_model({"layers": [{"type": "dense", "units": 5, "activation": "relu"}, {"type": "dense", "units": 3}]},
                    (4,), 3, backend=be)
    x, y = np.ones((2, 4), np.float32), np.array([0, 2])
    m.loss_and_grad(x, y)
    first = list(be.kernels)
    for _ in range(3):
        m.loss_and_grad(x, y)
    assert first and be.kernels == first   # later passes look nothing up


def test_kernel_table_binds_on_first_use_and_keeps_the_function():
    be = RecordingBackend()
    table = KernelTable(be)
    assert table.col_sum is get_kernel("col_sum")
    assert table.col_sum is get_kernel("col_sum")
    assert be.kernels == ["col_sum"]
    assert table.gemm == be.gemm
    with pytest.raises(KeyError):
        table.no_such_op


def test_standalone_ops_use_the_cpu_backend():
    assert kernels_of(None) is CPU_KERNELS and CPU_KERNELS.backend is CPU_BACKEND
    ws = Workspace()
    assert ws.backend is CPU_BACKEND and kernels_of(ws) is CPU_KERNELS
    a = buffer(None, "y", (2, 3), np.float32)
    assert a.shape == (2, 3) and a.dtype == np.float32


def test_workspace_reuses_or_not():
    ws = Workspace(RecordingBackend())
    a = ws.buf("y", (4, 3))
    assert ws.buf("y", (4, 3)) is a
    assert ws.buf("y", (2, 3)).base is a
    assert ws.backend.allocs == 1
    fresh = Workspace(reuse=False)
    assert fresh.buf("y", (4, 3)) is not fresh.buf("y", (4, 3))
    assert list(fresh.keys()) == []
