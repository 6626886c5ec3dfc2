"""The rooms and who may import whom (docs/architecture.md), checked on the
source: every import of every module, at any depth (function-level ones
too), resolved to raven_hpc modules."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"raven_hpc": ROOT / "raven_hpc", "raven_hpc.kernels": ROOT / "kernels"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in PACKAGES.items():
        for f in folder.rglob("*.py"):
            rel = f.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg, *parts])
            if pkg == "raven_hpc" and parts[:1] == ["kernels"]:
                continue
            out[name] = f
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The raven_hpc module ``name`` refers to (a module, or the package
    holding a name imported from it)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(mod: str) -> set[str]:
    path = MODULES[mod]
    is_pkg = path.name == "__init__.py"
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = base[: len(base) - node.level + 1]
                prefix = ".".join(stem + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
        for n in names:
            r = _resolve(n)
            if r and r != mod and not mod.startswith(r + "."):   # a package's own __init__ is not a dependency
                out.add(r)
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def _third_party(mod: str) -> set[str]:
    tree = ast.parse(MODULES[mod].read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read():
    assert "raven_hpc.protocol.master" in GRAPH and "raven_hpc.protocol.scheduler" in GRAPH["raven_hpc.protocol.master"]
    assert "raven_hpc.kernels.reduce" in GRAPH["raven_hpc.protocol.master"]


def test_no_import_cycles():
    cycles = _cycles()
    assert not cycles, cycles


@pytest.mark.parametrize("room", ["raven_hpc.engine", "raven_hpc.kernels", "raven_hpc.data",
                                  "raven_hpc.protocol.scheduler", "raven_hpc.protocol.step", "raven_hpc.config"])
def test_rooms_that_run_without_mpi_never_import_it(room):
    mods = [m for m in MODULES if m == room or m.startswith(room + ".")]
    assert mods
    assert not [m for m in mods if "mpi4py" in _third_party(m)]


def test_arrows_point_down():
    """engine, kernels and data never import the protocol or the CLI side;
    config imports only errors; the scheduler and the step arithmetic are
    pure (no files, no clock, no MPI)."""
    upper = ("raven_hpc.protocol", "raven_hpc.train", "raven_hpc.cli", "raven_hpc.report", "raven_hpc.checks")
    for room in ("raven_hpc.engine", "raven_hpc.kernels", "raven_hpc.data"):
        for m in (m for m in MODULES if m.startswith(room)):
            assert not [d for d in GRAPH[m] if d.startswith(upper)], (m, GRAPH[m])
    assert GRAPH["raven_hpc.config"] <= {"raven_hpc.errors"}, GRAPH["raven_hpc.config"]
    for m in (m for m in MODULES if m.startswith("raven_hpc.protocol.scheduler") or m == "raven_hpc.protocol.step"):
        assert not _third_party(m) & {"mpi4py", "h5py", "time", "os"}, (m, _third_party(m))
        assert not [d for d in GRAPH[m] if d.startswith(("raven_hpc.protocol.master", "raven_hpc.train",
                                                          "raven_hpc.report", "raven_hpc.cli"))]
