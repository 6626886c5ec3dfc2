"""``raven-hpc``: the command line.  The only module that parses arguments
and prints for humans; everything else returns values or raises RavenError.

    raven-hpc prepare [KIND] SOURCE OUT.h5 [--snippet-size 32] [--force]
    mpirun -n N raven-hpc train CONFIG.toml [--run-dir D] [--set k=v] [--resume]
    raven-hpc evaluate RUN_DIR|CHECKPOINT [--data FILE] [--split test] [--json]
    raven-hpc report RUN_DIR [--json]
    raven-hpc model CONFIG.toml
    raven-hpc info
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from . import __version__
from .errors import RavenError

PREPARE_KINDS = ("auto", "mnist", "idx", "npz", "npy", "csv")


def _err(msg: str) -> None:
    print(f"raven-hpc: error: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------- prepare --
def cmd_prepare(args) -> int:
    from .data import prepare

    pos = list(args.paths)
    kind = args.kind
    if len(pos) == 3 and pos[0] in PREPARE_KINDS:
        kind = pos.pop(0)
    if len(pos) != 2:
        raise RavenError("prepare takes [KIND] SOURCE OUT, e.g. `raven-hpc prepare mnist data/mnist-small out/mnist.h5`")
    kind = {"idx": "mnist"}.get(kind, kind)
    t0 = time.monotonic()
    info = prepare(pos[0], pos[1], kind=kind, snippet_size=args.snippet_size, force=args.force,
                   shuffle_seed=args.seed, limit=args.limit)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"prepared {info.get('path', pos[1])} in {time.monotonic() - t0:.1f} s")
    for name, sp in info.get("splits", {}).items():
        print(f"  {name:<6} {sp.get('samples', '?'):>8} samples  {sp.get('snippets', '?'):>6} snippets")
    print(f"  features {tuple(info.get('feature_shape', ()))}  classes {info.get('num_classes')}  "
          f"snippet size {args.snippet_size}")
    return 0


# ------------------------------------------------------------------- train --
class _Progress:
    """Rank 0's display: a bar on a terminal, plain lines in batch logs."""

    def __init__(self, mode: str):
        tty = sys.stdout.isatty()
        self.mode = {"auto": "bar" if tty else "lines"}.get(mode, mode)
        self.epochs = 0
        self.t_epoch = time.monotonic()
        self._barlen = 0

    def __call__(self, kind: str, info: dict) -> None:
        if self.mode == "none":
            return
        if kind == "begin":
            self.epochs = info["epochs"]
            self.t_epoch = time.monotonic()
            resumed = f", resuming at step {info['resumed_at_step']}" if info["resumed_at_step"] else ""
            print(f"raven-hpc {__version__}: {info['ranks']} rank(s), {info['workers']} worker(s), "
                  f"{info['num_params']:,} parameters, run dir {info['run_dir']}{resumed}", flush=True)
        elif kind == "step" and self.mode == "bar":
            done, total = info["step_in_epoch"], info["steps_per_epoch"]
            width = 24
            fill = int(width * done / max(total, 1))
            line = (f"\repoch {info['epoch'] + 1}/{self.epochs} [{'#' * fill}{'.' * (width - fill)}] "
                    f"{done}/{total} loss {info['loss']:.4f} {info['samples_per_s'] / 1000:.1f}k samples/s")
            self._barlen = len(line)
            sys.stdout.write(line)
            sys.stdout.flush()
        elif kind == "epoch":
            if self._barlen:
                sys.stdout.write("\r" + " " * self._barlen + "\r")
                self._barlen = 0
            dt = time.monotonic() - self.t_epoch
            self.t_epoch = time.monotonic()
            acc = info.get("test_accuracy")
            acc_s = f"  test_acc {100 * acc:.2f}%" if acc is not None else ""
            loss = info.get("loss")
            loss_s = f"  loss {loss:.4f}" if loss is not None else ""
            print(f"epoch {info['epoch']}/{self.epochs}  step {info['step']}{loss_s}{acc_s}  {dt:.1f} s", flush=True)
        elif kind == "resume":
            print(f"resuming from {info['path']} (epoch {info['epoch']}, step {info['step']})", flush=True)
        elif kind == "end":
            acc = info.get("final_test_accuracy")
            print(f"done: {info['steps']} steps, {info['samples_this_run']:,} samples in {info['wall_s']:.1f} s "
                  f"= {info['samples_per_s']:,.0f} samples/s; master CPU {info['master_cpu_s']:.1f} s "
                  f"({100 * (info['master_cpu_fraction'] or 0):.0f}% of wall)", flush=True)
            if acc is not None:
                print(f"final test accuracy: {100 * acc:.2f}%", flush=True)


def cmd_train(args) -> int:
    from .train import env_threads

    env_threads(args.config)
    from mpi4py import MPI

    from .train import _Silent, broadcast_setup, run_training, setup_run

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    overrides = list(args.set or [])
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.progress is not None:
        overrides.append(f"run.progress=\"{args.progress}\"")
    try:
        cfg = broadcast_setup(comm, lambda: setup_run(args.config, overrides, args.run_dir,
                                                      True if args.resume else None))
    except _Silent:
        return 2
    except RavenError as exc:
        _err(str(exc))
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - a bug: show it, end the job
        raise exc
    progress = _Progress(cfg["run"]["progress"]) if rank == 0 else None
    try:
        summary = run_training(comm, cfg, on_event=progress)
    except KeyboardInterrupt:
        if rank == 0:
            _err("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - every rank must leave, none may hang
        if rank != 0:
            # The master already has this error (with rank and host); wait for its stop.
            from .protocol.worker import await_stop

            if not await_stop(comm):
                from .protocol.transport import abort

                abort(comm, 3)
            return getattr(exc, "exit_code", 1)
        if isinstance(exc, RavenError):
            _err(str(exc))
        else:
            import traceback

            traceback.print_exc()
            _err(f"internal error: {type(exc).__name__}: {exc} (please report it)")
        if getattr(exc, "abort_job", False):
            from .protocol.transport import abort

            abort(comm, getattr(exc, "exit_code", 1))
        return getattr(exc, "exit_code", 1)
    if rank == 0 and summary is not None and args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return 0


# --------------------------------------------------------- evaluate/report --
def cmd_evaluate(args) -> int:
    from .checkpoint import load_checkpoint
    from .data import open_dataset
    from .engine import build_model

    ck = load_checkpoint(args.checkpoint)
    data_path = args.data or ck["config"]["data"]["path"]
    split_name = args.split or ck["config"]["data"].get("test_split") or "test"
    with open_dataset(data_path) as ds:
        split = ds.split(split_name)
        model = build_model(ck["model_spec"], tuple(ds.feature_shape), int(ds.num_classes))
        if ck["params"].shape != model.params.shape:
            raise RavenError(f"checkpoint {ck['path']} does not fit the dataset {data_path}")
        model.params[:] = ck["params"]
        t0 = time.monotonic()
        x, y = split.load_all()
        loss_sum, correct = model.evaluate(x, y)
        n = len(y)
    res = {"checkpoint": ck["path"], "data": str(data_path), "split": split_name, "samples": n,
           "accuracy": correct / n, "loss": loss_sum / n, "step": ck["train_state"].get("step"),
           "seconds": round(time.monotonic() - t0, 3)}
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{res['checkpoint']} (step {res['step']}) on {split_name} of {data_path}: "
              f"accuracy {100 * res['accuracy']:.2f}%  loss {res['loss']:.4f}  ({n} samples)")
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    run = Path(args.run_dir)
    if not run.is_dir():
        raise RavenError(f"no run directory at {run}")
    summary = {}
    if (run / "summary.json").exists():
        summary = json.loads((run / "summary.json").read_text())
    epochs = []
    if (run / "metrics.jsonl").exists():
        for line in (run / "metrics.jsonl").read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                if rec.get("event") == "epoch":
                    epochs.append(rec)
    if not summary and not epochs:
        raise RavenError(f"{run} holds no summary.json or metrics.jsonl: is it a raven-hpc run directory?")
    if args.json:
        print(json.dumps({"summary": {k: v for k, v in summary.items() if k != "history"}, "epochs": epochs},
                         indent=2))
        return 0
    print(f"run {run}")
    if summary:
        for k in ("final_test_accuracy", "epochs", "steps", "samples_per_s", "ranks", "workers", "wall_s",
                  "master_cpu_s", "master_cpu_fraction"):
            print(f"  {k:<22} {summary.get(k)}")
    if epochs:
        print(f"\n  {'epoch':>5} {'step':>7} {'loss':>9} {'test_acc':>9} {'wall_s':>8}")
        for e in epochs:
            acc = e.get("test_accuracy")
            loss = e.get("loss")
            print(f"  {e['epoch']:>5} {e['step']:>7} {loss if loss is None else format(loss, '.4f'):>9} "
                  f"{'-' if acc is None else format(100 * acc, '.2f') + '%':>9} {e['wall_s']:>8.1f}")
    return 0


def cmd_model(args) -> int:
    from .config import load_config
    from .data import open_dataset
    from .engine import build_model

    cfg = load_config(args.config, args.set)
    with open_dataset(cfg["data"]["path"]) as ds:
        shape, classes = tuple(ds.feature_shape), int(ds.num_classes)
    model = build_model(cfg["model"], shape, classes)
    print(model.format_summary())
    return 0


def cmd_info(args) -> int:
    import h5py
    import numba
    import numpy

    print(f"raven-hpc {__version__}")
    print(f"python    {sys.version.split()[0]}")
    print(f"numpy     {numpy.__version__}")
    print(f"numba     {numba.__version__}")
    print(f"h5py      {h5py.__version__} (HDF5 {h5py.version.hdf5_version})")
    try:
        import mpi4py
        from mpi4py import MPI

        print(f"mpi4py    {mpi4py.__version__}")
        print(f"MPI       {MPI.Get_library_version().splitlines()[0].strip()}")
    except Exception as exc:  # noqa: BLE001
        print(f"mpi4py    unavailable ({exc})")
    from .kernels import available_backends

    print(f"backends  {', '.join(available_backends())}")
    return 0


# -------------------------------------------------------------------- main --
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raven-hpc", description="Data-parallel neural-network training over MPI "
                                "with verified micro-snippet gradients.")
    p.add_argument("--version", action="version", version=f"raven-hpc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sp = sub.add_parser("prepare", help="turn MNIST IDX / .npz / .npy / CSV data into a snippet HDF5 file")
    sp.add_argument("paths", nargs="+", metavar="[KIND] SOURCE OUT",
                    help=f"KIND is one of {', '.join(PREPARE_KINDS)} (default auto)")
    sp.add_argument("--kind", default="auto", choices=PREPARE_KINDS)
    sp.add_argument("--snippet-size", type=int, default=32, help="samples per snippet (default 32)")
    sp.add_argument("--seed", type=int, default=0, help="shuffle seed of the training split (default 0)")
    sp.add_argument("--limit", type=int, default=None, help="keep at most N samples per split")
    sp.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    sp.add_argument("--json", action="store_true", help="print the summary as JSON")
    sp.set_defaults(fn=cmd_prepare)

    sp = sub.add_parser("train", help="train (run under mpirun/srun: rank 0 is the master)")
    sp.add_argument("config", help="TOML configuration file")
    sp.add_argument("--run-dir", help="run directory (overrides [run] dir)")
    sp.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    sp.add_argument("--epochs", type=int, help="override [train] epochs")
    sp.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.h5")
    sp.add_argument("--progress", choices=("auto", "bar", "lines", "none"))
    sp.add_argument("--json", action="store_true", help="print the summary as JSON at the end")
    sp.set_defaults(fn=cmd_train)

    sp = sub.add_parser("evaluate", help="accuracy of a checkpoint")
    sp.add_argument("checkpoint", help="run directory or checkpoint.h5")
    sp.add_argument("--data", help="dataset (default: the one the run trained on)")
    sp.add_argument("--split", help="split (default: the run's test split)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_evaluate)

    sp = sub.add_parser("report", help="summary and per-epoch metrics of a run")
    sp.add_argument("run_dir")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_report)

    sp = sub.add_parser("model", help="print the model summary of a config")
    sp.add_argument("config")
    sp.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    sp.set_defaults(fn=cmd_model)

    sp = sub.add_parser("info", help="versions of raven-hpc, its libraries and the MPI")
    sp.set_defaults(fn=cmd_info)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "train":
        from .train import env_threads

        env_threads(None)
    try:
        rc = args.fn(args)
    except RavenError as exc:
        _err(str(exc))
        rc = exc.exit_code
    except KeyboardInterrupt:
        _err("interrupted")
        rc = 130
    sys.stdout.flush()
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
