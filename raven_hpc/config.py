"""Run configuration: one TOML file, validated against a documented schema.

Precedence, highest first: command line (``--set section.key=value`` and the
dedicated flags) > the TOML file > environment (``RAVEN_SECTION__KEY=value``)
> the defaults below.  Unknown sections and keys are rejected with the list of
valid ones; every value is type-checked.  The ``[model]`` and ``[optimizer]``
tables are checked in depth by the engine (see :func:`raven_hpc.checks.validate`).

Paths (``data.path``, ``run.dir``, ``poc.drain_file``): a relative one is
relative to the config file's folder, wherever the value came from;
``{name}`` is the config file's stem and ``{run}`` the run directory.

This module imports neither numpy nor MPI, so the CLI can read the thread
settings before numpy loads its BLAS.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

try:  # Python >= 3.11
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - old Pythons
    import tomli as _toml  # type: ignore[no-redef]

from .errors import ConfigError

__all__ = [
    "SCHEMA",
    "defaults",
    "load_config",
    "read_toml",
    "merge_overrides",
    "parse_override",
    "to_toml",
    "describe_schema",
]


@dataclass(frozen=True)
class Key:
    """One configuration key: its type(s), default and meaning."""

    types: tuple
    default: Any
    help: str
    choices: tuple | None = None
    minimum: float | None = None

    def check(self, section: str, name: str, value: Any) -> Any:
        where = f"[{section}] {name}"
        if value is None and None in self.types:
            return None
        # bool is an int subclass in Python: keep them apart.
        ok = any(
            (t is float and isinstance(value, (int, float)) and not isinstance(value, bool))
            or (t is int and isinstance(value, int) and not isinstance(value, bool))
            or (t is bool and isinstance(value, bool))
            or (t is str and isinstance(value, str))
            or (t is list and isinstance(value, list))
            or (t is dict and isinstance(value, dict))
            for t in self.types
            if t is not None
        )
        if not ok:
            want = " or ".join("none" if t is None else t.__name__ for t in self.types)
            raise ConfigError(f"{where} must be {want}, got {value!r} ({type(value).__name__})")
        if float in self.types and isinstance(value, int) and not isinstance(value, bool) and int not in self.types:
            value = float(value)
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{where} = {value!r} is not one of {', '.join(map(repr, self.choices))}")
        if self.minimum is not None and isinstance(value, (int, float)) and value < self.minimum:
            raise ConfigError(f"{where} = {value!r} must be >= {self.minimum}")
        return value


# Sections whose content is validated elsewhere (the engine) are "open":
# only the keys listed are defaulted, others pass through to the engine.
SCHEMA: dict[str, dict[str, Key]] = {
    "data": {
        "path": Key((str,), "", "prepared HDF5 dataset (relative paths: from the config file's folder)"),
        "train_split": Key((str,), "train", "split used for training"),
        "test_split": Key((str,), "test", "split used for evaluation (\"\": no evaluation)"),
        "cache": Key((bool,), True, "workers load their split into memory once (checksums verified once); "
                                    "ranks that read the file only"),
        "delivery": Key((str,), "read", "how workers get the data: \"read\" (each opens data.path: a filesystem "
                                        "every node reads), \"scatter\" (only rank 0 opens it and sends each "
                                        "task's snippets with the task: a worker holds only the data it "
                                        "computes), \"auto\" (scatter when some worker cannot open data.path, "
                                        "else read)", choices=("read", "scatter", "auto")),
    },
    "model": {
        "layers": Key((list,), [], "layer list, e.g. {type = \"dense\", units = 256, activation = \"relu\"}"),
        "loss": Key((str, dict), "softmax_cross_entropy",
                    "loss: a name (softmax_cross_entropy, mse, bce_with_logits, huber) or a table with options, "
                    "e.g. {name = \"softmax_cross_entropy\", label_smoothing = 0.1}"),
        "init": Key((str,), "he", "weight initialiser"),
        "seed": Key((int,), 0, "seed of the weight initialiser"),
    },
    "optimizer": {
        "name": Key((str,), "sgd", "optimizer"),
        "lr": Key((float,), 0.05, "learning rate", minimum=0.0),
    },
    "train": {
        "epochs": Key((int,), 10, "passes over the training split", minimum=1),
        "batch_size": Key((int,), 256, "samples per step (rounded to whole snippets)", minimum=1),
        "task_snippets": Key((int,), 4, "snippets per task (the unit a worker computes)", minimum=1),
        "seed": Key((int,), 0, "seed of the snippet order (epoch e uses seed + e)"),
        "max_steps": Key((int,), 0, "stop after this many steps in total (0: no limit)", minimum=0),
        "log_every": Key((int,), 50, "write a metrics line every N steps", minimum=1),
        "eval_every": Key((int,), 1, "evaluate on the test split every N epochs (0: only at the end)", minimum=0),
        "eval_task_snippets": Key((int,), 32, "snippets per evaluation task", minimum=1),
    },
    "run": {
        "dir": Key((str,), "runs/{name}", "run directory (relative: from the config file's folder); {name} is the "
                                          "config file's stem"),
        "checkpoint_every_steps": Key((int,), 0, "also checkpoint every N steps (0: at epoch ends only)", minimum=0),
        "keep_checkpoints": Key((int,), 2, "checkpoints kept in RUN_DIR/checkpoints besides checkpoint.h5 (the "
                                           "newest ones; the one a rollback may need is kept too)", minimum=1),
        "resume": Key((bool, str), False, "continue from the run directory's checkpoint.h5: true (it must exist), "
                                          "\"auto\" (when it exists; else start fresh), false (it must not)",
                        choices=(False, True, "auto")),
        "progress": Key((str,), "auto", "progress display on rank 0", choices=("auto", "bar", "lines", "none")),
    },
    "cluster": {
        "backend": Key((str,), "auto", "kernel backend of each computing rank: \"cpu\", \"cuda\" (a GPU, or an "
                                       "error) or \"auto\" (the rank's GPU when its node has one, else the CPU); "
                                       "a rank's GPU is its local rank modulo the GPUs it sees",
                       choices=("cpu", "cuda", "auto")),
        "threads": Key((int,), 1, "BLAS/Numba threads per rank", minimum=1),
        "prefetch": Key((int,), 2, "tasks outstanding per worker (hides message latency)", minimum=1),
        "max_chunk": Key((int,), 16, "most tasks of a step merged into one chunk that a worker computes as one "
                                     "batch, sized by its measured speed (1: no merging; models with batch norm "
                                     "never merge)", minimum=1),
        "poll_min_us": Key((float,), 50.0, "first sleep of an idle rank, microseconds", minimum=0.0),
        "poll_max_us": Key((float,), 1000.0, "longest sleep of an idle rank, microseconds", minimum=1.0),
        "master_computes": Key((str,), "auto", "master computes tasks itself: auto (only when alone), yes, no",
                               choices=("auto", "yes", "no")),
        "collectors": Key((str, int), "auto", "gradient collectors: \"auto\" (a star up to fan_in workers, else "
                                              "one group per node), 0 (a star), or the number of worker groups; "
                                              "a group's first rank sums its group's results and passes one sum "
                                              "up", minimum=0),
        "fan_in": Key((int,), 16, "most ranks one master or collector leads; above it \"auto\" adds collectors "
                                  "and levels", minimum=2),
        "worker_cache_mb": Key((float,), 128.0, "data.delivery = \"scatter\": the snippets a worker (or "
                                                "collector) keeps of what it was sent, in MiB (least recently "
                                                "used out; rank 0 sends again only what it no longer holds); "
                                                "0: keep nothing", minimum=0.0),
        "collector_computes": Key((bool,), False, "collectors also compute tasks of their group (on a node "
                                                 "whose collector would otherwise only sum, one more worker)"),
    },
    "poc": {
        "redundancy": Key((int,), 1, "copies of each task on distinct workers; the first acceptable one is used, "
                                     "the others are compared and credited", minimum=1),
        "quorum": Key((int,), 1, "agreeing copies needed before a task's result is applied (2: every task is "
                                 "verified before it can touch the model)", minimum=1),
        "verify": Key((float,), 0.0, "fraction of the other tasks computed twice and applied only when both agree "
                                     "(sampled verification); workers with a strike are always verified",
                      minimum=0.0),
        "audit": Key((float,), 0.0, "fraction of accepted results the master recomputes itself (trusted audit, "
                                    "chosen unpredictably); a wrong one excludes every rank that vouched for it "
                                    "and rolls training back to before its first unproven result", minimum=0.0),
        "trusted": Key((list,), [], "worker ranks the operator trusts like the master: they compute the audits "
                                    "(else the master does), and a result one of them agreed with is proven"),
        "rtol": Key((float,), 1e-3, "copies agree when their gradient fingerprints differ by less than rtol x the "
                                    "gradient norm (float32 round-off across machines is ~1e-5)", minimum=0.0),
        "screen": Key((float,), 100.0, "a result whose gradient norm per sample is this many times the running "
                                       "typical one is held and verified before use (0: off)", minimum=0.0),
        "max_strikes": Key((int,), 3, "strikes (wrong or non-finite results) before a worker is excluded",
                           minimum=1),
        "probation_steps": Key((int,), 0, "an excluded worker is readmitted after this many steps, on probation "
                                          "(every result verified); 0: excluded for the rest of the run",
                               minimum=0),
        "backup": Key((bool,), True, "give a straggling task a speculative backup copy on an idle worker"),
        "backup_factor": Key((float,), 1.5, "a copy straggles when it is out longer than this x its predicted time",
                             minimum=1.0),
        "worker_timeout_s": Key((float,), 60.0, "a worker holding work this long without any result is removed "
                                                "(hung); it may come back", minimum=0.1),
        "drain_file": Key((str,), "{run}/drain", "ranks listed here (one per line) are drained: they leave the "
                                                 "schedule; remove a rank to readmit it. {run}: the run directory; "
                                                 "relative: from the config file's folder"),
        "ledger": Key((bool,), True, "write ledger.jsonl (every copy of every task) to the run directory"),
    },
    "faults": {
        "rules": Key((list,), [], "injected faults for tests and demos, e.g. "
                                  "{rank = 2, mode = \"slow\", factor = 4.0, from_step = 10}"),
    },
}

# Sections that accept keys beyond the schema (validated by the engine).
_OPEN_SECTIONS = {"model", "optimizer"}


def defaults() -> dict:
    """The default configuration as a nested dict."""
    return {s: {k: copy.deepcopy(key.default) for k, key in keys.items()} for s, keys in SCHEMA.items()}


def describe_schema() -> str:
    """Human-readable table of every key, its default and meaning."""
    lines = []
    for section, keys in SCHEMA.items():
        lines.append(f"[{section}]")
        for name, key in keys.items():
            lines.append(f"  {name:<22} = {json.dumps(key.default):<14} # {key.help}")
    return "\n".join(lines)


def read_toml(path: str | os.PathLike) -> dict:
    """Parse a TOML file, turning every failure into one ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p} (give the path of a .toml file, e.g. data/mnist-mlp.toml)")
    try:
        with p.open("rb") as fh:
            return _toml.load(fh)
    except _toml.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc}") from exc


def _coerce_text(text: str) -> Any:
    """A value given as text (CLI or environment): TOML syntax, else a string."""
    try:
        return _toml.loads(f"v = {text}")["v"]
    except _toml.TOMLDecodeError:
        return text


def parse_override(item: str) -> tuple[str, str, Any]:
    """``"train.epochs=3"`` -> ``("train", "epochs", 3)``."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.epochs=3)")
    lhs, rhs = item.split("=", 1)
    parts = lhs.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override {item!r}: the key must be section.key (e.g. optimizer.lr=0.1)")
    return parts[0], parts[1], _coerce_text(rhs.strip())


def _env_overrides(environ: Mapping[str, str]) -> list[tuple[str, str, Any]]:
    out = []
    for name, text in environ.items():
        if not name.startswith("RAVEN_") or "__" not in name:
            continue
        section, _, key = name[len("RAVEN_"):].partition("__")
        out.append((section.lower(), key.lower(), _coerce_text(text)))
    return out


def merge_overrides(cfg: dict, overrides: list[tuple[str, str, Any]], origin: str) -> dict:
    for section, key, value in overrides:
        if section not in SCHEMA:
            raise ConfigError(f"{origin}: unknown section [{section}]; valid sections: {', '.join(SCHEMA)}")
        cfg.setdefault(section, {})[key] = value
    return cfg


def _check_sections(raw: dict, origin: str) -> dict:
    out: dict = {}
    for section, table in raw.items():
        if section not in SCHEMA:
            raise ConfigError(f"{origin}: unknown section [{section}]; valid sections: {', '.join(SCHEMA)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: [{section}] must be a table, got {table!r}")
        keys = SCHEMA[section]
        if section not in _OPEN_SECTIONS:
            unknown = sorted(set(table) - set(keys))
            if unknown:
                raise ConfigError(
                    f"{origin}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in [{section}]; "
                    f"valid keys: {', '.join(keys)}"
                )
        out[section] = dict(table)
    return out


def load_config(
    path: str | os.PathLike | None,
    overrides: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict:
    """Load, merge and type-check a configuration.

    Returns a nested dict with every key present, every path key
    (:data:`PATH_KEYS`) absolute (see :func:`_resolve_paths`), and ``meta``
    holding the config file's path and name.  Deep checks of the model and
    optimizer tables are done by :func:`raven_hpc.checks.validate` (needs numpy).
    """
    environ = os.environ if environ is None else environ
    cfg = defaults()
    raw = read_toml(path) if path is not None else {}
    origin = str(path) if path is not None else "config"
    layered: dict = {}
    merge_overrides(layered, _env_overrides(environ), "environment")
    for section, table in _check_sections(raw, origin).items():
        layered.setdefault(section, {}).update(table)
    cli = [parse_override(o) for o in (overrides or [])]
    merge_overrides(layered, cli, "command line")
    layered = _check_sections(layered, origin)
    for section, table in layered.items():
        for key, value in table.items():
            if key in SCHEMA[section]:
                cfg[section][key] = SCHEMA[section][key].check(section, key, value)
            else:
                cfg[section][key] = value
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    name = Path(path).stem if path is not None else "run"
    if not cfg["data"]["path"]:
        raise ConfigError(f"{origin}: [data] path is required (the HDF5 file made by `raven-hpc prepare`)")
    _resolve_paths(cfg, base, name, origin)
    if isinstance(cfg["cluster"]["collectors"], str) and cfg["cluster"]["collectors"] != "auto":
        raise ConfigError(f"{origin}: [cluster] collectors = {cfg['cluster']['collectors']!r} must be \"auto\", 0 "
                          "(a flat star) or the number of worker groups")
    if cfg["cluster"]["poll_max_us"] < cfg["cluster"]["poll_min_us"]:
        raise ConfigError(f"{origin}: [cluster] poll_max_us must be >= poll_min_us")
    if not cfg["model"]["layers"]:
        raise ConfigError(f"{origin}: [model] layers is empty; list the layers, e.g. "
                          "layers = [{type = \"dense\", units = 10}]")
    poc = cfg["poc"]
    if poc["verify"] > 1.0:
        raise ConfigError(f"{origin}: [poc] verify = {poc['verify']} must be a fraction in [0, 1]")
    if poc["audit"] > 1.0:
        raise ConfigError(f"{origin}: [poc] audit = {poc['audit']} must be a fraction in [0, 1]")
    bad = [r for r in poc["trusted"] if isinstance(r, bool) or not isinstance(r, int) or r < 1]
    if bad:
        raise ConfigError(f"{origin}: [poc] trusted = {poc['trusted']!r} must list worker ranks (integers >= 1; "
                          "rank 0, the master, is always trusted)")
    if poc["quorum"] > poc["redundancy"]:
        raise ConfigError(f"{origin}: [poc] quorum = {poc['quorum']} needs redundancy >= quorum "
                          f"(redundancy = {poc['redundancy']})")
    cfg["meta"] = {"config_path": str(Path(path).resolve()) if path is not None else "", "name": name}
    return cfg


#: the keys that hold a file or folder path; :func:`load_config` resolves them
#: all by one rule (see :func:`_resolve_paths`)
PATH_KEYS = (("data", "path"), ("run", "dir"), ("poc", "drain_file"))


def _resolve_paths(cfg: dict, base: Path, name: str, origin: str) -> None:
    """Make every path key absolute, in place, by one rule.

    A relative path is relative to ``base``, the config file's folder
    (the current directory when there is no file), wherever its value came
    from: the file, the environment, ``--set`` or the default.  Placeholders:
    ``{name}``, the config file's stem, in any path key; ``{run}``, the run
    directory, in every path key but ``run.dir`` itself.  ``~`` is expanded.
    The result is the same on every rank: rank 0 resolves the paths and
    hands the config to the others.  (``raven-hpc train --run-dir`` is a
    command-line path, relative to the current directory; the CLI passes it
    on as an absolute ``run.dir``.)
    """
    def resolve(section: str, key: str, run: str | None) -> str:
        text = cfg[section][key].replace("{name}", name)
        if run is not None:
            text = text.replace("{run}", run)
        elif "{run}" in text:
            raise ConfigError(f"{origin}: [{section}] {key} = {cfg[section][key]!r} cannot use {{run}} "
                              "(the run directory is what it defines)")
        p = Path(text).expanduser()
        return str(p if p.is_absolute() else (base / p).resolve())

    cfg["run"]["dir"] = resolve("run", "dir", None)
    for section, key in PATH_KEYS:
        if (section, key) != ("run", "dir") and cfg[section][key]:   # "" (no drain file) stays ""
            cfg[section][key] = resolve(section, key, cfg["run"]["dir"])


def model_spec(cfg: dict) -> dict:
    return copy.deepcopy(cfg["model"])


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if v is None:
        return '"none"'
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(cfg: dict) -> str:
    """The resolved config as TOML text (written to the run directory)."""
    out = ["# resolved configuration written by raven-hpc"]
    for section, table in cfg.items():
        if section == "meta":
            continue
        out.append(f"\n[{section}]")
        for key, value in table.items():
            if value is None:
                continue
            if key == "layers" and isinstance(value, list):
                out.append("layers = [")
                out.extend(f"  {_toml_value(x)}," for x in value)
                out.append("]")
            else:
                out.append(f"{key} = {_toml_value(value)}")
    return "\n".join(out) + "\n"
