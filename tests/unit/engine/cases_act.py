"""OpCase rows for the act op family (see _gradcheck.py); gathered by test_ops.py.

Every elementwise activation standalone (default and non-default
parameters) and fused in ``dense`` (with and without bias, as an input
layer), ``softmax`` / ``log_softmax`` on 1-, 2- and 3-D inputs, and every
loss (label smoothing, Huber's ``delta``, extreme logits) -- each against
finite differences (float64) and torch (float32).

Inputs keep a margin from the kinks (0 for relu-like functions, the ends of
hardtanh, softplus's threshold, where it jumps) so that central differences
never straddle one.
"""
from __future__ import annotations

import numpy as np

from raven_hpc.engine import (
    activation,
    bce_with_logits,
    dense,
    huber_loss,
    log_softmax,
    mse_loss,
    softmax,
    softmax_cross_entropy,
)

from .._gradcheck import OpCase


def _dims(rng, lo=1, hi=9, k=3):
    return tuple(int(v) for v in rng.integers(lo, hi + 1, size=k))


def _away_from(rng, shape, kinks=(0.0,), margin=0.1, scale=2.0):
    """Normal values (times ``scale``) moved at least ``margin`` from every kink."""
    v = rng.standard_normal(shape) * scale
    for k in kinks:
        d = v - k
        close = np.abs(d) < margin
        v[close] = k + np.where(d[close] >= 0, margin, -margin) + d[close]
    return v


def _elementwise_inputs(kinks=(0.0,), scale=2.0):
    def make(rng):
        ndim = int(rng.integers(1, 4))
        return [_away_from(rng, _dims(rng, k=ndim), kinks, scale=scale)], {}
    return make


def _torch_act(name, **params):
    def f(torch, x):
        F = torch.nn.functional
        table = {
            "leaky_relu": lambda: F.leaky_relu(x, params.get("negative_slope", 0.01)),
            "elu": lambda: F.elu(x, params.get("alpha", 1.0)),
            "selu": lambda: F.selu(x),
            "gelu": lambda: F.gelu(x),
            "silu": lambda: F.silu(x),
            "swish": lambda: F.silu(x),
            "sigmoid": lambda: torch.sigmoid(x),
            "tanh": lambda: torch.tanh(x),
            "softplus": lambda: F.softplus(x, params.get("beta", 1.0), params.get("threshold", 20.0)),
            "softsign": lambda: F.softsign(x),
            "hardtanh": lambda: F.hardtanh(x, params.get("min_val", -1.0), params.get("max_val", 1.0)),
            "relu": lambda: torch.relu(x),
            "linear": lambda: x,
        }
        return table[name]()
    return f


def _act_row(label, name, kinks=(0.0,), scale=2.0, **params):
    return OpCase(label, lambda x: activation(x, name, **params), _torch_act(name, **params),
                  _elementwise_inputs(kinks, scale))


ACT_ROWS = [
    _act_row("leaky_relu", "leaky_relu"),
    _act_row("leaky_relu_slope_0.2", "leaky_relu", negative_slope=0.2),
    _act_row("leaky_relu_slope_0", "leaky_relu", negative_slope=0.0),
    _act_row("leaky_relu_slope_3", "leaky_relu", negative_slope=3.0),
    _act_row("elu", "elu"),
    _act_row("elu_alpha_0.5", "elu", alpha=0.5),
    _act_row("selu", "selu"),
    _act_row("gelu", "gelu", kinks=(), scale=3.0),
    _act_row("silu", "silu", kinks=(), scale=4.0),
    _act_row("swish", "swish", kinks=(), scale=4.0),
    _act_row("sigmoid", "sigmoid", kinks=(), scale=4.0),
    _act_row("tanh", "tanh", kinks=()),
    _act_row("softplus", "softplus", kinks=(), scale=6.0),
    # beta 2, threshold 1: the linear branch starts at x = 0.5 (a jump)
    _act_row("softplus_beta2_threshold1", "softplus", kinks=(0.5,), beta=2.0, threshold=1.0),
    _act_row("softplus_large_inputs", "softplus", kinks=(20.0,), scale=30.0),
    _act_row("softsign", "softsign", kinks=(), scale=4.0),
    _act_row("hardtanh", "hardtanh", kinks=(-1.0, 1.0)),
    _act_row("hardtanh_-0.5_2", "hardtanh", kinks=(-0.5, 2.0), min_val=-0.5, max_val=2.0),
]


# -- softmax / log_softmax over the last axis ---------------------------------------
def _axis_inputs(rng):
    ndim = int(rng.integers(1, 4))
    return [rng.standard_normal(_dims(rng, 1, 7, ndim)) * 3], {}


SOFTMAX_ROWS = [
    OpCase("softmax", softmax, lambda torch, x: torch.softmax(x, -1), _axis_inputs),
    OpCase("log_softmax", log_softmax, lambda torch, x: torch.log_softmax(x, -1), _axis_inputs),
    OpCase("softmax_by_name", lambda x: activation(x, "softmax"), lambda torch, x: torch.softmax(x, -1),
           _axis_inputs),
    OpCase("log_softmax_large_logits", log_softmax, lambda torch, x: torch.log_softmax(x, -1),
           lambda rng: ([rng.standard_normal(_dims(rng, 1, 7, 2)) * 3 + 800.0], {}),
           fd_eps=1e-5, fd_rtol=1e-4, fd_atol=1e-6, torch_atol=1e-3),
]


# -- fused in dense -----------------------------------------------------------------
def _dense_inputs(bias):
    def make(rng):
        n, k, m = _dims(rng)
        arrays = [rng.standard_normal((n, k)), rng.standard_normal((k, m))]
        if bias:
            arrays.append(rng.standard_normal(m))
        return arrays, {}
    return make


def _torch_dense(name):
    act = _torch_act(name)

    def f(torch, x, W, b=None):
        return act(torch, x @ W if b is None else x @ W + b)
    return f


def _dense_rows(name):
    return [
        OpCase(f"dense_{name}", lambda x, W, b: dense(x, W, b, name), _torch_dense(name), _dense_inputs(True),
               torch_atol=3e-5),
        OpCase(f"dense_{name}_nobias", lambda x, W: dense(x, W, None, name), _torch_dense(name),
               _dense_inputs(False), torch_atol=3e-5),
    ]


_FUSED = ["leaky_relu", "elu", "selu", "gelu", "silu", "sigmoid", "tanh", "softplus", "softsign", "hardtanh"]
DENSE_ROWS = [row for name in _FUSED for row in _dense_rows(name)] + [
    OpCase("dense_gelu_input_layer", lambda x, W, b: dense(x, W, b, "gelu"), _torch_dense("gelu"),
           _dense_inputs(True), requires_grad=(False, True, True), torch_atol=3e-5),
    OpCase("dense_swish", lambda x, W, b: dense(x, W, b, "swish"), _torch_dense("swish"), _dense_inputs(True),
           torch_atol=3e-5),
]


# -- losses -------------------------------------------------------------------------
def _loss_inputs(scale=2.0, offset=0.0):
    def make(rng):
        n, c, _ = _dims(rng, 2, 12)
        return [rng.standard_normal((n, c)) * scale + offset], {"labels": rng.integers(0, c, n).astype(np.int64)}
    return make


def _onehot(torch, out, labels):
    return torch.nn.functional.one_hot(labels, out.shape[1]).to(out.dtype)


def _xent(eps):
    return OpCase(
        f"softmax_cross_entropy_smoothing_{eps}",
        lambda z, labels: softmax_cross_entropy(z, labels, label_smoothing=eps)[0],
        lambda torch, z, labels: torch.nn.functional.cross_entropy(z, labels, reduction="sum", label_smoothing=eps),
        _loss_inputs(3.0),
    )


def _torch_mse(torch, out, labels):
    return torch.nn.functional.mse_loss(out, _onehot(torch, out, labels), reduction="sum")


def _torch_bce(torch, out, labels):
    return torch.nn.functional.binary_cross_entropy_with_logits(out, _onehot(torch, out, labels), reduction="sum")


def _torch_huber(delta):
    def f(torch, out, labels):
        return torch.nn.functional.huber_loss(out, _onehot(torch, out, labels), reduction="sum", delta=delta)
    return f


LOSS_ROWS = [
    _xent(0.1),
    _xent(0.5),
    OpCase("softmax_cross_entropy_smoothing_large_logits",
           lambda z, labels: softmax_cross_entropy(z, labels, label_smoothing=0.2)[0],
           lambda torch, z, labels: torch.nn.functional.cross_entropy(z, labels, reduction="sum",
                                                                       label_smoothing=0.2),
           _loss_inputs(3.0, 500.0), fd_eps=1e-5, fd_rtol=1e-4, fd_atol=1e-6, torch_atol=1e-3, torch_rtol=1e-3),
    OpCase("mse", lambda z, labels: mse_loss(z, labels)[0], _torch_mse, _loss_inputs()),
    OpCase("bce_with_logits", lambda z, labels: bce_with_logits(z, labels)[0], _torch_bce, _loss_inputs()),
    OpCase("bce_with_logits_extreme_logits", lambda z, labels: bce_with_logits(z, labels)[0], _torch_bce,
           _loss_inputs(40.0), fd_eps=1e-5, fd_atol=1e-6, torch_atol=1e-3),
    OpCase("huber", lambda z, labels: huber_loss(z, labels)[0], _torch_huber(1.0), _loss_inputs()),
    OpCase("huber_delta_0.3", lambda z, labels: huber_loss(z, labels, delta=0.3)[0], _torch_huber(0.3),
           _loss_inputs()),
    OpCase("huber_delta_5", lambda z, labels: huber_loss(z, labels, delta=5.0)[0], _torch_huber(5.0),
           _loss_inputs(4.0)),
]

#: one row per op variant
OP_CASES: list = ACT_ROWS + SOFTMAX_ROWS + DENSE_ROWS + LOSS_ROWS
#: gradient-rule names (keys of GRADIENTS) these rows cover
RULES: set = {
    "leaky_relu", "elu", "selu", "gelu", "silu", "sigmoid", "tanh", "softplus", "softsign", "hardtanh",
    "softmax", "log_softmax", "dense", "softmax_cross_entropy", "mse", "bce_with_logits", "huber",
}
