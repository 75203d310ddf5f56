#!/usr/bin/env bash
# One server, several GPUs: MirroredStrategy over all of them (trainer.strategy=auto picks it
# when TensorFlow sees more than one GPU). Assumes: pretrainer installed (make install), CUDA
# drivers that TensorFlow 2.21 supports, the data already collected or downloadable.
# trainer.batch_size is the GLOBAL batch: scale it with the number of GPUs.
set -euo pipefail
EXP=${EXP:-cifar_ae}
NGPU=$(python -c "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))")
echo "GPUs: $NGPU"
pretrainer doctor
pretrainer pipeline --config "$EXP" \
  trainer.strategy=mirrored \
  trainer.batch_size=$((128 * NGPU)) \
  trainer.precision=mixed_bfloat16 "$@"
