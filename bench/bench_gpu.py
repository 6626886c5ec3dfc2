"""The CUDA backend on a GPU: ``loss_and_grad`` against torch on the same
GPU, the bandwidth the fused element-wise kernels reach, and a mixed job's
shares.

    python bench/bench_gpu.py                  # everything, on a GPU node
    python bench/bench_gpu.py engine --batches 128 1024 8192
    python bench/bench_gpu.py bandwidth
    python bench/bench_gpu.py mixed --cpu-workers 4

* ``engine``: samples/s of a worker's ``loss_and_grad`` for the MNIST MLP
  (784-512-256-10) and LeNet-5 at each batch size: raven-hpc on its CUDA
  backend as a worker runs it (the batch and the parameters copied in, the
  gradient copied out every call) and torch on the same GPU twice -- with
  the same copies, and with everything already on the device.
* ``bandwidth``: GB/s of the fused element-wise kernels (ReLU forward and
  backward, bias + activation, the SGD-momentum update) on 2**26 floats,
  against the device's peak memory bandwidth (from its memory clock and bus
  width).
* ``mixed``: ``mpiexec`` with one CUDA worker and N CPU workers (MPMD:
  ``RAVEN_BACKEND`` per rank) on the MLP; the share of accepted
  snippets each rank computed, from the ledger.

Needs a GPU (numba sees one) and CuPy; ``--simulator`` runs a tiny smoke
version under ``NUMBA_ENABLE_CUDASIM=1`` to check the script itself.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _common import RESULTS, bench_env, mpiexec, mpiexec_flags, prepare, write_raven_config  # noqa: E402
from bench_engine import _lenet_spec, _mlp_spec, _torch_lenet, _torch_mlp  # noqa: E402


def _backend():
    from raven_hpc.kernels import cuda

    be = cuda.CudaBackend(device=cuda.local_device())
    return be


def _median_rate(fn, sync, batch: int, iters: int, repeats: int = 3) -> float:
    fn()
    sync()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        sync()
        rates.append(batch * iters / (time.perf_counter() - t0))
    return statistics.median(rates)


def engine_part(args) -> list:
    from raven_hpc.engine import build_model

    be = _backend()
    rows = []
    try:
        import torch
    except ImportError:
        torch = None
    for kind in args.models:
        for batch in args.batches:
            rng = np.random.default_rng(0)
            x = rng.random((batch, 28, 28), dtype=np.float32)
            y = rng.integers(0, 10, batch).astype(np.int64)
            spec = _mlp_spec(args.hidden, 10) if kind == "mlp" else _lenet_spec()
            model = build_model(spec, (28, 28), 10, backend=be)
            host_grads = np.zeros(model.num_params, np.float32)
            model.bind_grads(host_grads)
            iters = max(2, args.samples // batch)
            raven = _median_rate(lambda: model.loss_and_grad(x, y, accumulate=False), be.synchronize, batch, iters)
            row = {"model": kind, "batch": batch, "raven_samples_s": raven}
            if torch is not None and not be.simulated:
                dev = torch.device("cuda", be.device or 0)
                net = (_torch_mlp(torch, args.hidden, 10) if kind == "mlp" else _torch_lenet(torch)).to(dev)
                flat = torch.zeros(model.num_params, device="cpu", pin_memory=False)

                def torch_copies():
                    tx, ty = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
                    net.zero_grad(set_to_none=True)
                    torch.nn.functional.cross_entropy(net(tx), ty, reduction="sum").backward()
                    torch.cat([p.grad.reshape(-1) for p in net.parameters()]).to("cpu", out=flat)

                dx, dy = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)

                def torch_resident():
                    net.zero_grad(set_to_none=True)
                    torch.nn.functional.cross_entropy(net(dx), dy, reduction="sum").backward()

                sync = torch.cuda.synchronize
                row["torch_copies_samples_s"] = _median_rate(torch_copies, sync, batch, iters)
                row["torch_resident_samples_s"] = _median_rate(torch_resident, sync, batch, iters)
                row["vs_torch_copies"] = raven / row["torch_copies_samples_s"]
                row["vs_torch_resident"] = raven / row["torch_resident_samples_s"]
            rows.append(row)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    return rows


def _peak_gbs(be) -> float | None:
    if be.simulated:
        return None
    import cupy

    p = cupy.cuda.runtime.getDeviceProperties(be.device or 0)
    return 2.0 * p["memoryClockRate"] * 1e3 * p["memoryBusWidth"] / 8 / 1e9


def bandwidth_part(args) -> list:
    be = _backend()
    n = args.elements
    x = be.to_device(np.random.default_rng(0).standard_normal(n).astype(np.float32))
    y, g, gx = be.empty(n), be.to_device(np.ones(n, np.float32)), be.empty(n)
    from raven_hpc.kernels.activations import ACTIVATIONS

    relu = ACTIVATIONS["relu"]
    k = be.kernel
    cols = 1024
    y2 = y.reshape(n // cols, cols)
    bias = be.to_device(np.zeros(cols, np.float32))
    mom = be.zeros(n)
    cases = [
        ("relu forward", 8, lambda: k("act_forward")(x, y, relu)),
        ("relu backward", 12, lambda: k("act_backward")(g, x, gx, relu)),
        ("bias + relu forward, in place", 8, lambda: k("bias_act_forward")(y2, bias, relu)),
        ("sgd momentum update", 16, lambda: k("sgd_step")(y, g, mom, 0.01, 0.9, 0.0, 0.0, False, False, 1.0)),
    ]
    peak = _peak_gbs(be)
    rows = []
    for name, bytes_per, fn in cases:
        fn()
        be.synchronize()
        t = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            be.synchronize()
            t.append(time.perf_counter() - t0)
        gbs = bytes_per * n / statistics.median(t) / 1e9
        row = {"kernel": name, "GB_s": gbs, "peak_GB_s": peak, "fraction": gbs / peak if peak else None}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def mixed_part(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="raven-gpu-"))
    data = prepare(tmp, snippet_size=32)
    cfg = write_raven_config(tmp / "mixed.toml", data, batch_size=args.mixed_batch, task_snippets=1,
                             max_steps=args.mixed_steps, extra=f"max_chunk = {args.max_chunk}\n")
    exe = mpiexec()
    run_dir = tmp / "run"
    train = [str(Path(sys.executable).parent / "raven-hpc"), "train", str(cfg), "--run-dir", str(run_dir)]
    open_mpi = bool(mpiexec_flags(exe))

    def env(value):  # the backend per rank (RAVEN_BACKEND: the rank's own choice)
        return ["-x", f"RAVEN_BACKEND={value}"] if open_mpi else ["-env", "RAVEN_BACKEND", value]

    cmd = [exe, *mpiexec_flags(exe), "-n", str(1 + args.cpu_workers), *env("cpu"), *train,
           ":", "-n", "1", *env("cuda"), *train]
    res = subprocess.run(cmd, capture_output=True, text=True, env=bench_env(), timeout=1800)
    if res.returncode != 0:
        raise SystemExit(f"mixed job failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    gpu_rank = 1 + args.cpu_workers
    share = collections.Counter()
    for line in (run_dir / "ledger.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e.get("ev") == "copy" and e.get("state") == "accepted" and e.get("kind", "grad") == "grad":
            share[e["rank"]] += len(e.get("snippets", ())) or 1
    total = sum(share.values())
    summary = json.loads((run_dir / "summary.json").read_text())
    out = {"cpu_workers": args.cpu_workers, "gpu_rank": gpu_rank, "samples_per_s": summary.get("samples_per_s"),
           "snippet_share": {str(r): share[r] / total for r in sorted(share)}}
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", nargs="?", default="all", choices=("all", "engine", "bandwidth", "mixed"))
    ap.add_argument("--models", nargs="+", default=["mlp", "lenet"], choices=("mlp", "lenet"))
    ap.add_argument("--hidden", nargs="+", type=int, default=[512, 256], help="hidden widths of the MLP")
    ap.add_argument("--batches", nargs="+", type=int, default=[128, 1024, 8192])
    ap.add_argument("--samples", type=int, default=65536, help="samples per timed repeat")
    ap.add_argument("--elements", type=int, default=2**26)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cpu-workers", type=int, default=4)
    ap.add_argument("--mixed-batch", type=int, default=1024)
    ap.add_argument("--mixed-steps", type=int, default=200)
    ap.add_argument("--max-chunk", type=int, default=16)
    ap.add_argument("--simulator", action="store_true",
                    help="smoke-test the script under NUMBA_ENABLE_CUDASIM=1 (tiny sizes, no torch)")
    args = ap.parse_args()
    from raven_hpc.kernels import cuda

    if args.simulator:
        if not cuda.simulated():
            raise SystemExit("--simulator needs NUMBA_ENABLE_CUDASIM=1 in the environment")
        args.models, args.batches, args.samples, args.elements, args.repeats = ["mlp"], [4], 8, 4096, 1
        args.hidden = [8]
    elif cuda.device_count() == 0:
        raise SystemExit("no CUDA GPU here (numba sees none): run this on a GPU node")
    out = {"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES",)}}
    if args.part in ("all", "engine"):
        out["engine"] = engine_part(args)
    if args.part in ("all", "bandwidth"):
        out["bandwidth"] = bandwidth_part(args)
    if args.part in ("all", "mixed") and not args.simulator:
        out["mixed"] = mixed_part(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"gpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
