#!/usr/bin/env bash
# On a Cloud TPU VM: TPUStrategy over the local TPU chips.
#   TPU=local ./examples/tpu_vm.sh trainer.epochs=5
# Assumes: `make install-tpu` (tensorflow-tpu, and pretrainer installed without pulling the
# CPU tensorflow wheel over it), the data collected on local disk or gs://.
# Off a TPU VM, give the TPU's name or address: TPU=my-tpu or TPU=grpc://IP:8470; an
# unreachable address fails after trainer.connect_timeout seconds with a one-line error.
# Batches are of one size on a TPU (static shapes): the last partial batch is dropped.
# DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."
PRETRAINER=${PRETRAINER:-$([ -x .venv/bin/pretrainer ] && echo .venv/bin/pretrainer || echo pretrainer)}
EXP=${EXP:-cifar_ae}
TPU=${TPU:-local}
run() { if [ "${DRY_RUN:-0}" = 1 ]; then echo "$*"; else "$@"; fi; }
run "$PRETRAINER" doctor trainer.strategy=tpu trainer.tpu="$TPU"
run "$PRETRAINER" pipeline --config "$EXP" trainer.strategy=tpu trainer.tpu="$TPU" \
  trainer.batch_size=1024 finetune.batch_size=256 trainer.precision=mixed_bfloat16 "$@"
