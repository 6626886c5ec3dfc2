"""OpCase rows for the conv op family (see _gradcheck.py); gathered by test_ops.py.

Convolution with and without bias, strides 1/2 (also per axis), padding
0/1/per-axis/"same"/"valid", fused activations, an input layer (no dx), a
batch that spans several blocks; max and average pooling with various
windows, strides and paddings, overlapping windows included.
"""
from __future__ import annotations

import warnings

from raven_hpc.engine.conv import avg_pool2d, conv2d, conv_geometry, max_pool2d

from .._gradcheck import OpCase


def _conv_inputs(k=(3, 3), bias=True, n=(1, 4), hw=(5, 9), c=(1, 3)):
    """x (n, C, H, W), W (F, C, kh, kw) [, b (F,)] with random sizes."""
    def make(rng):
        N = int(rng.integers(n[0], n[1] + 1))
        C = int(rng.integers(c[0], c[1] + 1))
        F = int(rng.integers(1, 5))
        H, W = (int(v) for v in rng.integers(hw[0], hw[1] + 1, size=2))
        arrays = [rng.standard_normal((N, C, H, W)), rng.standard_normal((F, C) + tuple(k))]
        if bias:
            arrays.append(rng.standard_normal(F))
        return arrays, {}
    return make


def _conv(stride=1, padding=0, act=None):
    def f(x, W, b=None):
        return conv2d(x, W, b, stride, padding, act)
    return f


def _torch_conv(stride=1, padding=0, act=None):
    """torch reference; ``"same"`` for stride > 1 (TensorFlow's rule) via an explicit pad."""
    def f(torch, x, W, b=None):
        F = torch.nn.functional
        if padding == "same" and stride != 1:
            _, (t, bo, l, r) = conv_geometry(x.shape[2:], W.shape[2:], stride, padding)
            z = F.conv2d(F.pad(x, (l, r, t, bo)), W, b, stride)
        else:
            with warnings.catch_warnings():  # "same" with an even kernel pads a copy (we know)
                warnings.simplefilter("ignore", UserWarning)
                z = F.conv2d(x, W, b, stride, padding)
        return torch.relu(z) if act == "relu" else z
    return f


def _row(name, stride=1, padding=0, act=None, requires_grad=(), **inputs):
    # float32 sums over C*kh*kw (forward) and n*OH*OW (dW) terms in another
    # order than torch: absolute differences of a few 1e-6 near zero
    return OpCase(name, _conv(stride, padding, act), _torch_conv(stride, padding, act), _conv_inputs(**inputs),
                  requires_grad=requires_grad, torch_atol=1e-4)


def _pool_inputs(n=(1, 3), hw=(6, 10)):
    def make(rng):
        N = int(rng.integers(n[0], n[1] + 1))
        C = int(rng.integers(1, 4))
        H, W = (int(v) for v in rng.integers(hw[0], hw[1] + 1, size=2))
        return [rng.standard_normal((N, C, H, W))], {}
    return make


def _pool(engine_fn, torch_name, pool, stride=None, padding=0):
    def f(x):
        return engine_fn(x, pool, stride, padding)

    def t(torch, x):
        return getattr(torch.nn.functional, torch_name)(x, pool, stride, padding)

    return f, t


OP_CASES = [
    _row("conv2d_linear"),
    _row("conv2d_relu_pad1", padding=1, act="relu"),
    _row("conv2d_relu_nobias_stride2_pad1", stride=2, padding=1, act="relu", bias=False),
    _row("conv2d_nobias", bias=False),
    _row("conv2d_valid_5x5", padding="valid", k=(5, 5), hw=(5, 9)),
    _row("conv2d_same_odd", padding="same", act="relu"),
    _row("conv2d_same_even_kernel", padding="same", k=(2, 4)),
    _row("conv2d_same_stride2", stride=2, padding="same", k=(3, 2)),
    _row("conv2d_rect_stride_pad", stride=(2, 1), padding=(1, 0), k=(2, 3)),
    _row("conv2d_1x1", k=(1, 1), c=(2, 5)),
    _row("conv2d_relu_input_layer", padding=2, act="relu", k=(5, 5), requires_grad=(False, True, True)),
    _row("conv2d_frozen_weights", padding=1, requires_grad=(True, False, False)),
    # 40 KB (float32) / 80 KB (float64) of patches per sample: several BLOCK_BYTES blocks
    _row("conv2d_relu_many_blocks", padding=1, act="relu", k=(5, 5), n=(40, 48), hw=(12, 12), c=(4, 4)),
]

for _name, _fn, _tname in (("max_pool2d", max_pool2d, "max_pool2d"), ("avg_pool2d", avg_pool2d, "avg_pool2d")):
    for _suffix, _args in (
        ("2x2", (2,)),
        ("3x3_stride2_pad1", (3, 2, 1)),  # overlapping windows
        ("3x3_stride1_pad1", (3, 1, 1)),
        ("rect", ((2, 3), (1, 2), (1, 1))),
        ("stride_larger_than_window", (2, 3)),
    ):
        _f, _t = _pool(_fn, _tname, *_args)
        OP_CASES.append(OpCase(f"{_name}_{_suffix}", _f, _t, _pool_inputs()))

#: gradient-rule names (keys of GRADIENTS) these rows cover
RULES: set = {"conv2d", "max_pool2d", "avg_pool2d"}
