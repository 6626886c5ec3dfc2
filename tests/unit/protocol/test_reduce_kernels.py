"""The master's reduction kernels and gradient fingerprints
(raven_hpc.kernels.reduce)."""
from __future__ import annotations

import numpy as np
import pytest

from raven_hpc.kernels.reduce import accumulate, all_finite


def test_reduction_kernels():
    x = np.linspace(-1, 1, 1001).astype(np.float32)
    assert all_finite(x)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[500] = bad
        assert not all_finite(y)
    acc = np.zeros(1001)
    accumulate(acc, x)
    accumulate(acc, x)
    assert np.array_equal((acc / 2).astype(np.float32), x)



# -- gradient fingerprints (the master compares copies with them) -------------------

def _fingerprint_reference(x, seed):
    """The fingerprint in plain numpy, strict float64 order: the definition."""
    n = x.shape[0]
    blk = np.arange((n + 15) // 16, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + blk * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(29)
    i = np.arange(n)
    hb = h[i // 16] >> (np.uint64(4) * (i % 16).astype(np.uint64))
    xs = x.astype(np.float64)
    proj = [float(np.sum(xs * (2.0 * ((hb >> np.uint64(k)) & np.uint64(1)).astype(np.float64) - 1.0)))
            for k in range(4)]
    return np.array(proj + [float(np.sum(xs * xs))])


@pytest.mark.parametrize("n", [1, 15, 16, 17, 1000, 100_003])
def test_fingerprint_matches_its_definition(n):
    from raven_hpc.kernels.reduce import FP_SIZE, fingerprint

    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    out = np.zeros(FP_SIZE)
    assert fingerprint(x, 12345, out)
    ref = _fingerprint_reference(x, 12345)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-9 * np.sqrt(ref[-1]) * np.sqrt(n))


def test_fingerprint_flags_non_finite_and_separates_wrong_copies():
    from raven_hpc.kernels.reduce import FP_SIZE, fingerprint
    from raven_hpc.protocol.scheduler import agree

    rng = np.random.default_rng(0)
    g = rng.standard_normal(50_000).astype(np.float32)
    fp = lambda x: (*(lambda o: (fingerprint(x, 7, o), o)[1])(np.zeros(FP_SIZE)), 1.0, 1.0)   # noqa: E731
    for bad in (np.nan, np.inf, -np.inf):
        y = g.copy()
        y[31_337] = bad
        assert not fingerprint(y, 7, np.zeros(FP_SIZE))
    # an honest copy: the same sum in another order (float32 round-off)
    honest = (g.astype(np.float64) * 3 - g.astype(np.float64) * 2).astype(np.float32)
    assert agree(fp(g), fp(honest), 1e-3)[0]
    flipped = g.copy()
    flipped.view(np.uint32)[123] ^= np.uint32(1 << 30)
    assert not agree(fp(g), fp(flipped), 1e-3)[0]
    assert not agree(fp(g), fp(g * np.float32(1.01)), 1e-3)[0]
