"""Engine throughput: ``Model.loss_and_grad`` vs PyTorch CPU, one thread.

Forward + backward of an MLP (default 784-512-256-10, batch 128) on random
MNIST-shaped data, no optimizer step, as a worker runs it: raven-hpc with
``loss_and_grad(x, y, accumulate=False)`` (gradients overwrite ``grads``),
torch with ``zero_grad(set_to_none=True)`` + backward.  The ratio is for
that pair; ``zero_grad()`` + accumulating ``loss_and_grad`` is shown too.  Rounds alternate between the two so background load hits both;
the best round of each is reported (and the median).

    python bench/bench_engine.py [--batch 128] [--hidden 512,256] [--iters 200] [--rounds 5]
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from raven_hpc.engine import build_model  # noqa: E402


def _rate(fn, iters: int, batch: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return batch * iters / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--hidden", default="512,256", help="comma-separated hidden widths")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--iters", type=int, default=200, help="iterations per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    args = ap.parse_args(argv)

    hidden = [int(h) for h in args.hidden.split(",") if h]
    spec = {"layers": [{"type": "dense", "units": h, "activation": "relu"} for h in hidden]
            + [{"type": "dense", "units": args.classes}], "seed": 0}
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, 28, 28), dtype=np.float32)
    y = rng.integers(0, args.classes, args.batch).astype(np.int64)

    model = build_model(spec, (28, 28), args.classes)

    def raven_step():  # what a worker does per task
        model.loss_and_grad(x, y, accumulate=False)

    def raven_step_acc():  # zero_grad() + accumulating loss_and_grad
        model.zero_grad()
        model.loss_and_grad(x, y)

    torch_step = None
    try:
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(1)
        dims = [784] + hidden + [args.classes]
        mods = []
        for i in range(len(dims) - 1):
            mods.append(torch.nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                mods.append(torch.nn.ReLU())
        net = torch.nn.Sequential(torch.nn.Flatten(), *mods)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def torch_step():
            net.zero_grad(set_to_none=True)
            F.cross_entropy(net(tx), ty, reduction="sum").backward()
    except ImportError:
        torch = None

    for _ in range(20):  # warm-up (Numba compile / cache load, BLAS init)
        raven_step()
        raven_step_acc()
        if torch_step:
            torch_step()

    ours, ours_acc, theirs = [], [], []
    for _ in range(args.rounds):
        ours.append(_rate(raven_step, args.iters, args.batch))
        ours_acc.append(_rate(raven_step_acc, args.iters, args.batch))
        if torch_step:
            theirs.append(_rate(torch_step, args.iters, args.batch))

    res = {
        "model": "-".join(str(d) for d in [784] + hidden + [args.classes]),
        "batch": args.batch,
        "raven_samples_per_s": max(ours),
        "raven_median": statistics.median(ours),
        "raven_zero_grad_accumulate_samples_per_s": max(ours_acc),
    }
    if theirs:
        res.update(torch_samples_per_s=max(theirs), torch_median=statistics.median(theirs),
                   ratio=max(ours) / max(theirs), ratio_median=statistics.median(ours) / statistics.median(theirs),
                   torch_version=torch.__version__)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"MLP {res['model']}, batch {args.batch}, 1 thread, forward+backward (loss_and_grad)")
        print(f"  raven-hpc : {res['raven_samples_per_s']:9.0f} samples/s (median {res['raven_median']:.0f})"
              "  loss_and_grad(accumulate=False)")
        print(f"  raven-hpc : {max(ours_acc):9.0f} samples/s (median {statistics.median(ours_acc):.0f})"
              "  zero_grad() + loss_and_grad()")
        if theirs:
            print(f"  torch {torch.__version__}: {res['torch_samples_per_s']:9.0f} samples/s "
                  f"(median {res['torch_median']:.0f})")
            print(f"  ratio     : {res['ratio']:.2f}x (median {res['ratio_median']:.2f}x)")
        else:
            print("  torch not installed: no comparison")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
