"""The master's step arithmetic without MPI: the float64 sum and its
first-result fast path, taking a disputed result out again, the norm screen
and the loss watch."""
from __future__ import annotations

import numpy as np
import pytest

from raven_hpc.errors import ProtocolError
from raven_hpc.protocol import step as step_mod
from raven_hpc.protocol.messages import ResultBuffer
from raven_hpc.protocol.step import LossWatch, NormScreen, StepSum


def result(grad, loss=1.0, correct=2.0, samples=32, compute_s=0.01, wait=0.001) -> ResultBuffer:
    b = ResultBuffer(len(grad))
    b.grad[:] = grad
    b.set(loss_sum=loss, correct=correct, samples=samples, compute_s=compute_s, recv_wait_s=wait)
    return b


def test_one_result_settles_the_step_without_a_copy():
    s = StepSum(3)
    b = result([1.0, 2.0, 3.0])
    s.add(b, grad=True, more_coming=False)
    assert s.gradient() is b.grad and b in s.held()
    s.release()
    assert b not in s.held()


def test_results_are_summed_in_float64_and_totals_kept():
    s = StepSum(2)
    a, b = result([1e8, 1.0]), result([1.0, 2.0], loss=3.0, samples=16)
    s.add(a, grad=True, more_coming=True)
    s.add(b, grad=True, more_coming=False)
    g = s.gradient()
    assert g.dtype == np.float64 and g.tolist() == [1e8 + 1.0, 3.0]
    assert s.totals["loss_sum"] == 4.0 and s.totals["samples"] == 48 and s.totals["idle_s"] == pytest.approx(0.002)
    s.reset()
    assert s.gradient().tolist() == [0.0, 0.0] and s.totals["samples"] == 0


def test_a_disputed_result_is_swapped_for_the_right_one():
    s = StepSum(2)
    wrong, other, right = result([-1.0, -1.0], loss=5.0), result([1.0, 1.0]), result([1.0, 1.0], loss=1.0)
    s.add(wrong, grad=True, more_coming=True)
    assert s.keep_for_dispute(7, wrong) and s.undo[7] is wrong
    s.add(other, grad=True, more_coming=False)
    s.swap(s.undo.pop(7), right)
    assert s.gradient().tolist() == [2.0, 2.0] and s.totals["loss_sum"] == 2.0


def test_swap_on_an_empty_sum_is_an_internal_error():
    with pytest.raises(ProtocolError):
        StepSum(1).swap(result([1.0]), result([1.0]))


def test_kept_results_are_bounded(monkeypatch):
    s = StepSum(4)
    b = result([0.0] * 4)
    monkeypatch.setattr(step_mod, "UNDO_BYTES", b.raw.nbytes)
    assert s.keep_for_dispute(1, b)
    assert not s.keep_for_dispute(2, result([0.0] * 4))
    assert list(s.undo) == [1]


def test_eval_results_count_but_add_no_gradient():
    s = StepSum(2)
    s.add(result([9.0, 9.0], correct=5.0), grad=False, more_coming=False)
    assert s.gradient().tolist() == [0.0, 0.0] and s.totals["correct"] == 5.0


def test_norm_screen_flags_outliers_and_learns_from_the_rest():
    sc = NormScreen(100.0)
    assert not sc.suspicious(32.0 ** 2, 32)          # |g| per sample = 1: the first sets the reference
    assert not sc.suspicious((32.0 * 50) ** 2, 32)   # 50x: within the factor
    assert sc.suspicious((32.0 * 1e4) ** 2, 32)      # 10,000x: held for verification
    assert not NormScreen(0.0).suspicious(1e30, 1)   # off


def test_loss_watch():
    w = LossWatch()
    assert not w.exploded(2.3, audited=False)
    for loss in (1.5, 1.0, 0.8, 0.6):
        assert not w.exploded(loss, audited=False)
    assert w.exploded(50.0, audited=False)           # > 10x the lowest smoothed loss
    assert not w.exploded(50.0, audited=True)        # audited: a real jump, the new reference
    assert not w.exploded(60.0, audited=False)
    assert w.exploded(float("nan"), audited=True)    # non-finite is never fine
    w.reset()
    assert not w.exploded(500.0, audited=False)      # a fresh reference after a rollback
