#!/usr/bin/env bash
# N workers on N hosts with MultiWorkerMirroredStrategy. Run this same script on every host:
#   HOSTS="10.0.0.1,10.0.0.2" INDEX=0 ./examples/multi_worker.sh    # on the first host (the chief)
#   HOSTS="10.0.0.1,10.0.0.2" INDEX=1 ./examples/multi_worker.sh    # on the second host
# A host may carry its own port (HOSTS="10.0.0.1:2222,10.0.0.2:2222"); else PORT is used.
# Assumes: the same pretrainer version and the same collected store at the same path on every
# host (a shared filesystem, or `pretrainer collect` run on each), PORT open between the hosts,
# and a shared runs/ directory if workers should resume from the chief's checkpoints.
# Worker 0 is the chief: only it writes the run directory. trainer.batch_size is the global
# batch, split across all workers. Keras 3's fit cannot run here (keras-team/keras#20585), so
# pretrainer uses its own distributed loop for multi-worker runs.
# DRY_RUN=1 prints TF_CONFIG and the command instead of running it.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${HOSTS:?comma-separated host list}" "${INDEX:?index of this host in HOSTS}"
PRETRAINER=${PRETRAINER:-$([ -x .venv/bin/pretrainer ] && echo .venv/bin/pretrainer || echo pretrainer)}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
PORT=${PORT:-12345}
EXP=${EXP:-fashion_ae}
run() { if [ "${DRY_RUN:-0}" = 1 ]; then echo "$*"; else "$@"; fi; }
workers=$("$PYTHON" -c 'import json, sys; print(json.dumps([h if ":" in h else h + ":" + sys.argv[2] for h in sys.argv[1].split(",")]))' "$HOSTS" "$PORT")
export TF_CONFIG="{\"cluster\": {\"worker\": $workers}, \"task\": {\"type\": \"worker\", \"index\": $INDEX}}"
echo "TF_CONFIG=$TF_CONFIG"
run "$PRETRAINER" pretrain --config "$EXP" trainer.strategy=multi_worker "$@"
