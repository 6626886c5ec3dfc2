#!/usr/bin/env bash
# README command 1: on a fresh machine, set up ./.venv, prepare the embedded
# MNIST subset, train it with MPI (1 master + 2 workers) and print accuracy.
#   NP=5 bash data/demo.sh      # more ranks (oversubscribed on a small box)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bootstrap.sh
NP="${NP:-3}"
raven-hpc prepare mnist data/mnist-small out/mnist-small.h5 --force
rm -rf runs/demo
raven_mpiexec -n "$NP" raven-hpc train data/demo.toml --run-dir runs/demo
raven-hpc evaluate runs/demo
