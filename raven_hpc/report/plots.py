"""``raven-hpc report RUN_DIR --plots``: PNG figures of a run and one
self-contained ``report.html``.

Each ``draw_*`` function draws what :mod:`.plotdata` computed (the tests
compare the artists with the ledger and ``metrics.jsonl``) onto a
:class:`matplotlib.figure.Figure` rendered by the Agg canvas: no pyplot, no
display, no global state.  Bars of many copies are a few
:class:`~matplotlib.collections.PolyCollection` (one per fate), not one
artist per copy, and a long ledger's timeline is binned
(:func:`.plotdata.timeline_bars`).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..errors import RavenError
from .plotdata import FATES, MEMBER_KINDS, PlotData, collect, timeline_bars

__all__ = ["FATE_COLORS", "MARKS", "FIGURES", "draw_curves", "draw_optimizer", "draw_throughput", "draw_timeline",
           "draw_ranks", "render_png", "write_plots"]

FATE_COLORS = {"accepted": "#2ca02c", "duplicate": "#9ecae1", "backup": "#1f77b4", "probe": "#9467bd",
               "audit": "#bcbd22", "late": "#ff7f0e", "rejected": "#d62728", "lost": "#222222",
               "skipped": "#c7c7c7"}
#: how the events are marked: kind -> (colour, line style, label)
MARKS = {"resume": ("#2ca02c", "--", "resume / new run"), "rollback": ("#d62728", "-", "rollback"),
         "exclude": ("#ff7f0e", ":", "exclusion"), "drain": ("#9467bd", ":", "drain"),
         "lost": ("#222222", ":", "rank lost"), "readmit": ("#17becf", ":", "readmission"),
         "undrain": ("#17becf", "-.", "undrain")}
#: the figures, in the order the page shows them: file stem -> (title, caption)
FIGURES = {
    "curves": ("Loss and test accuracy",
               "From metrics.jsonl: the training loss and accuracy of each logged step, the test loss and accuracy "
               "of each evaluated epoch (lines a rollback voided left out); the run clock puts resumed runs end to "
               "end (green dashes: a new run)."),
    "optimizer": ("Learning rate and gradient norm", "From metrics.jsonl: lr and grad_norm of each logged step."),
    "throughput": ("Samples per second",
                   "From metrics.jsonl (samples_per_s) and the ledger's events: resumes, rollbacks, exclusions, "
                   "drains, lost ranks and readmissions."),
    "timeline": ("Per-rank timeline of task copies",
                 "From the ledger: every copy of a task, from the time it was assigned to the time it reached its "
                 "final state, on its rank's row, coloured by its fate; triangles mark membership events."),
    "ranks": ("Per rank and host",
              "From the ledger, per rank coloured by host: the report's rows (share of accepted snippets, credits, "
              "strikes) and the distributions of compute time per sample and latency."),
}
_DPI = 100


def _figure(w: float, h: float, constrained: bool = True):
    """A figure on the Agg canvas; ``constrained``: matplotlib lays it out
    (it measures every tick label: the big figures set fixed margins,
    :func:`_margins`, instead)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=_DPI, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def _margins(fig, rows: int, cols: int, *, left: float, right: float, top: float, bottom: float,
             hgap: float = 0.0, wgap: float = 0.0) -> None:
    """Fixed margins and gaps between the axes of a ``rows`` x ``cols`` grid, in inches."""
    w, h = fig.get_size_inches()
    aw = (w - left - right - (cols - 1) * wgap) / cols
    ah = (h - top - bottom - (rows - 1) * hgap) / rows
    fig.subplots_adjust(left=left / w, right=1 - right / w, top=1 - top / h, bottom=bottom / h,
                        wspace=wgap / aw if cols > 1 else 0.2, hspace=hgap / ah if rows > 1 else 0.2)


def _nothing(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777777", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _finite(x, y):
    m = ~(np.isnan(x) | np.isnan(y))
    return x[m], y[m]


# ------------------------------------------------------------------ curves --
def draw_curves(pd: PlotData):
    """Loss (the training loss of each logged step; the test loss of each
    evaluated epoch) and test accuracy, against step and against the run
    clock."""
    fig = _figure(13, 8)
    axes = fig.subplots(2, 2)
    met = pd.metrics
    st, ep = met["steps"], met["epochs"]
    for col, (key, xlabel) in enumerate((("step", "step"), ("time", "run time (s)"))):
        ax = axes[0, col]
        x, y = _finite(st[key], st["loss"])
        if len(x):
            ax.plot(x, y, color="#1f77b4", lw=1.2, label="train loss (logged steps)")
        x, y = _finite(ep[key], ep["test_loss"])
        if len(x):
            ax.plot(x, y, "o-", color="#ff7f0e", ms=4, lw=1, label="test loss (epochs)")
        if ax.lines:
            ax.set_yscale("log" if _positive(st["loss"]) and _spread(st["loss"]) > 20 else "linear")
            ax.legend(loc="upper right", fontsize=8)
            ax.set_ylabel("loss")
        else:
            _nothing(ax, "no loss in metrics.jsonl")
        ax.set_title(f"loss against {xlabel.split(' (')[0]}")
        ax.set_xlabel(xlabel)
        ax = axes[1, col]
        x, y = _finite(ep[key], ep["test_accuracy"])
        if len(x):
            ax.plot(x, 100 * y, "o-", color="#2ca02c", ms=4, lw=1.2, label="test accuracy (epochs)")
        x, y = _finite(st[key], st["train_accuracy"])
        if len(x):
            ax.plot(x, 100 * y, color="#aaaaaa", lw=0.8, label="train accuracy (logged steps)")
        if ax.lines:
            ax.set_ylabel("accuracy (%)")
            ax.legend(loc="lower right", fontsize=8)
        else:
            _nothing(ax, "no accuracy in metrics.jsonl")
        ax.set_title(f"test accuracy against {xlabel.split(' (')[0]}")
        ax.set_xlabel(xlabel)
        if col == 1:
            for ax in axes[:, 1]:
                _mark_runs(ax, met["run_starts"])
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    return fig


def _positive(y) -> bool:
    y = y[~np.isnan(y)]
    return len(y) > 0 and bool((y > 0).all())


def _spread(y) -> float:
    y = y[~np.isnan(y)]
    return float(y.max() / y.min()) if len(y) and y.min() > 0 else 1.0


def _mark_runs(ax, starts) -> None:
    for t in starts[1:]:
        ax.axvline(t, color=MARKS["resume"][0], ls=MARKS["resume"][1], lw=1)


def draw_optimizer(pd: PlotData):
    """The learning rate (``lr``) and gradient norm (``grad_norm``) of the logged steps."""
    fig = _figure(13, 3.8)
    axes = fig.subplots(1, 2)
    st = pd.metrics["steps"]
    for ax, key, label, why in ((axes[0], "lr", "learning rate", "no lr in metrics.jsonl"),
                                (axes[1], "grad_norm", "gradient norm (before clipping)",
                                 "no grad_norm in metrics.jsonl:\nthe norm is logged when "
                                 "[optimizer] clip_norm is set")):
        x, y = _finite(st["step"], st[key])
        if len(x):
            ax.plot(x, y, color="#9467bd" if key == "lr" else "#8c564b", lw=1.2)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        else:
            _nothing(ax, why)
        ax.set_title(f"{key} against step")
        ax.set_xlabel("step")
    return fig


# -------------------------------------------------------------- throughput --
def _marked(pd: PlotData) -> list[dict]:
    """The events drawn as vertical lines: resumes, rollbacks, membership."""
    return [e for e in pd.events if e["kind"] in ("resume", "rollback", *MEMBER_KINDS)]


def draw_throughput(pd: PlotData):
    """``samples_per_s`` of the logged steps against the run clock, with
    resumes, rollbacks and membership events (exclusion, drain, loss,
    readmission) as vertical lines."""
    fig = _figure(13, 4.5)
    ax = fig.subplots()
    st = pd.metrics["steps"]
    x, y = _finite(st["time"], st["samples_per_s"])
    if len(x):
        ax.plot(x, y, color="#1f77b4", lw=1.2, label="samples/s (logged steps)")
        ax.set_ylim(bottom=0)
    else:
        _nothing(ax, "no samples_per_s in metrics.jsonl")
    seen = set()
    events = _marked(pd)
    if pd.tap is None:     # no ledger: the metrics' own rollbacks and run starts
        events = [{"kind": "resume", "time": t} for t in pd.metrics["run_starts"][1:]]
        events += [{"kind": "rollback", "time": rb["time"]} for rb in pd.metrics["rollbacks"]]
    for e in events:
        if np.isnan(e["time"]):
            continue
        color, ls, label = MARKS[e["kind"]]
        ax.axvline(e["time"], color=color, ls=ls, lw=1.3,
                   label=None if e["kind"] in seen else label)
        seen.add(e["kind"])
        if e.get("rank") is not None:
            ax.annotate(str(e["rank"]), (e["time"], 0.98), xycoords=("data", "axes fraction"), fontsize=7,
                        color=color, ha="left", va="top", xytext=(2, 0), textcoords="offset points",
                        bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
    ax.set_xlim(left=0)
    ax.set_xlabel("run time (s)")
    ax.set_ylabel("samples/s")
    ax.set_title("throughput (numbers at the top: the rank of a membership event)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize=8, ncol=4)
    return fig


# ---------------------------------------------------------------- timeline --
def _rank_labels(pd: PlotData, rows: list[int]) -> list[str]:
    hosts = {d["rank"]: d["host"] for d in pd.report["ledger"]["ranks"]}
    return [f"{r} ({hosts.get(r) or '?'})" for r in rows]


def _tick_rows(ax, labels: list[str], suspects: set, rows: list[int], axis: str = "y") -> None:
    """Tick labels of the ranks (every k-th when there are many); suspects in red."""
    n = len(rows)
    step = max(1, int(np.ceil(n / 60)))
    pos = list(range(0, n, step))
    if axis == "y":
        ax.set_yticks(pos, [labels[i] for i in pos], fontsize=8 if n <= 40 else 6)
        ticks = ax.get_yticklabels()
    else:
        ax.set_xticks(pos, [labels[i] for i in pos], fontsize=8 if n <= 40 else 6, rotation=90 if n > 16 else 0)
        ticks = ax.get_xticklabels()
    for i, t in zip(pos, ticks):
        if rows[i] in suspects:
            t.set_color("#d62728")
            t.set_fontweight("bold")


def draw_timeline(pd: PlotData, max_bars: int | None = None):
    """One row per rank; a bar per copy from assigned to finished, coloured
    by its fate (binned when the ledger is long, see
    :func:`.plotdata.timeline_bars`); membership events marked on their
    rank's row, resumes and rollbacks as vertical lines."""
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch

    tl = pd.timeline
    rows = tl["rows"]
    kw = {} if max_bars is None else {"max_bars": max_bars}
    geo = timeline_bars(tl, **kw)
    fig = _figure(14, min(40.0, 1.7 + max(1.6, 0.28 * len(rows))), constrained=False)
    ax = fig.subplots()
    _margins(fig, 1, 1, left=1.2, right=0.3, top=0.65, bottom=1.05)
    fig.geo = geo       # what was drawn, for the tests
    if not rows or not len(tl["start"]):
        _nothing(ax, "no task copies in the ledger")
        return fig
    totals = {f: sum(c.get(f, 0) for c in tl["counts"].values()) for f in FATES}
    handles = []
    for name in ("skipped", "accepted", "duplicate", "backup", "probe", "audit", "late", "lost", "rejected"):
        if name not in geo["bars"]:
            continue
        b = geo["bars"][name]
        x, w = b["x"], b["w"]
        verts = np.empty((len(x), 4, 2))
        y0, y1 = b["y"], b["y"] + b["h"]
        verts[:, 0, 0], verts[:, 0, 1] = x, y0
        verts[:, 1, 0], verts[:, 1, 1] = x, y1
        verts[:, 2, 0], verts[:, 2, 1] = x + w, y1
        verts[:, 3, 0], verts[:, 3, 1] = x + w, y0
        pc = PolyCollection(verts, facecolors=FATE_COLORS[name], edgecolors=FATE_COLORS[name], linewidths=0.3,
                            label=name)
        pc.fate = name
        ax.add_collection(pc)
        handles.append(Patch(color=FATE_COLORS[name], label=f"{name} ({totals[name]:,})"))
    t0, t1 = geo["span"]
    index = {r: i for i, r in enumerate(rows)}
    for e in pd.events:
        if e["kind"] in ("resume", "rollback"):
            color, ls, _ = MARKS[e["kind"]]
            ax.axvline(e["time"], color=color, ls=ls, lw=1)
        elif e["kind"] in MEMBER_KINDS and e["rank"] in index:
            color = MARKS[e["kind"]][0]
            ax.plot([e["time"]], [index[e["rank"]]], marker="v", color=color, ms=8, mec="white", mew=0.5)
    for kind in ("resume", "rollback", *MEMBER_KINDS):
        if any(e["kind"] == kind for e in pd.events):
            color, ls, label = MARKS[kind]
            handles.append(Patch(facecolor="white", edgecolor=color, ls=ls, label=label))
    ax.set_xlim(t0 - 0.01 * (t1 - t0), t1 + 0.01 * (t1 - t0) + 1e-9)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    suspects = {s["rank"] for s in pd.report["ledger"]["suspects"]}
    _tick_rows(ax, _rank_labels(pd, rows), suspects, rows)
    n = sum(totals.values())
    how = (f"{n:,} copies, one bar each" if geo["mode"] == "exact" else
           f"{n:,} copies in {geo['bins']:,} time bins per rank; a bin shows rejected, lost, late or audit "
           "when it holds one (in that order), else its most frequent fate")
    ax.set_title(f"task copies by rank, assigned to finished; suspects in red\n{how}", fontsize=11)
    ax.set_xlabel("run time (s)")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.005), ncol=max(1, (len(handles) + 1) // 2),
               fontsize=8, frameon=False)
    return fig


# ------------------------------------------------------------------- ranks --
def _host_colors(hosts: list[str]) -> dict:
    from matplotlib import colormaps

    names = list(dict.fromkeys(hosts))
    cmap = colormaps["tab20" if len(names) > 10 else "tab10"]
    return {h: cmap(i % cmap.N) for i, h in enumerate(names)}


def _boxes(ax, stats: dict, ranks: list[int], color: str) -> None:
    """Box plots from :func:`.plotdata.box_stats` (25-75% box, 5-95% whiskers,
    the median), as three artists whatever the number of ranks."""
    pos = np.array([i for i, r in enumerate(ranks) if r in stats], dtype=float)
    if not len(pos):
        _nothing(ax, "no values")
        return
    st = [stats[r] for r in ranks if r in stats]
    get = lambda k: np.array([x[k] for x in st])  # noqa: E731
    ax.vlines(pos, get("whislo"), get("whishi"), color="black", lw=0.8)
    boxes = ax.bar(pos, get("q3") - get("q1"), bottom=get("q1"), width=0.6, color=color, alpha=0.6,
                   edgecolor="black", lw=0.6)
    for b in boxes:            # a box is no baseline: leave the axis its margins
        b.sticky_edges.y.clear()
    ax.hlines(get("med"), pos - 0.3, pos + 0.3, color="black", lw=1.2)


def draw_ranks(pd: PlotData):
    """Per rank (coloured by host): share of the accepted snippets,
    fastest-three credits, compute ms per sample and latency (boxes: 25-75%,
    whiskers 5-95%), strikes (and those audits cleared); per host: the share
    of accepted snippets."""
    from matplotlib.patches import Patch

    rk = pd.ranks
    ranks = rk["ranks"]
    n = len(ranks)
    fig = _figure(min(40.0, max(13.0, 0.22 * n + 4)), 12, constrained=False)
    axes = fig.subplots(3, 2)
    _margins(fig, 3, 2, left=0.8, right=0.3, top=1.0, bottom=1.1, hgap=1.0, wgap=0.9)
    if not n:
        for ax in axes.flat:
            _nothing(ax, "no ranks in the ledger")
        return fig
    colors = _host_colors(rk["host"])
    bar_colors = [colors[h] for h in rk["host"]]
    x = np.arange(n)
    labels = [str(r) for r in ranks]
    suspects = {r for r, s in zip(ranks, rk["suspect"]) if s}
    ax = axes[0, 0]
    ax.bar(x, 100 * np.array(rk["share"]), color=bar_colors)
    ax.set_ylabel("% of accepted snippets")
    ax.set_title("share of the accepted snippets")
    ax = axes[0, 1]
    ax.bar(x, rk["credited"], color=bar_colors)
    ax.set_ylabel("copies credited")
    ax.set_title("fastest-three credits")
    ax = axes[1, 0]
    _boxes(ax, rk["compute_ms"], ranks, "#1f77b4")
    ax.set_ylabel("ms per sample")
    ax.set_title("compute time per sample (reported by the worker)")
    ax = axes[1, 1]
    _boxes(ax, rk["latency_s"], ranks, "#ff7f0e")
    lat = rk["latency_s"].values()
    if lat and min(s["whislo"] for s in lat) > 0 and max(s["whishi"] for s in lat) > 30 * min(s["whislo"] for s in lat):
        ax.set_yscale("log")
    ax.set_ylabel("seconds")
    ax.set_title("latency, assigned to finished (returned copies)")
    ax = axes[2, 0]
    ax.bar(x, rk["strikes"], color="#d62728", label="strikes")
    ax.bar(x, rk["strikes_cleared"], bottom=rk["strikes"], color="#d62728", alpha=0.3, hatch="//",
           label="cleared by audits")
    ax.set_ylabel("strikes")
    ax.set_title("strikes")
    if any(rk["strikes"]) or any(rk["strikes_cleared"]):
        ax.legend(fontsize=8)
        ax.yaxis.get_major_locator().set_params(integer=True)
    else:
        ax.set_ylim(0, 1)
        ax.set_yticks([0, 1])
        ax.text(0.5, 0.5, "no strikes", ha="center", va="center", transform=ax.transAxes, color="#777777")
    for ax in (axes[0, 0], axes[0, 1], axes[1, 0], axes[1, 1], axes[2, 0]):
        ax.set_xlim(-0.7, n - 0.3)
        _tick_rows(ax, labels, suspects, ranks, axis="x")
        ax.set_xlabel("rank (suspects in red)")
        ax.grid(axis="y", alpha=0.3)
    ax = axes[2, 1]
    hosts = rk["hosts"]
    names = list(hosts)
    ax.bar(np.arange(len(names)), [100 * hosts[h]["share"] for h in names], color=[colors[h] for h in names])
    for i, h in enumerate(names):
        ax.annotate(f"{len(hosts[h]['ranks'])} rank{'s' if len(hosts[h]['ranks']) != 1 else ''}",
                    (i, 100 * hosts[h]["share"]), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(np.arange(len(names)), names, rotation=90 if len(names) > 8 else 0, fontsize=8)
    ax.set_ylabel("% of accepted snippets")
    ax.set_title("share of the accepted snippets by host")
    ax.grid(axis="y", alpha=0.3)
    if 1 < len(colors) <= 20:
        fig.legend(handles=[Patch(color=c, label=h) for h, c in colors.items()], loc="upper center",
                   ncol=min(len(colors), 10), fontsize=8, frameon=False, title="hosts")
    return fig


# ------------------------------------------------------------------ output --
def render_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def write_plots(run_dir, out=None, pd: PlotData | None = None) -> dict:
    """Draw the run's figures into ``out`` (default ``RUN_DIR/report``) as
    PNGs and write ``report.html`` beside them (the PNGs embedded).  Returns
    ``report`` (:func:`.ledger.run_report`'s dict), ``data`` (the
    :class:`.plotdata.PlotData`), ``files`` (the PNG paths) and ``html``."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise RavenError(f"report --plots needs matplotlib ({exc}): pip install matplotlib") from exc
    from .html import render_html

    pd = collect(run_dir) if pd is None else pd
    out = Path(run_dir) / "report" if out is None else Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RavenError(f"cannot write the plots to {out}: {exc}") from exc
    draw = {"curves": draw_curves, "optimizer": draw_optimizer, "throughput": draw_throughput}
    if pd.timeline is not None:
        draw["timeline"] = draw_timeline
    if pd.ranks is not None:
        draw["ranks"] = draw_ranks
    figures = []
    files = []
    for name, fn in draw.items():
        png = render_png(fn(pd))
        figures.append((*FIGURES[name], png))
        path = out / f"{name}.png"
        _write(path, png)
        files.append(str(path))
    html = out / "report.html"
    _write(html, render_html(pd, figures).encode("utf-8"))
    return {"report": pd.report, "data": pd, "files": files, "html": str(html)}


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        raise RavenError(f"cannot write {path}: {exc}") from exc
