"""Engine throughput and memory: ``Model.loss_and_grad`` vs PyTorch CPU, one thread.

Two models, batch 128 by default, random MNIST-shaped data, forward +
backward without an optimizer step, as a worker runs it:

* ``mlp``: 784-512-256-10 (``--hidden``), ReLU;
* ``cnn``: LeNet-5 exactly as ``data/mnist-lenet.toml`` defines it (conv 6@5x5
  pad 2, max 2, conv 16@5x5, max 2, 120, 84, 10).

raven-hpc runs ``loss_and_grad(x, y, accumulate=False)`` (gradients
overwrite ``grads``); torch ``zero_grad(set_to_none=True)`` + backward.  For
the MLP, ``zero_grad()`` + accumulating ``loss_and_grad`` is shown too.  Every
thread count is 1 (``torch.set_num_threads(1)``, ``NUMBA_NUM_THREADS``,
``OMP``/``MKL``/``OPENBLAS_NUM_THREADS``).  Rounds alternate between the
frameworks so background load hits both; the best round of each is reported
(and the median).

For the MLP the achieved GFLOP/s of ``loss_and_grad`` (its GEMM FLOPs: forward,
dW, and dx for every layer but the first) is compared, in the same run and
interleaved with its rounds, with numpy's float32 GEMM on one thread: the
same GEMMs (shapes and transposes) timed alone, and a 1024^3 GEMM (the BLAS
peak).

Memory (on by default; ``--no-memory``): each framework and model runs in
its own subprocess -- a worker-like process that builds the model and runs
20 training steps.  The peak resident set size is the kernel's high-water
mark ``VmHWM`` (``/proc/self/status``); ``resource.getrusage``'s
``ru_maxrss`` cannot be used in a child process, as Linux carries the
parent's peak over fork + exec.  Baselines are the resident set at that
moment (``/proc/self/statm``).  Three figures:

* peak minus the resident set after imports *and runtime initialisation*
  (the headline: what the model and its training cost).  numba initialises
  its JIT at the first call of any compiled function, even one loaded from
  the on-disk cache (about 40 MiB, the same for every model); torch does
  its initialisation at import.  So raven-hpc's baseline is taken after one
  call of a trivial kernel, torch's right after ``import torch``;
* peak minus the resident set right after the imports (numba's JIT start-up
  then counts against raven-hpc);
* the peak resident set of the whole process.

The speed runs before warm numba's on-disk cache, so nothing is compiled
during a memory run.

    python bench/bench_engine.py [--model mlp|cnn|both] [--batch 128] [--hidden 512,256]
                                 [--iters 100] [--rounds 5] [--no-memory] [--json]

Results also go to ``bench/results/engine_<model>.json``.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

try:
    import tomllib  # noqa: E402
except ModuleNotFoundError:  # pragma: no cover - Python < 3.11
    import tomli as tomllib  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LENET_CONFIG = REPO / "data" / "mnist-lenet.toml"
RESULTS = REPO / "bench" / "results"
#: training steps of a memory measurement
MEMORY_STEPS = 20


# -- models ---------------------------------------------------------------------------
def _mlp_spec(hidden, classes):
    return {"layers": [{"type": "dense", "units": h, "activation": "relu"} for h in hidden]
            + [{"type": "dense", "units": classes}], "seed": 0}


def _lenet_spec():
    with open(LENET_CONFIG, "rb") as f:
        return tomllib.load(f)["model"]


def _torch_mlp(torch, hidden, classes):
    dims = [784] + list(hidden) + [classes]
    mods = []
    for i in range(len(dims) - 1):
        mods.append(torch.nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            mods.append(torch.nn.ReLU())
    return torch.nn.Sequential(torch.nn.Flatten(), *mods)


def _torch_lenet(torch):
    nn = torch.nn
    return nn.Sequential(nn.Unflatten(1, (1, 28)), nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def _build(kind, args, frameworks=("raven", "torch")):
    """(raven model or None, torch net or None, x, y) for model ``kind``.

    Only the frameworks named are imported (a memory run must not load the other).
    """
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, 28, 28), dtype=np.float32)
    y = rng.integers(0, args.classes, args.batch).astype(np.int64)
    model = None
    if "raven" in frameworks:
        from raven_hpc.engine import build_model

        if kind == "mlp":
            model = build_model(_mlp_spec(args.hidden_list, args.classes), (28, 28), args.classes)
        else:
            model = build_model(_lenet_spec(), (28, 28), 10)
    if "torch" not in frameworks:
        return model, None, x, y
    try:
        import torch
    except ImportError:
        return model, None, x, y
    torch.set_num_threads(1)
    net = _torch_mlp(torch, args.hidden_list, args.classes) if kind == "mlp" else _torch_lenet(torch)
    n_torch = sum(p.numel() for p in net.parameters())
    if model is not None and n_torch != model.num_params:  # the two must be the same model
        raise SystemExit(f"{kind}: torch reference has {n_torch} parameters, raven-hpc {model.num_params}")
    return model, net, x, y


def _torch_step(net, x, y):
    import torch
    import torch.nn.functional as F

    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(tx), ty, reduction="sum").backward()

    return step


# -- speed ----------------------------------------------------------------------------
def _rate(fn, iters: int, batch: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return batch * iters / (time.perf_counter() - t0)


def bench_speed(kind, args) -> dict:
    model, net, x, y = _build(kind, args)

    def raven_step():  # what a worker does per task
        model.loss_and_grad(x, y, accumulate=False)

    def raven_step_acc():  # zero_grad() + accumulating loss_and_grad
        model.zero_grad()
        model.loss_and_grad(x, y)

    steps = {"raven": raven_step}
    if net is not None:
        steps["torch"] = _torch_step(net, x, y)
    if kind == "mlp":
        steps["raven_acc"] = raven_step_acc
        gemms, gemm_flops = _mlp_gemms(args)
        steps["gemm"] = lambda: _run_gemms(gemms)  # the model's GEMMs alone, one "step" of them
        A, B = (np.random.default_rng(2).standard_normal((1024, 1024)).astype(np.float32) for _ in range(2))
        peak = [(A, B, np.empty((1024, 1024), np.float32))]
    for _ in range(20):  # warm-up (Numba compile / cache load, BLAS and oneDNN init)
        for fn in steps.values():
            fn()
    rates = {k: [] for k in steps}
    peak_s = []
    for _ in range(args.rounds):  # interleaved, so load changes hit every contender alike
        for k, fn in steps.items():
            rates[k].append(_rate(fn, args.iters, args.batch))
        if kind == "mlp":
            t0 = time.perf_counter()
            for _ in range(3):
                _run_gemms(peak)
            peak_s.append((time.perf_counter() - t0) / 3)

    res = {"model": _model_name(kind, args), "batch": args.batch, "params": model.num_params,
           "raven_samples_per_s": max(rates["raven"]), "raven_median": statistics.median(rates["raven"])}
    if "torch" in rates:
        import torch

        t = rates["torch"]
        res.update(torch_samples_per_s=max(t), torch_median=statistics.median(t),
                   ratio=max(rates["raven"]) / max(t),
                   ratio_median=statistics.median(rates["raven"]) / statistics.median(t),
                   torch_version=torch.__version__)
    if kind == "mlp":
        res["raven_zero_grad_accumulate_samples_per_s"] = max(rates["raven_acc"])
        per_step = lambda rate: args.batch / rate  # noqa: E731  (seconds per step)
        achieved = gemm_flops / per_step(max(rates["raven"])) / 1e9
        same = gemm_flops / per_step(max(rates["gemm"])) / 1e9
        peak_gflops = 2.0 * 1024**3 / min(peak_s) / 1e9
        res.update(gflop_per_step=gemm_flops / 1e9, raven_gflops=achieved, numpy_gemm_same_shapes_gflops=same,
                   numpy_gemm_1024_gflops=peak_gflops, gemm_fraction_same_shapes=achieved / same,
                   gemm_fraction_1024=achieved / peak_gflops)
    return res


def _model_name(kind, args) -> str:
    if kind == "mlp":
        return "MLP " + "-".join(str(d) for d in [784] + args.hidden_list + [args.classes])
    return "LeNet-5 (data/mnist-lenet.toml)"


def _run_gemms(gemms) -> None:
    for a, b, out in gemms:
        np.matmul(a, b, out=out)


def _mlp_gemms(args):
    """The MLP's loss_and_grad GEMMs (shapes and transposes) and their FLOPs.

    Per layer ``k -> m`` on ``n`` samples: forward ``x @ W``, ``dW = x.T @ gz``
    and, for every layer but the first, ``dx = gz @ W.T``.
    """
    n = args.batch
    dims = [784] + args.hidden_list + [args.classes]
    rng = np.random.default_rng(1)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    gemms, flops = [], 0.0
    for i, (k, m) in enumerate(zip(dims[:-1], dims[1:])):
        x, W, gz = f32(n, k), f32(k, m), f32(n, m)
        gemms.append((x, W, np.empty((n, m), np.float32)))
        gemms.append((x.T, gz, np.empty((k, m), np.float32)))
        flops += 4.0 * n * k * m
        if i > 0:
            gemms.append((gz, W.T, np.empty((n, k), np.float32)))
            flops += 2.0 * n * k * m
    return gemms, flops


# -- memory ---------------------------------------------------------------------------
def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    """This process's peak resident set size (``VmHWM``).

    Not ``getrusage().ru_maxrss``: Linux carries the parent's peak over
    fork + exec into it, so in a child of a big process it reports the parent's.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover - not Linux


def _init_runtime(framework: str) -> None:
    """What every process of the framework pays once, whatever the model.

    numba initialises its JIT (LLVM) at the first call of any compiled
    function, even one loaded from the on-disk cache (~40 MiB here); torch
    does its initialisation at import.
    """
    if framework == "raven":
        from raven_hpc.kernels import get_kernel

        g = np.zeros((1, 1), np.float32)
        get_kernel("col_sum")(g, np.zeros(1, np.float32))


def memory_child(framework: str, kind: str, args) -> dict:
    """Run in a fresh process: RSS after imports, after runtime init, peak over MEMORY_STEPS steps."""
    importlib.import_module("torch" if framework == "torch" else "raven_hpc.engine")
    imports = _rss_mib()
    _init_runtime(framework)
    runtime = _rss_mib()
    model, net, x, y = _build(kind, args, frameworks=(framework,))
    if framework == "torch":
        step = _torch_step(net, x, y)
    else:
        def step():
            model.loss_and_grad(x, y, accumulate=False)
    for _ in range(MEMORY_STEPS):
        step()
    peak = _peak_rss_mib()
    return {"framework": framework, "model": kind, "rss_after_imports_mib": imports,
            "rss_after_runtime_init_mib": runtime, "peak_rss_mib": peak,
            "peak_minus_imports_mib": peak - imports, "peak_minus_runtime_mib": peak - runtime}


def bench_memory(kind, args) -> dict:
    out = {}
    for fw in ("raven", "torch"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", fw, "--model", kind,
               "--batch", str(args.batch), "--hidden", args.hidden, "--classes", str(args.classes)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        if res.returncode != 0:
            if fw == "torch" and "No module named 'torch'" in res.stderr:
                continue
            raise SystemExit(f"memory run {fw}/{kind} failed:\n{res.stderr}")
        out[fw] = json.loads(res.stdout.strip().splitlines()[-1])
    if "torch" in out:
        r, t = out["raven"], out["torch"]
        out["ratio"] = r["peak_minus_runtime_mib"] / t["peak_minus_runtime_mib"]
        out["ratio_minus_imports"] = r["peak_minus_imports_mib"] / t["peak_minus_imports_mib"]
        out["ratio_absolute"] = r["peak_rss_mib"] / t["peak_rss_mib"]
    return out


# -- report -----------------------------------------------------------------------------
def _print(kind, res, mem) -> None:
    print(f"{res['model']}, batch {res['batch']}, {res['params']:,} parameters, 1 thread, "
          "forward+backward (loss_and_grad)")
    print(f"  raven-hpc : {res['raven_samples_per_s']:9.0f} samples/s (median {res['raven_median']:.0f})"
          "  loss_and_grad(accumulate=False)")
    if "raven_zero_grad_accumulate_samples_per_s" in res:
        print(f"  raven-hpc : {res['raven_zero_grad_accumulate_samples_per_s']:9.0f} samples/s"
              "  zero_grad() + loss_and_grad()")
    if "torch_samples_per_s" in res:
        print(f"  torch {res['torch_version']}: {res['torch_samples_per_s']:9.0f} samples/s "
              f"(median {res['torch_median']:.0f})")
        target = 1.0 if kind == "mlp" else 0.5
        print(f"  ratio     : {res['ratio']:.2f}x (median {res['ratio_median']:.2f}x; target >= {target}x)")
    else:
        print("  torch not installed: no comparison")
    if "raven_gflops" in res:
        print(f"  GEMM work : {res['gflop_per_step'] * 1e3:.0f} MFLOP/step -> {res['raven_gflops']:.1f} GFLOP/s; "
              f"numpy float32 GEMM alone: {res['numpy_gemm_same_shapes_gflops']:.1f} GFLOP/s on the same shapes "
              f"({res['gemm_fraction_same_shapes']:.2f} of it; target >= 0.7), "
              f"{res['numpy_gemm_1024_gflops']:.1f} GFLOP/s at 1024^3 ({res['gemm_fraction_1024']:.2f})")
    if mem:
        r, t = mem["raven"], mem.get("torch")
        rows = [("peak RSS - RSS after imports and runtime init", "peak_minus_runtime_mib", "ratio"),
                ("peak RSS - RSS after imports", "peak_minus_imports_mib", "ratio_minus_imports"),
                ("peak RSS of the process", "peak_rss_mib", "ratio_absolute")]
        for i, (what, key, ratio) in enumerate(rows):
            line = f"  {'memory' if i == 0 else '':10}: {what}: raven-hpc {r[key]:.1f} MiB"
            if t:
                target = " (target <= 1.5)" if i == 0 else ""
                line += f", torch {t[key]:.1f} MiB, ratio {mem[ratio]:.2f}{target}"
            print(line)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("mlp", "cnn", "both"), default="both")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--hidden", default="512,256", help="comma-separated hidden widths of the MLP")
    ap.add_argument("--classes", type=int, default=10, help="classes of the MLP (LeNet: 10)")
    ap.add_argument("--iters", type=int, default=100, help="iterations per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory measurement")
    ap.add_argument("--json", action="store_true", help="print one JSON line per model instead of text")
    ap.add_argument("--memory-child", choices=("raven", "torch"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.hidden_list = [int(h) for h in args.hidden.split(",") if h]

    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.model, args)))
        return 0
    results = []
    for kind in (("mlp", "cnn") if args.model == "both" else (args.model,)):
        res = bench_speed(kind, args)
        mem = bench_memory(kind, args) if args.memory else None
        results.append(dict(res, memory=mem) if mem else res)
        if args.json:
            print(json.dumps(results[-1]))
        else:
            _print(kind, res, mem)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"engine_{args.model}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    if not args.json:
        print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
