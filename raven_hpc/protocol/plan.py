"""The data schedule: which snippets make each step, and how a step is cut
into tasks.  Pure and deterministic: (seed, epoch) fixes the order, so a
resumed run -- on any number of ranks -- sees the same global batches, and a
single-process reference can replay them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EpochPlan", "make_plan", "eval_tasks"]


@dataclass(frozen=True)
class EpochPlan:
    epoch: int
    order: np.ndarray          # snippet ids (indices into the snippet table) in epoch order
    snippets_per_step: int
    task_snippets: int

    @property
    def num_steps(self) -> int:
        return -(-len(self.order) // self.snippets_per_step)

    def step_snippets(self, i: int) -> np.ndarray:
        s = self.snippets_per_step
        return self.order[i * s:(i + 1) * s]

    def step_tasks(self, i: int) -> list[tuple[int, ...]]:
        ids = self.step_snippets(i)
        k = self.task_snippets
        return [tuple(int(v) for v in ids[j:j + k]) for j in range(0, len(ids), k)]


def snippets_per_step(batch_size: int, snippet_size: int) -> int:
    """Whole snippets per step: batch_size rounded to the nearest multiple."""
    return max(1, int(round(batch_size / max(1, snippet_size))))


def make_plan(num_snippets: int, epoch: int, *, seed: int, batch_size: int, snippet_size: int,
              task_snippets: int) -> EpochPlan:
    rng = np.random.default_rng([int(seed), int(epoch)])
    order = rng.permutation(int(num_snippets)).astype(np.int64)
    sps = snippets_per_step(batch_size, snippet_size)
    return EpochPlan(epoch, order, sps, max(1, min(task_snippets, sps)))


def eval_tasks(num_snippets: int, task_snippets: int) -> list[tuple[int, ...]]:
    ids = range(int(num_snippets))
    return [tuple(ids[j:j + task_snippets]) for j in range(0, len(ids), task_snippets)]
