"""OpCase rows for the norm op family (see _gradcheck.py); gathered by test_ops.py.

Covers normalisation (batch norm, layer norm), dropout, embedding and the
merge ops (add_n, mul_n, concat).  Dropout's mask is random, so its rows fix
the generator seed and compare with torch's formula on the *same* mask
(``F.dropout`` draws its own); its statistics are tested in
test_norm.py.
"""
from __future__ import annotations

import numpy as np

from raven_hpc.engine import add_n, batch_norm, concat, dropout, embedding, layer_norm, mul_n

from .._gradcheck import OpCase


def _dims(rng, lo=1, hi=6, k=3):
    return [int(v) for v in rng.integers(lo, hi + 1, size=k)]


# -- dropout -------------------------------------------------------------------------------
def _dropout_inputs(rng):
    shape = tuple(_dims(rng, 2, 7))
    return [rng.standard_normal(shape)], {"seed": int(rng.integers(2**31))}


def _dropout_case(rate):
    def fn(x, seed):
        return dropout(x, rate, np.random.default_rng(seed))

    def torch_fn(torch, x, seed):
        u = np.random.default_rng(seed).random(tuple(x.shape), dtype=np.float32)
        mask = torch.from_numpy((u >= np.float32(rate)).astype(np.float32))
        return x * mask / (1.0 - rate)

    return OpCase(f"dropout_{rate}", fn, torch_fn, _dropout_inputs)


# -- batch norm ------------------------------------------------------------------------------
def _bn_inputs(spatial):
    def make(rng):
        n, c = _dims(rng, 2, 6, 2)
        shape = (n, c) + tuple(_dims(rng, 1, 4, spatial)) if spatial else (n, c)
        x = rng.standard_normal(shape) * 2.0 + rng.standard_normal((1, c) + (1,) * spatial) * 3.0
        gamma = rng.standard_normal(c) + 1.5
        beta = rng.standard_normal(c)
        rm = rng.standard_normal(c)
        rv = rng.random(c) + 0.5
        return [x, gamma, beta], {"rm": rm, "rv": rv}
    return make


def _bn_case(name, spatial, training, affine=True):
    def fn(x, gamma=None, beta=None, *, rm, rv):
        return batch_norm(x, gamma, beta, rm, rv, training=training, eps=1e-5)

    def torch_fn(torch, x, gamma=None, beta=None, *, rm, rv):
        # training: no running stats (torch would update them in place)
        r_m, r_v = (None, None) if training else (rm.to(x.dtype), rv.to(x.dtype))
        return torch.nn.functional.batch_norm(x, r_m, r_v, gamma, beta, training=training, eps=1e-5)

    make = _bn_inputs(spatial)

    def inputs(rng):
        arrays, extras = make(rng)
        return (arrays if affine else arrays[:1]), extras

    return OpCase(name, fn, torch_fn, inputs, fd_rtol=1e-4, fd_atol=1e-6, torch_rtol=1e-3, torch_atol=1e-4)


def _bn_input_layer_case():
    def fn(x, gamma, beta, *, rm, rv):
        return batch_norm(x, gamma, beta, rm, rv, training=True)

    def torch_fn(torch, x, gamma, beta, *, rm, rv):
        return torch.nn.functional.batch_norm(x, None, None, gamma, beta, training=True)

    return OpCase("batch_norm_input_layer", fn, torch_fn, _bn_inputs(2), requires_grad=(False, True, True),
                  fd_rtol=1e-4, fd_atol=1e-6, torch_rtol=1e-3, torch_atol=1e-4)


# -- layer norm --------------------------------------------------------------------------------
def _ln_inputs(ndim, affine=True):
    def make(rng):
        n = int(rng.integers(1, 6))
        sample = tuple(_dims(rng, 2, 6, ndim))
        x = rng.standard_normal((n,) + sample) * 2.0 + 1.0
        if not affine:
            return [x], {}
        return [x, rng.standard_normal(sample) + 1.0, rng.standard_normal(sample)], {}
    return make


def _ln(x, gamma=None, beta=None):
    return layer_norm(x, gamma, beta, eps=1e-5)


def _torch_ln(torch, x, gamma=None, beta=None):
    return torch.nn.functional.layer_norm(x, tuple(x.shape[1:]), gamma, beta, eps=1e-5)


# -- embedding ---------------------------------------------------------------------------------
def _emb_inputs(seq_ndim):
    def make(rng):
        V, dim = _dims(rng, 2, 9, 2)
        n = int(rng.integers(1, 5))
        seq = tuple(_dims(rng, 1, 5, seq_ndim))
        ids = rng.integers(0, V, (n,) + seq).astype(np.float64)
        ids.reshape(-1)[0] = ids.reshape(-1)[-1]  # a repeated id: the scatter must add
        return [rng.standard_normal((V, dim))], {"ids": ids}
    return make


def _emb(W, *, ids):
    return embedding(ids, W)


def _torch_emb(torch, W, *, ids):
    return torch.nn.functional.embedding(ids.long(), W)


# -- merges ---------------------------------------------------------------------------------------
def _same_shape_inputs(k):
    def make(rng):
        shape = tuple(_dims(rng, 1, 5))
        return [rng.standard_normal(shape) for _ in range(k)], {}
    return make


def _concat_inputs(k, axis):
    def make(rng):
        base = _dims(rng, 1, 5)
        arrays = []
        for _ in range(k):
            shape = list(base)
            shape[axis] = int(rng.integers(1, 5))
            arrays.append(rng.standard_normal(tuple(shape)))
        return arrays, {}
    return make


def _torch_prod(torch, *xs):
    out = xs[0]
    for x in xs[1:]:
        out = out * x
    return out


OP_CASES = [
    _dropout_case(0.3),
    _dropout_case(0.75),
    _bn_case("batch_norm_1d_train", 0, True),
    _bn_case("batch_norm_1d_eval", 0, False),
    _bn_case("batch_norm_2d_train", 2, True),
    _bn_case("batch_norm_2d_eval", 2, False),
    _bn_case("batch_norm_1d_train_no_affine", 0, True, affine=False),
    _bn_case("batch_norm_2d_train_no_affine", 2, True, affine=False),
    _bn_input_layer_case(),
    OpCase("layer_norm_1d", _ln, _torch_ln, _ln_inputs(1), fd_rtol=1e-4, fd_atol=1e-6, torch_atol=1e-4),
    OpCase("layer_norm_3d", _ln, _torch_ln, _ln_inputs(3), fd_rtol=1e-4, fd_atol=1e-6, torch_atol=1e-4),
    OpCase("layer_norm_no_affine", _ln, _torch_ln, _ln_inputs(2, affine=False), fd_rtol=1e-4, fd_atol=1e-6,
           torch_atol=1e-4),
    OpCase("embedding", _emb, _torch_emb, _emb_inputs(1)),
    OpCase("embedding_2d_ids", _emb, _torch_emb, _emb_inputs(2)),
    OpCase("add_n_2", lambda a, b: add_n([a, b]), lambda torch, a, b: a + b, _same_shape_inputs(2)),
    OpCase("add_n_3", lambda a, b, c: add_n([a, b, c]), lambda torch, a, b, c: a + b + c, _same_shape_inputs(3)),
    OpCase("add_n_one_constant", lambda a, b: add_n([a, b]), lambda torch, a, b: a + b, _same_shape_inputs(2),
           requires_grad=(True, False)),
    OpCase("mul_n_2", lambda a, b: mul_n([a, b]), _torch_prod, _same_shape_inputs(2)),
    OpCase("mul_n_3", lambda a, b, c: mul_n([a, b, c]), _torch_prod, _same_shape_inputs(3)),
    OpCase("concat_last", lambda a, b: concat([a, b], -1), lambda torch, a, b: torch.cat([a, b], -1),
           _concat_inputs(2, 2)),
    OpCase("concat_axis1_3", lambda a, b, c: concat([a, b, c], 1), lambda torch, a, b, c: torch.cat([a, b, c], 1),
           _concat_inputs(3, 1)),
]

#: gradient-rule names (keys of GRADIENTS) these rows cover
RULES = {"dropout", "batch_norm", "layer_norm", "embedding", "add_n", "mul_n", "concat"}
