"""``report.html``: one self-contained page (inline CSS, the figures as
base64 ``data:`` URIs, no script, nothing fetched), so it opens offline and
travels as one file."""
from __future__ import annotations

import base64
import html
import time

from .plotdata import PlotData

__all__ = ["render_html", "data_uri"]

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1400px;
       color: #222; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd; }
.status { display: inline-block; padding: 2px 10px; border-radius: 4px; color: white; font-weight: bold; }
.OK { background: #2ca02c; } .INCOMPLETE { background: #ff7f0e; } .FAILED { background: #d62728; }
.NONE { background: #888; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; vertical-align: top; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
tr.suspect td { background: #fff0f0; }
figure { margin: 12px 0 24px 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; }
.muted { color: #666; font-size: 13px; } ul { margin: 4px 0; }
"""

def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _e(x) -> str:
    return html.escape("" if x is None else str(x))


def _num(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else _e(v)


def _summary(rep: dict) -> list[str]:
    s = rep["summary"]
    if not s:
        return ['<p class="muted">no summary.json (the run has not finished)</p>']
    keys = ("final_test_accuracy", "epochs", "steps", "samples_per_s", "ranks", "workers", "wall_s",
            "master_cpu_s", "master_cpu_fraction")
    cells = "".join(f"<tr><th class=l>{_e(k)}</th><td>{_num(s.get(k), 4)}</td></tr>" for k in keys if k in s)
    return [f"<table>{cells}</table>"]


def _integrity(rep: dict) -> list[str]:
    led = rep["ledger"]
    if led is None:
        return ['<p><span class="status NONE">no ledger</span> the run directory holds no ledger.jsonl</p>']
    integ, tot = led["integrity"], led["totals"]
    status = integ["status"]
    first = f" &mdash; {_e(integ['problems'][0])}" if integ["problems"] and status != "OK" else ""
    out = [f'<p>integrity: <span class="status {status}">{status}</span>{first}</p>',
           f'<p class="muted">{tot["steps"]:,} steps, {tot["tasks"]:,} grad tasks applied; {tot["copies"]:,} copies: '
           + ", ".join(f"{tot[k]:,} {k}" for k in ("accepted", "duplicate", "late", "rejected", "lost", "skipped"))
           + f"; {tot['backups']:,} backups, {tot['credited']:,} credited, {tot['strikes']:,} strikes, "
           f"{led['audits']['count']:,} audits ({led['audits']['failed']:,} failed), "
           f"{len(led['rollbacks']):,} rollbacks</p>"]
    more = integ["problems"][1:] if status != "OK" else []
    notes = list(led["warnings"]) + list(integ["notes"])
    if more or notes:
        out.append("<ul>" + "".join(f"<li>problem: {_e(p)}</li>" for p in more)
                   + "".join(f'<li class="muted">note: {_e(n)}</li>' for n in notes) + "</ul>")
    return out


def _suspects(rep: dict) -> list[str]:
    led = rep["ledger"]
    if led is None:
        return []
    out = ["<h2>Suspect nodes</h2>"]
    if not led["suspects"]:
        return out + ["<p>none</p>"]
    rows = "".join(f"<tr class=suspect><td>{s['rank']}</td><td class=l>{_e(s['host'] or '?')}</td>"
                   f"<td class=l>{_e(s['status'])}</td><td>{s['strikes']}</td>"
                   f"<td class=l>{_e('; '.join(s['reasons']))}</td></tr>" for s in led["suspects"])
    return out + ["<table><tr><th>rank</th><th class=l>host</th><th class=l>status</th><th>strikes</th>"
                  f"<th class=l>reasons</th></tr>{rows}</table>"]


def _ranks(rep: dict) -> list[str]:
    led = rep["ledger"]
    if led is None or not led["ranks"]:
        return []
    suspects = {s["rank"] for s in led["suspects"]}
    cols = ("copies", "returned", "accepted", "snippets_accepted", "credited", "duplicates", "late", "rejected",
            "lost", "backups", "strikes")
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = []
    for d in led["ranks"]:
        lat = d["median_latency_s"]
        rel = d["relative_compute"]
        cells = "".join(f"<td>{d[c]:,}</td>" for c in cols)
        body.append(f"<tr{' class=suspect' if d['rank'] in suspects else ''}><td>{d['rank']}</td>"
                    f"<td class=l>{_e(','.join(d['hosts']) or '?')}</td><td class=l>{_e(d['status'])}</td>{cells}"
                    f"<td>{_num(None if lat is None else 1000 * lat)}</td><td>{_num(d['compute_ms_per_sample'])}</td>"
                    f"<td>{'-' if rel is None else f'{rel:.2f}x'}</td></tr>")
    return ["<h2>Ranks</h2>", "<table><tr><th>rank</th><th class=l>host</th><th class=l>status</th>"
            f"{head}<th>latency_ms</th><th>ms/sample</th><th>speed</th></tr>{''.join(body)}</table>",
            '<p class="muted">latency_ms, ms/sample: medians; speed: ms/sample over the median of the ranks '
            "(&gt; 1 is slower); strikes: those not cleared by audits</p>"]


def render_html(pd: PlotData, figures: list[tuple[str, str, bytes]]) -> str:
    """The page: the summary, the integrity verdict, the suspect nodes (the
    report's own reasons), the ``figures`` ((title, caption, PNG), in that
    order) and the rank table."""
    rep = pd.report
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>raven-hpc report: {_e(rep['run_dir'])}</title><style>{_CSS}</style></head><body>",
             f"<h1>raven-hpc report: {_e(rep['run_dir'])}</h1>",
             f'<p class="muted">written {time.strftime("%Y-%m-%d %H:%M:%S %Z")} by raven-hpc report --plots</p>']
    parts += _integrity(rep)
    parts += _summary(rep)
    parts += _suspects(rep)
    for title, caption, png in figures:
        parts.append(f"<h2>{_e(title)}</h2><figure><img alt=\"{_e(title)}\" src=\"{data_uri(png)}\">"
                     f"<figcaption>{_e(caption)}</figcaption></figure>")
    parts += _ranks(rep)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
