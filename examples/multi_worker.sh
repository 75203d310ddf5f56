#!/usr/bin/env bash
# N workers on N hosts with MultiWorkerMirroredStrategy. Run this same script on every host:
#   HOSTS="10.0.0.1,10.0.0.2" INDEX=0 ./multi_worker.sh    # on the first host (the chief)
#   HOSTS="10.0.0.1,10.0.0.2" INDEX=1 ./multi_worker.sh    # on the second host
# Assumes: the same pretrainer version and the same collected store at the same path on every
# host (a shared filesystem, or `pretrainer collect` run on each), PORT open between the hosts,
# and a shared runs/ directory if workers should resume from the chief's checkpoints.
# Worker 0 is the chief: only it writes the run directory. trainer.batch_size is the global
# batch, split across all workers. Keras 3's fit cannot run here (keras-team/keras#20585), so
# pretrainer uses its own distributed loop for multi-worker runs.
set -euo pipefail
: "${HOSTS:?comma-separated host list}" "${INDEX:?index of this host in HOSTS}"
PORT=${PORT:-12345}
EXP=${EXP:-fashion_ae}
workers=$(python -c 'import json, sys; print(json.dumps([h + ":" + sys.argv[2] for h in sys.argv[1].split(",")]))' "$HOSTS" "$PORT")
export TF_CONFIG="{\"cluster\": {\"worker\": $workers}, \"task\": {\"type\": \"worker\", \"index\": $INDEX}}"
echo "TF_CONFIG=$TF_CONFIG"
pretrainer pretrain --config "$EXP" trainer.strategy=multi_worker "$@"
