"""The message buffers (raven_hpc.protocol.messages)."""
from __future__ import annotations

import numpy as np
import pytest

from raven_hpc.protocol.messages import ParamsBuffer, ResultBuffer


def test_params_and_result_buffers_pack_in_one_contiguous_array():
    pb = ParamsBuffer(5)
    pb.pack(42, np.arange(5, dtype=np.float32))
    assert pb.version == 42 and pb.raw.nbytes == ParamsBuffer.nbytes_for(5)
    assert np.array_equal(pb.params, np.arange(5))
    rb = ResultBuffer(3)
    rb.set(step=7, task=9, loss_sum=1.5, samples=32)
    rb.grad[:] = [1, 2, 3]
    same = ResultBuffer.for_nbytes(rb.raw.nbytes)
    same.raw[:] = rb.raw
    assert same.get("task") == 9 and same.get("loss_sum") == 1.5 and same.grad.tolist() == [1, 2, 3]
    assert ResultBuffer.for_nbytes(ResultBuffer.nbytes_for(0)).grad.size == 0
    with pytest.raises(ValueError):
        ResultBuffer.for_nbytes(ResultBuffer.nbytes_for(3) + 1)
