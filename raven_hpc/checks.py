"""Start-up checks of a resolved configuration that need the engine, the
data plan and the fault rules: the model and the optimizer in depth, the
fault rules, and whether every task a worker can be given is large enough
for the model.  Rank 0 runs them before any worker computes
(:func:`raven_hpc.train.setup_run`); :mod:`raven_hpc.config` itself stays
free of numpy, the engine and MPI."""
from __future__ import annotations

from .config import model_spec
from .errors import ConfigError

__all__ = ["validate", "check_task_batches"]


def validate(cfg: dict, input_shape: tuple, num_classes: int, snippet_counts=None,
             snippet_size: int | None = None) -> None:
    """Deep checks that need the engine: the model and the optimizer; with the
    training split's snippet sizes (``snippet_counts``, the snippet table's
    ``count`` column, and the file's ``snippet_size``), also that every task
    a worker can be given is large enough for the model (:func:`check_task_batches`)."""
    from .engine import validate_model_spec, validate_optimizer_config

    validate_model_spec(model_spec(cfg), tuple(input_shape), int(num_classes))
    validate_optimizer_config(dict(cfg["optimizer"]))
    from .protocol.faults import validate_faults

    validate_faults(cfg["faults"]["rules"])
    if snippet_counts is not None:
        check_task_batches(cfg, input_shape, num_classes, snippet_counts, snippet_size)


def check_task_batches(cfg: dict, input_shape: tuple, num_classes: int, snippet_counts,
                       snippet_size: int | None) -> None:
    """Raise ConfigError when some training task can be too small for the model.

    A task is ``train.task_snippets`` consecutive snippets of a step's share
    of the epoch's order (see :mod:`raven_hpc.protocol.plan`); the last task
    of a step, and the epoch's last step, can hold fewer, and the order is
    random, so any snippets can meet there.  The smallest batch a worker can
    get is therefore the sum of the smallest snippets, as many as the
    smallest task holds.  Models with batch norm need at least 2 values per
    channel in a training pass (:func:`raven_hpc.engine.min_train_batch`);
    their tasks are never merged into larger chunks.
    """
    import numpy as np

    from .engine import min_train_batch
    from .protocol.plan import snippets_per_step

    need, layer = min_train_batch(model_spec(cfg), tuple(input_shape), int(num_classes))
    counts = np.asarray(snippet_counts, dtype=np.int64).reshape(-1)
    if need <= 1 or counts.size == 0:
        return
    tr = cfg["train"]
    size = int(snippet_size or counts.max())
    n = counts.size
    sps = snippets_per_step(tr["batch_size"], size)
    k = max(1, min(tr["task_snippets"], sps))
    steps = ([sps] if n >= sps else []) + ([n % sps] if n % sps else [])
    tasks = {t for s in steps for t in ([k] if s >= k else []) + ([s % k] if s % k else [])}
    m = min(tasks)
    ids = np.argsort(counts, kind="stable")[:m]
    got = int(counts[ids].sum())
    if got >= need:
        return
    if m == k:
        why = f"tasks are {k} snippet(s) (train.task_snippets = {tr['task_snippets']})"
    else:
        why = (f"a step's last task can be {m} snippet(s) (steps of {sps} snippets, from train.batch_size = "
               f"{tr['batch_size']} and snippet size {size}, cut into tasks of {k}"
               + (f"; the epoch's last step has {n % sps}" if n % sps else "") + ")")
    short = [int(i) for i in ids if counts[i] < size]
    which = ", ".join(f"snippet {int(i)} ({int(counts[i])} sample{'s' if counts[i] != 1 else ''})" for i in ids)
    if short:
        fix = (f"prepare the data again with a --snippet-size that divides the {int(counts.sum())} training "
               "samples (or --limit them to a multiple of it), so no snippet is short, or make every task hold "
               f"at least {need} samples (train.task_snippets >= 2, with the {sps} snippets per step a multiple "
               "of it)")
    else:
        fix = (f"make every task hold at least {need} samples: raise train.task_snippets (with the {sps} "
               "snippets per step a multiple of it) or prepare the data with a larger --snippet-size")
    raise ConfigError(
        f"{layer} needs at least {need} samples per task in training (batch statistics need 2 values per "
        f"channel), but a worker can be given a task of {got} sample{'s' if got != 1 else ''}: {why}, and split "
        f"{cfg['data']['train_split']!r} of {cfg['data']['path']} has {which}; fix: {fix}"
    )
