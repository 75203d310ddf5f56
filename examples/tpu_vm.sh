#!/usr/bin/env bash
# On a Cloud TPU VM: TPUStrategy over the local TPU chips.
# Assumes: a TPU VM image whose TensorFlow build supports TPUs (the PyPI CPU wheel does not),
# pretrainer installed into that environment, the data collected on local disk or gs://.
# Off a TPU VM, give the TPU's name or address: trainer.tpu=my-tpu or trainer.tpu=grpc://IP:8470;
# an unreachable address fails after trainer.connect_timeout seconds with a one-line error.
set -euo pipefail
EXP=${EXP:-cifar_ae}
pretrainer doctor
pretrainer pipeline --config "$EXP" trainer.strategy=tpu trainer.tpu="${TPU:-local}" \
  trainer.batch_size=1024 trainer.precision=mixed_bfloat16 "$@"
