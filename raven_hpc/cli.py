"""``raven-hpc``: the command line.  The only module that parses arguments
and prints for humans; everything else returns values or raises RavenError.

    raven-hpc prepare [KIND] SOURCE OUT.h5 [--snippet-size 32] [--force]
    mpirun -n N raven-hpc train CONFIG.toml [--run-dir D] [--set k=v] [--resume [auto]]
    raven-hpc evaluate RUN_DIR|CHECKPOINT [--data FILE] [--split test] [--json]
    raven-hpc report RUN_DIR [--json] [--plots [--out DIR]]
    raven-hpc drain [--undo] RUN_DIR RANK [RANK...]
    raven-hpc model CONFIG.toml
    raven-hpc info
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import __version__
from .errors import RavenError

PREPARE_KINDS = ("auto", "mnist", "idx", "npz", "npy", "csv", "images")


def _err(msg: str) -> None:
    print(f"raven-hpc: error: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------- prepare --
def cmd_prepare(args) -> int:
    from .data import prepare

    pos = list(args.paths)
    kind = args.kind
    usage = "usage: raven-hpc prepare [KIND] SOURCE OUT, e.g. `raven-hpc prepare mnist data/mnist-small out/mnist.h5`"
    if len(pos) == 3:
        if pos[0] not in PREPARE_KINDS:
            raise RavenError(f"prepare: unknown source kind {pos[0]!r}; valid kinds: {', '.join(PREPARE_KINDS)} "
                             f"({usage})")
        kind = pos.pop(0)
    if len(pos) != 2:
        raise RavenError(f"prepare takes a SOURCE and an OUT file (and optionally a KIND first), got {len(pos)} "
                         f"argument(s): {' '.join(pos)}; {usage}")
    kind = {"idx": "mnist"}.get(kind, kind)
    t0 = time.monotonic()
    info = prepare(pos[0], pos[1], kind=kind, snippet_size=args.snippet_size, force=args.force,
                   shuffle_seed=args.seed, limit=args.limit, num_classes=args.num_classes)
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
def cmd_train(args) -> int:
    from .train import env_threads

    env_threads(args.config)
    from .protocol import signals

    # a SIGTERM / SIGUSR1 during start-up is kept for the master's first step
    # boundary: no rank dies of it (see protocol/signals.py)
    signals.install()
    from mpi4py import MPI

    from .errors import EXIT_RESUMABLE, Interrupted
    from .train import ReportedElsewhere, broadcast_setup, run_training, setup_run

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    hang_s = os.environ.get("RAVEN_DUMP_STACKS_AFTER_S")
    if hang_s:
        # for operators chasing a hang: every rank prints its Python stack to
        # stderr once this many seconds have passed (and goes on)
        import faulthandler

        faulthandler.dump_traceback_later(float(hang_s), repeat=False)
    overrides = list(args.set or [])
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.progress is not None:
        overrides.append(f"run.progress=\"{args.progress}\"")
    try:
        cfg = broadcast_setup(comm, lambda: setup_run(args.config, overrides, args.run_dir, args.resume))
    except ReportedElsewhere:
        return 2
    except RavenError as exc:
        _err(str(exc))
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - a bug: show it, end the job
        raise exc
    from .progress import Progress

    progress = Progress(cfg["run"]["progress"], max_steps=cfg["train"]["max_steps"]) if rank == 0 else None
    if rank == 0:
        for note in cfg["meta"].get("notes", []):
            print(f"raven-hpc: note: {note}", file=sys.stderr, flush=True)
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

            collector = getattr(exc, "collector", None)
            stopped = await_stop(comm, parent=getattr(exc, "parent", 0))
            if collector is not None:   # its group waits for its stop in turn
                stopped = collector.close({"type": "stop"}) and stopped
            if not stopped:
                from .protocol.transport import abort

                abort(comm, 3)
            return getattr(exc, "exit_code", 1)
        if isinstance(exc, Interrupted):
            print(f"raven-hpc: {exc}; exit status {EXIT_RESUMABLE} (resumable)", file=sys.stderr, flush=True)
        elif isinstance(exc, RavenError):
            _err(str(exc))
        else:
            import traceback

            traceback.print_exc()
            _err(f"internal error: {type(exc).__name__}: {exc} (please report it)")
        if getattr(exc, "abort_job", False):
            from .protocol.transport import abort

            abort(comm, getattr(exc, "exit_code", 1))
        return getattr(exc, "exit_code", 1)
    if rank != 0 and signals.resumable:
        return EXIT_RESUMABLE   # the master stopped the run at a signal: see its message
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


def _fmt_sig(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:,.0f}"


def _table(rows: list[tuple], left: tuple = ()) -> list[str]:
    """Aligned columns (the model summary's style): header, rule, rows, rule."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    rule = "  ".join("-" * w for w in widths)
    fmt = lambda r: "  ".join(c.ljust(w) if i in left else c.rjust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return [fmt(rows[0]), rule] + [fmt(r) for r in rows[1:]] + [rule]


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _utc(t) -> str:
    if not isinstance(t, (int, float)):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _print_ledger(rep: dict) -> None:
    led = rep["ledger"]
    if led is None:
        print(f"\nledger: none ({rep['run_dir']}/ledger.jsonl does not exist: [poc] ledger = false, "
              "or a run from before the ledger)")
        return
    tot, integ = led["totals"], led["integrity"]
    print(f"\nledger {led['path']}")
    for w in led["warnings"]:
        print(f"  note: {w}")
    if led["ignored_events"]:
        ign = ", ".join(f"{n} {ev!r}" for ev, n in sorted(led["ignored_events"].items()))
        print(f"  note: ignored records of unknown kinds: {ign}")
    for i, r in enumerate(led["runs"], 1):
        end = r["end"]
        if end is None and i < len(led["runs"]):
            how = f"no end record (killed, or its tail cut when run {i + 1} resumed)"
        elif end is None:
            how = "no end record (killed, or still running)"
        else:
            t = end.get("t")
            how = f"{end.get('status')} at step {end.get('step')}" + (f" after {t:.1f} s" if isinstance(
                t, (int, float)) else "")
        start = f"resumed at step {r['start_step']}" if r["resumed"] else f"from step {r['start_step']}"
        planned = (r.get("plan") or {}).get("planned")
        plan = f" of {planned:,} planned" if planned else ""
        print(f"  run {i}: {_utc(r['unix_time'])}, {start}{plan}, {r['ranks'] or '?'} ranks, {how}")
    print(f"  {_plural(tot['steps'], 'step')}, {_plural(tot['tasks'], 'grad task')} applied; "
          f"{tot['copies']:,} cop{'y' if tot['copies'] == 1 else 'ies'}: "
          + ", ".join(f"{tot[s]:,} {s}" for s in ("accepted", "duplicate", "late", "rejected", "lost", "skipped")))
    cleared = f" ({tot['strikes_cleared']:,} cleared by audits)" if tot.get("strikes_cleared") else ""
    print(f"  {_plural(tot['backups'], 'backup')}, {tot['verified']:,} verified ({tot['disagreed']:,} disagreed), "
          f"{tot['credited']:,} credited, {_plural(tot['strikes'], 'strike')}{cleared}, "
          f"{_plural(led['arbitrations']['count'], 'arbitration')}, {_plural(led['checkpoints']['count'], 'checkpoint')}")
    if led["ranks"]:
        # with collectors, a role column: whom a collector leads, under which collector a worker is
        tree = bool(led.get("collectors")) or any(d.get("role") == "collector" for d in led["ranks"])
        rows = [("rank", "host", "status", *(("role",) if tree else ()), "copies", "returned", "accepted", "snippets",
                 "snip_acc", "credited", "dup", "late",
                 "rejected", "lost", "skipped", "backups", "strikes", "latency_ms", "ms/sample", "speed")]
        for d in led["ranks"]:
            lat = d["median_latency_s"]
            rel = d["relative_compute"]
            role = (f"collector of {','.join(map(str, d['children']))}" if d["role"] == "collector" and d["children"]
                    else f"worker under {d['leader']}" if d["role"] == "worker" and d["leader"] else d["role"])
            rows.append((str(d["rank"]), ",".join(d["hosts"]) or "?", d["status"], *((role,) if tree else ()),
                         *(f"{d[k]:,}" for k in ("copies", "returned", "accepted", "snippets", "snippets_accepted",
                                                 "credited", "duplicates",
                                                 "late", "rejected", "lost", "skipped", "backups", "strikes")),
                         _fmt_sig(None if lat is None else 1000 * lat), _fmt_sig(d["compute_ms_per_sample"]),
                         "-" if rel is None else f"{rel:.2f}x"))
        print()
        for line in _table(rows, left=(1, 2, 3) if tree else (1, 2)):
            print(f"  {line}")
        print("  (latency_ms, ms/sample: medians; speed: ms/sample over the median of the ranks, > 1 is slower; "
              "strikes: those not cleared by audits" + ("; a collector's row: its parent's tasks, and no speed: "
                                                         "its compute time is its group's)" if tree else ")"))
        for g in led.get("collectors", []):
            print(f"  collector {g['rank']} ({g.get('path', g['ledger'])}): leads rank{'s' if len(g['children']) != 1 else ''} "
                  f"{', '.join(map(str, g['children']))}; {_plural(g['sums'], 'sum')} sent up, "
                  f"{g['checked_sums']:,} checked against its parent's copies")
    print()
    if not led["suspects"]:
        print("suspect nodes: none")
    else:
        print("suspect nodes:")
        for s in led["suspects"]:
            print(f"  rank {s['rank']} ({s['host'] or '?'}, {s['status']}): {'; '.join(s['reasons'])}")
    aud = led["audits"]
    if aud["count"]:
        print(f"audits: {aud['count']:,} ({aud['failed']:,} failed)")
        for a in aud["failed_audits"]:
            where = f"step {a['task_step']:,}" if a["task_step"] is not None else "step ?"
            ranks = ", ".join(map(str, a["ranks"])) or "none"
            fate = "; voided: " + a["voided_by"] if a["voided_by"] else ""
            print(f"  failed: task {a['task']} ({where}, audited at step {a['step']}): "
                  f"rank{'s' if len(a['ranks']) != 1 else ''} {ranks} found wrong{fate}")
        if aud["failed"] > len(aud["failed_audits"]):
            print(f"  ... and {aud['failed'] - len(aud['failed_audits']):,} more failed audits (see --json)")
    if led["rollbacks"]:
        print(f"rollbacks: {len(led['rollbacks']):,}")
        for r in led["rollbacks"]:
            guilty = ", ".join(map(str, r["guilty"]))
            who = f", guilty rank{'s' if len(r['guilty']) != 1 else ''} {guilty}" if r["guilty"] else ""
            ck = f" (checkpoint {r['checkpoint']})" if r["checkpoint"] else ""
            print(f"  run {r['run'] + 1}: at step {r['step']} back to step {r['to_step']}{who}: "
                  f"{r['reason'] or 'no reason given'}{ck}")
    _print_integrity(integ)


def _print_integrity(integ: dict) -> None:
    """The integrity status line, then the problems, notes and violations."""
    status = integ["status"]
    audits = []
    if integ["audits"]:
        audits.append(f"{_plural(integ['audits'], 'audit')} ({integ['failed_audits']:,} failed)")
    if integ["rollbacks"]:
        audits.append(_plural(integ["rollbacks"], "rollback"))
    checked = [_plural(integ["steps"], "step"), _plural(integ["checked_tasks"], "grad task")]
    if integ.get("collectors"):
        checked.append(_plural(integ["collectors"]["checked_sums"], "collector sum"))
    ep = integ["epochs"]
    if ep["complete"]:
        checked.append(f"every snippet of {_plural(ep['complete'], 'epoch')} counted once" if status == "OK" else
                       f"{ep['counted_once']:,} of {_plural(ep['complete'], 'complete epoch')} with every snippet "
                       "counted once")
    elif integ["limited"] and status == "OK":
        checked[-1] += ", each accepted exactly once"
    if ep["in_progress"]:
        checked.append(f"epoch {', '.join(map(str, ep['in_progress']))} in progress")
    checked_s = ", ".join(checked) + ("; " + ", ".join(audits) if audits else "")
    if status == "OK":
        print(f"integrity: OK -- {checked_s}")
    else:
        probs = integ["problems"]
        print(f"integrity: {status} -- {probs[0]}")
        for p in probs[1:]:
            print(f"  problem: {p}")
        if integ["first_missing_step"] is not None:
            print(f"  first step without its records: {integ['first_missing_step']:,}")
        print(f"  checked: {checked_s}")
    extra = []
    if integ["redone_tasks"]:
        extra.append(f"{_plural(integ['redone_tasks'], 'task')} redone after a resume or rollback")
    if integ["open_tasks"]:
        extra.append(f"{_plural(integ['open_tasks'], 'task')} of a step still open when a run stopped")
    if extra:
        print(f"  not counted: {'; '.join(extra)}")
    for n in integ["notes"]:
        print(f"  note: {n}")
    for v in integ["violations"]:
        print(f"  run {v['run'] + 1} step {v['step']} task {v['task']}: {v['problem']}")
    if integ["violation_count"] > len(integ["violations"]):
        print(f"  ... and {integ['violation_count'] - len(integ['violations']):,} more (see --json)")


#: ``raven-hpc report``'s exit status by integrity status (no ledger: 0)
REPORT_EXIT = {"OK": 0, "FAILED": 1, "INCOMPLETE": 3}


def cmd_report(args) -> int:
    from .report import run_report

    if args.plots or args.out:     # the figures and report.html; the report is read in the same pass
        from .report.plots import write_plots

        plots = write_plots(args.run_dir, args.out)
    else:
        plots = None
    rep = plots["report"] if plots else run_report(args.run_dir)
    from .report.exposure import exposure, exposure_lines

    rep["exposure"] = exposure(args.run_dir)
    rc = REPORT_EXIT[rep["ledger"]["integrity"]["status"]] if rep["ledger"] is not None else 0
    if args.json:
        if plots:
            print(_plots_line(plots), file=sys.stderr, flush=True)
        print(json.dumps(rep, indent=2, default=str))
        return rc
    summary, epochs = rep["summary"], rep["epochs"]
    print(f"run {rep['run_dir']}")
    for w in rep["history_warnings"]:
        print(f"  note: {w}")
    if summary:
        for k in ("final_test_accuracy", "epochs", "steps", "samples_per_s", "ranks", "workers", "wall_s",
                  "master_cpu_s", "master_cpu_fraction"):
            print(f"  {k:<22} {summary.get(k)}")
    else:
        print("  no summary.json (the run has not finished)")
    if epochs:
        print(f"\n  {'epoch':>5} {'step':>7} {'loss':>9} {'test_acc':>9} {'wall_s':>8}")
        for e in epochs:
            acc = e.get("test_accuracy")
            loss = e.get("loss")
            wall = e.get("wall_s")
            print(f"  {e.get('epoch'):>5} {e.get('step'):>7} {'-' if loss is None else format(loss, '.4f'):>9} "
                  f"{'-' if acc is None else format(100 * acc, '.2f') + '%':>9} "
                  f"{'-' if wall is None else format(wall, '.1f'):>8}")
    for r in rep["rollbacks"]:
        print(f"  (metrics: rolled back at step {r.get('step')} to step {r.get('to_step')}; the lines it voided "
              "are not shown)")
    lines = exposure_lines(rep["exposure"])
    if lines:
        print("\n".join(lines))
    _print_ledger(rep)
    if rep["drain"] and rep["drain"]["ranks"]:
        print(f"drain file {rep['drain']['path']} lists rank {', '.join(map(str, rep['drain']['ranks']))}")
    if plots:
        print(_plots_line(plots))
    return rc


def _plots_line(plots: dict) -> str:
    return f"plots: {plots['html']} ({len(plots['files'])} figures, also as PNG files beside it)"


def cmd_drain(args) -> int:
    from .report import parse_ranks, update_drain

    ranks = parse_ranks(args.ranks)
    res = update_drain(args.run_dir, ranks, undo=args.undo)
    names = lambda rs: ", ".join(map(str, rs))  # noqa: E731
    now = names(res["ranks"]) or "empty"
    if args.undo:
        if res["changed"]:
            print(f"readmitted rank {names(res['changed'])}: removed from {res['path']}; the running master "
                  f"puts them back in the schedule at its next poll (drain file now: {now})")
        if res["unchanged"]:
            print(f"rank {names(res['unchanged'])} was not listed in {res['path']} (drain file: {now})")
    else:
        if res["changed"]:
            print(f"drained rank {names(res['changed'])}: listed in {res['path']}; the running master takes "
                  f"them out of the schedule at its next poll (drain file now: {now})")
        if res["unchanged"]:
            print(f"rank {names(res['unchanged'])} was already listed in {res['path']} (drain file: {now})")
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
    from .kernels import available_backends, cuda

    print(f"backends  {', '.join(available_backends())}  (cluster.backend = \"auto\" takes cuda on a GPU node)")
    print(f"cpu       numba {numba.__version__}, {os.cpu_count()} cores")
    for i, line in enumerate(cuda.describe_devices()):
        print(f"{'cuda' if i == 0 else '':<9} {line}")
    if cuda.device_count():
        print(f"{'':<9} CUDA-aware MPI: {_cuda_aware_mpi()} (gradients are staged through host memory either way)")
    return 0


def _cuda_aware_mpi() -> str:
    """``"yes"``/``"no"`` when the MPI library names its memory kinds
    (MPI 4.1's ``mpi_memory_alloc_kinds`` in ``MPI_INFO_ENV``), else ``"unknown"``."""
    try:
        from mpi4py import MPI

        val = MPI.INFO_ENV.Get("mpi_memory_alloc_kinds")
    except Exception:  # noqa: BLE001 - an MPI without the key, or without mpi4py
        return "unknown"
    if val is None:
        return "unknown"
    return "yes" if "cuda" in val.lower() else "no"


# -------------------------------------------------------------------- main --
def _resume_arg(text: str):
    """``--resume [auto|yes|no]``: the value of ``run.resume``."""
    value = {"auto": "auto", "yes": True, "true": True, "no": False, "false": False}.get(text.lower())
    if value is None:
        hint = " (put CONFIG before --resume)" if text.endswith(".toml") else ""
        raise argparse.ArgumentTypeError(f"{text!r} is not auto, yes or no{hint}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raven-hpc", description="Data-parallel neural-network training over MPI "
                                "with verified micro-snippet gradients.")
    p.add_argument("--version", action="version", version=f"raven-hpc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sp = sub.add_parser("prepare", help="turn MNIST IDX / .npz / .npy / CSV / image folders into a snippet HDF5 "
                        "file")
    sp.add_argument("paths", nargs="+", metavar="[KIND] SOURCE OUT",
                    help=f"KIND is one of {', '.join(PREPARE_KINDS)} (default auto)")
    sp.add_argument("--kind", default="auto", choices=PREPARE_KINDS)
    sp.add_argument("--snippet-size", type=int, default=32, help="samples per snippet (default 32)")
    sp.add_argument("--seed", type=int, default=0, help="shuffle seed of the training split (default 0)")
    sp.add_argument("--limit", type=int, default=None, help="keep at most N samples per split")
    sp.add_argument("--num-classes", type=int, default=None,
                    help="number of classes (default: the largest label + 1; labels are class indices 0..K-1)")
    sp.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    sp.add_argument("--json", action="store_true", help="print the summary as JSON")
    sp.set_defaults(fn=cmd_prepare)

    sp = sub.add_parser("train", help="train (run under mpirun/srun: rank 0 is the master)")
    sp.add_argument("config", help="TOML configuration file")
    sp.add_argument("--run-dir", help="run directory (overrides [run] dir)")
    sp.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    sp.add_argument("--epochs", type=int, help="override [train] epochs")
    sp.add_argument("--resume", nargs="?", const=True, type=_resume_arg, metavar="auto",
                    help="continue from RUN_DIR/checkpoint.h5 (an error when there is none); --resume auto: "
                    "continue when there is one, else start fresh (batch scripts)")
    sp.add_argument("--progress", choices=("auto", "bar", "lines", "none"))
    sp.add_argument("--json", action="store_true", help="print the summary as JSON at the end")
    sp.set_defaults(fn=cmd_train)

    sp = sub.add_parser("evaluate", help="accuracy of a checkpoint")
    sp.add_argument("checkpoint", help="run directory or checkpoint.h5")
    sp.add_argument("--data", help="dataset (default: the one the run trained on)")
    sp.add_argument("--split", help="split (default: the run's test split)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_evaluate)

    sp = sub.add_parser("report", help="summary, per-epoch metrics and the Proof-of-Calculation ledger of a run",
                        description="The run's summary and per-epoch metrics, then from RUN_DIR/ledger.jsonl: "
                        "one row per rank (copies by state, credited, backups, median latency and compute "
                        "time per sample, strikes, status), the suspect nodes, audits, rollbacks and the "
                        "integrity check: every step has its records, every grad task accepted exactly once, "
                        "every snippet counted once per epoch, audits and rollbacks consistent. It ends in one "
                        "line, integrity: OK | INCOMPLETE | FAILED.",
                        epilog="exit status: 0 integrity OK (or no ledger), 1 FAILED (a violation, a gap, a "
                        "damaged ledger), 3 INCOMPLETE (the ledger stops before the run's end: killed, "
                        "interrupted, still running, or behind summary.json / checkpoint.h5), 2 an error "
                        "(no run directory). --json exits the same way.")
    sp.add_argument("run_dir", metavar="RUN_DIR")
    sp.add_argument("--json", action="store_true", help="print everything as one JSON document")
    sp.add_argument("--plots", action="store_true",
                    help="also draw the run (loss, accuracy, lr, gradient norm, samples/s with resumes, rollbacks "
                    "and membership events, a per-rank timeline of the task copies, per-rank and per-host "
                    "panels) as PNG files and one self-contained report.html, into RUN_DIR/report (needs "
                    "matplotlib)")
    sp.add_argument("--out", metavar="DIR", help="where --plots writes (default RUN_DIR/report); implies --plots")
    sp.set_defaults(fn=cmd_report)

    sp = sub.add_parser("drain", help="take worker ranks out of a running job's schedule (or --undo: readmit)",
                        description="Lists RANKs in the run's drain file ([poc] drain_file in RUN_DIR/config.toml, "
                        "default RUN_DIR/drain; one rank per line), written atomically. The running master polls it "
                        "and takes listed ranks out of the schedule; --undo removes them from the file and the "
                        "master readmits them.")
    sp.add_argument("run_dir", metavar="RUN_DIR")
    sp.add_argument("ranks", nargs="+", metavar="RANK", help="worker rank (1..N-1)")
    sp.add_argument("--undo", action="store_true", help="remove the ranks from the drain file (readmit them)")
    sp.set_defaults(fn=cmd_drain)

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
    if args.command == "train":
        _finalize_mpi(rc)
    return rc


FINALIZE_DEADLINE_S = 20.0


def _finalize_mpi(rc: int, deadline_s: float = FINALIZE_DEADLINE_S) -> None:
    """``MPI_Finalize`` now, with a deadline.

    Everything is written by now.  After a process failure, Open MPI 5's
    ULFM finalize can fail to return (the survivors asleep inside it; the
    count is in docs/decisions.md), so a rank that knows
    of a failure (the master, and the workers through its stop message)
    leaves without it: under ``--with-ft ulfm`` the launcher still reports
    success.  Otherwise, past the deadline, faulthandler's watchdog -- a C
    thread, so it fires although ``MPI_Finalize`` holds the GIL -- prints
    where each thread is and ends the process (exit code 1) instead of
    leaving the job hanging.  Should ``MPI_Finalize`` itself fail (e.g. a
    message nobody received), the rank exits with ``rc`` without MPI's error
    stack: silently when the run failed (its one message is out already),
    else with one line and exit code 1."""
    import faulthandler

    from mpi4py import MPI

    from .protocol import transport

    if not MPI.Is_initialized() or MPI.Is_finalized():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    if transport.peer_failed:
        os._exit(rc)
    rank = MPI.COMM_WORLD.Get_rank()
    faulthandler.cancel_dump_traceback_later()
    faulthandler.dump_traceback_later(deadline_s, exit=True)
    try:
        MPI.Finalize()
    except MPI.Exception as exc:
        faulthandler.cancel_dump_traceback_later()
        if rc == 0:
            lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
            _err(f"MPI_Finalize failed on rank {rank}: {lines[-1] if lines else exc}")
            sys.stderr.flush()
        os._exit(rc or 1)
    finally:
        faulthandler.cancel_dump_traceback_later()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
