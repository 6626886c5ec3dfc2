"""Rank 0's display of a training run: a live line on a terminal, plain
lines in batch logs (``run.progress = auto | bar | lines | none``).

It is the Recorder's ``on_event`` callback (:mod:`raven_hpc.recorder`):
``begin``, ``step``, ``epoch``, ``notice``, ``member`` (a worker excluded,
drained, lost or back), ``resume`` and ``end``.
"""
from __future__ import annotations

import shutil
import sys
import time

from . import __version__

__all__ = ["MEMBER_STATE", "Progress", "progress_line"]


#: a membership event (ledger record kind, see Recorder.member) -> what it leaves the rank as
MEMBER_STATE = {"exclude": "excluded", "drain": "drained", "lost": "lost", "readmit": None, "undrain": None}


def _clock(seconds) -> str:
    """h:mm:ss (or m:ss under an hour)."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds > 1e8:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _rate(v: float) -> str:
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k" if v >= 1e3 else f"{v:.0f}"


def progress_line(*, step: int, total: int | None, epoch: int, epochs: int, samples_per_s: float, eta_s,
                  loss, workers: int, out: dict, notice: str, width: int) -> str:
    """The live line, e.g. ``step 120/504 [###.........] 24% | epoch 2/8 | 1.2k samples/s | ETA 1:05 |
    loss 0.1409 | workers 2/3 (1 excluded) | <the last notice>``, in at most ``width`` characters: on a
    narrower terminal without the bar, then in short words; the notice only where it has room."""
    frac = min(max(step / total, 0.0), 1.0) if total else None
    gone: dict[str, int] = {}
    for state in out.values():
        gone[state] = gone.get(state, 0) + 1
    active = max(workers - len(out), 0)
    left = ", ".join(f"{n} {k}" for k, n in sorted(gone.items()))
    loss_s = f"{loss:.4f}" if isinstance(loss, (int, float)) else "?"
    at = f"{step:,}/{total:,}" if total else f"{step:,}"
    pct = f" {100 * frac:.0f}%" if total else ""
    bar = f" [{'#' * int(12 * frac)}{'.' * (12 - int(12 * frac))}]" if total else ""
    ep = f"{min(epoch + 1, epochs)}/{epochs}"
    variants = (
        (" | ", [f"step {at}{bar}{pct}", f"epoch {ep}", f"{_rate(samples_per_s)} samples/s", f"ETA {_clock(eta_s)}",
                 f"loss {loss_s}", f"workers {active}/{workers}" + (f" ({left})" if left else "")]),
        ("  ", [f"step {at}{pct}", f"epoch {ep}", f"{_rate(samples_per_s)} samples/s", f"ETA {_clock(eta_s)}",
                f"loss {loss_s}", f"workers {active}/{workers}" + (f" ({left})" if left else "")]),
        (" ", [f"{at}{pct}", f"ep {ep}", f"{_rate(samples_per_s)}/s", f"ETA {_clock(eta_s)}", f"loss {loss_s}",
               f"wk {active}/{workers}"]),
    )
    for sep, parts in variants:
        line = sep.join(parts)
        if len(line) <= width:
            break
    room = width - len(line) - len(sep)
    if notice and room >= 12:
        line += sep + (notice if len(notice) <= room else notice[:room - 3] + "...")
    return line[:width]


class Progress:
    """Rank 0's display.  ``bar`` (a terminal): one line rewritten in place
    (``\\r``) after each logged step, with the step, epoch, samples/s,
    ETA, loss, the active / excluded workers and the last notice; epoch
    results, notices and the end print as lines above it.  ``lines`` (batch
    logs): only those lines.  ``none``: nothing."""

    #: logged steps the rate behind the ETA is measured over
    WINDOW = 8

    def __init__(self, mode: str, max_steps: int = 0, stream=None, width: int | None = None):
        self.out = stream if stream is not None else sys.stdout
        tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.mode = {"auto": "bar" if tty else "lines"}.get(mode, mode)
        self.max_steps = max_steps
        self.width = width
        self.epochs = 0
        self.t_epoch = time.monotonic()
        self._barlen = 0
        self.workers = 0
        self.gone: dict[int, str] = {}     # rank -> excluded | drained | lost
        self.notice = ""
        self.start_step = 0
        self.recent: list[tuple] = []      # (wall_s, step) of the last logged steps
        self.last: dict | None = None

    def _print(self, text: str) -> None:
        self._clear()
        print(text, file=self.out, flush=True)

    def _clear(self) -> None:
        if self._barlen:
            self.out.write("\r" + " " * self._barlen + "\r")
            self._barlen = 0

    def _columns(self) -> int:
        return self.width or max(40, shutil.get_terminal_size((120, 24)).columns - 1)

    def eta(self) -> float | None:
        """Seconds to the last planned step at the pace of the last logged steps."""
        total = self.total()
        if not total or not self.recent:
            return None
        (w0, s0), (w1, s1) = self.recent[0] if len(self.recent) > 1 else (0.0, self.start_step), self.recent[-1]
        return max(total - self.last["step"], 0) * (w1 - w0) / (s1 - s0) if s1 > s0 and w1 > w0 else None

    def total(self) -> int | None:
        info = self.last
        spe = info.get("steps_per_epoch") if info else None
        total = spe * self.epochs if spe and self.epochs else None
        if self.max_steps:
            total = self.max_steps if total is None else min(total, self.max_steps)
        return total

    def line(self) -> str:
        info = self.last
        return progress_line(step=info["step"], total=self.total(), epoch=info["epoch"], epochs=self.epochs,
                             samples_per_s=info.get("samples_per_s") or 0.0, eta_s=self.eta(),
                             loss=info.get("loss"), workers=self.workers, out=self.gone, notice=self.notice,
                             width=self._columns())

    def _draw(self) -> None:
        if self.mode != "bar" or self.last is None:
            return
        text = self.line()
        pad = max(self._barlen - len(text), 0)
        self.out.write("\r" + text + " " * pad)
        self.out.flush()
        self._barlen = len(text)

    def _member(self, rank: int, event: str) -> None:
        """Follow a worker's membership (the Recorder's ``member`` events)."""
        state = MEMBER_STATE.get(event)
        if state is None:
            self.gone.pop(rank, None)
        else:
            self.gone[rank] = state

    def __call__(self, kind: str, info: dict) -> None:
        if self.mode == "none":
            return
        if kind == "begin":
            self.epochs = info["epochs"]
            self.workers = info["workers"]
            self.start_step = info["resumed_at_step"] or 0
            self.recent = []
            self.t_epoch = time.monotonic()
            resumed = f", resuming at step {info['resumed_at_step']}" if info["resumed_at_step"] else ""
            coll = info.get("collectors") or []
            coll = f", {len(coll)} collector{'s' if len(coll) != 1 else ''} ({','.join(map(str, coll))})" if coll else ""
            self._print(f"raven-hpc {__version__}: {info['ranks']} rank(s), {info['workers']} worker(s){coll}, "
                        f"{info['num_params']:,} parameters, run dir {info['run_dir']}{resumed}")
        elif kind == "step":
            self.last = info
            if isinstance(info.get("wall_s"), (int, float)):
                self.recent = (self.recent + [(info["wall_s"], info["step"])])[-self.WINDOW:]
            self._draw()
        elif kind == "epoch":
            dt = time.monotonic() - self.t_epoch
            self.t_epoch = time.monotonic()
            acc = info.get("test_accuracy")
            acc_s = f"  test_acc {100 * acc:.2f}%" if acc is not None else ""
            loss = info.get("loss")
            loss_s = f"  loss {loss:.4f}" if loss is not None else ""
            self._print(f"epoch {info['epoch']}/{self.epochs}  step {info['step']}{loss_s}{acc_s}  {dt:.1f} s")
            self._draw()
        elif kind == "member":
            self._member(int(info["rank"]), info["event"])
            self._draw()
        elif kind == "notice":
            self.notice = info["text"]
            self._print(f"note: {info['text']}")
            self._draw()
        elif kind == "resume":
            self._print(f"resuming from {info['path']} (epoch {info['epoch']}, step {info['step']})")
        elif kind == "end":
            self._clear()
            acc = info.get("final_test_accuracy")
            self._print(f"done: {info['steps']} steps, {info['samples_this_run']:,} samples in {info['wall_s']:.1f} s "
                        f"= {info['samples_per_s']:,.0f} samples/s; master CPU {info['master_cpu_s']:.1f} s "
                        f"({100 * (info['master_cpu_fraction'] or 0):.0f}% of wall)")
            if acc is not None:
                self._print(f"final test accuracy: {100 * acc:.2f}%")
