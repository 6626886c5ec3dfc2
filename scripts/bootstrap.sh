#!/usr/bin/env bash
# Create (or reuse) ./.venv with raven-hpc, the MPICH wheel and test tools.
# Sourced by data/demo.sh, tests/run.sh and .ci/run; safe to run again.
#   RAVEN_VENV      venv folder (default: <repo>/.venv)
#   RAVEN_EXTRAS    pip extras to install (default: mpich,test)
#   RAVEN_PYTHON    interpreter to create the venv with (default: python3)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${RAVEN_VENV:-$repo/.venv}"
extras="${RAVEN_EXTRAS:-mpich,test}"
py="${RAVEN_PYTHON:-python3}"
stamp="$venv/.raven-stamp"
want="$(cat "$repo/setup.cfg" "$repo/pyproject.toml" | sha1sum | cut -c1-12)-$extras"
if [ ! -x "$venv/bin/python" ]; then
  echo "[bootstrap] creating $venv"
  "$py" -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[bootstrap] installing raven-hpc[$extras] into $venv (first time: under a minute)"
  log="$venv/install.log"
  if ! { "$venv/bin/python" -m pip install --upgrade pip && "$venv/bin/python" -m pip install -e "$repo[$extras]"; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "[bootstrap] install failed; full log: $log" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"

# raven_mpiexec ARGS...: mpiexec with the flags this MPI needs on a small box
# (Open MPI: oversubscribe, run as root, shared-memory transport).
raven_mpiexec() {
  if mpiexec --version 2>&1 | grep -qi "open mpi\|open-mpi\|openrte"; then
    local extra=(--oversubscribe --bind-to none)
    [ "$(id -u)" = 0 ] && extra+=(--allow-run-as-root)
    OMPI_MCA_pml="${OMPI_MCA_pml:-ob1}" OMPI_MCA_btl="${OMPI_MCA_btl:-self,sm}" \
      mpiexec "${extra[@]}" "$@"
  else
    mpiexec "$@"
  fi
}
