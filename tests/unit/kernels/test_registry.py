"""The kernel registry and the package: ops registered per backend, cached
compilation, no MPI import.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from raven_hpc.kernels import available_backends, get_kernel, kernel_ops



def test_registry_cpu():
    assert available_backends()[0] == "cpu"
    ops = kernel_ops("cpu")
    for op in ("bias_act_forward", "bias_act_backward", "softmax_xent", "sgd_step", "col_sum"):
        assert op in ops
        assert callable(get_kernel(op))
        assert get_kernel(op, "cpu") is get_kernel(op)
    with pytest.raises(KeyError, match="no kernel 'nope'"):
        get_kernel("nope")


def test_registry_kernels_cached_without_fastmath():
    for op in kernel_ops("cpu"):
        k = get_kernel(op)
        assert type(k._cache).__name__ != "NullCache", f"{op} is not @njit(cache=True)"
        assert not k.targetoptions.get("fastmath", False), f"{op} uses fastmath"


def test_engine_and_kernels_never_import_mpi():
    code = ("import sys; import raven_hpc.engine, raven_hpc.kernels, raven_hpc.kernels.cuda; "
            "assert 'mpi4py' not in sys.modules, 'mpi4py imported'; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
