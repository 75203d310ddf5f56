#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): devices, what precision auto picks and its speed
# against float32, input pipeline vs training step, XLA on/off. Under 10 minutes on one GPU;
# on a CPU pass --quick. Writes benchmarks/gpu_check.json; nothing else is touched.
#   make install-gpu && benchmarks/gpu_check.sh          (a GPU machine)
#   benchmarks/gpu_check.sh --quick                      (anywhere: checks it runs)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "(nvidia-smi: none found)"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
