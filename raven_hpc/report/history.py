"""The metrics history: RUN_DIR/metrics.jsonl."""
from __future__ import annotations

import json
from pathlib import Path


# ------------------------------------------------------------------ history --
def read_history(run_dir, steps: bool = False) -> dict:
    """``summary.json`` (without its history), the step and epoch records
    of ``metrics.jsonl`` and its rollbacks.  A metrics line
    ``{"event": "rollback", "step": S, "to_step": K}`` voids the earlier step
    and epoch lines with step > K (training went back to K and redid them):
    ``steps`` (only when ``steps`` is true; else empty) and ``epochs`` hold
    only the lines that stand, in file order.  A metrics line that is not
    JSON (a killed run's last line) is skipped and named in ``warnings``."""
    run = Path(run_dir)
    out: dict = {"summary": {}, "steps": [], "epochs": [], "rollbacks": [], "warnings": []}
    sp = run / "summary.json"
    if sp.exists():
        try:
            summary = json.loads(sp.read_text())
        except (OSError, ValueError) as exc:
            out["warnings"].append(f"{sp}: unreadable ({exc}); skipped")
        else:
            if isinstance(summary, dict):
                out["summary"] = {k: v for k, v in summary.items() if k != "history"}
    mp = run / "metrics.jsonl"
    if mp.exists():
        epochs, kept_steps = out["epochs"], out["steps"]
        with mp.open("r", encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    out["warnings"].append(f"{mp.name} line {n}: not JSON (truncated?); skipped")
                    continue
                if not isinstance(rec, dict):
                    continue
                event = rec.get("event")
                if event == "step":
                    if steps:
                        kept_steps.append(rec)
                elif event == "epoch":
                    epochs.append(rec)
                elif event == "rollback":
                    k = rec.get("to_step")
                    if type(k) is not int:
                        out["warnings"].append(f"{mp.name} line {n}: rollback without an integer to_step; skipped")
                        continue
                    out["rollbacks"].append(rec)
                    for kept in (epochs, kept_steps):
                        kept[:] = [e for e in kept if not (type(e.get("step")) is int and e["step"] > k)]
    return out
