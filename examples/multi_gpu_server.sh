#!/usr/bin/env bash
# One server, several GPUs: MirroredStrategy over all of them.
#   ./examples/multi_gpu_server.sh                 # EXP=cifar_ae by default
#   EXP=fashion_ae ./examples/multi_gpu_server.sh trainer.epochs=5
# Assumes: `make install-gpu` (pretrainer[gpu]: TensorFlow with its CUDA libraries) in .venv,
# or PRETRAINER/PYTHON pointing at another install; an NVIDIA driver TensorFlow 2.21 supports.
# trainer.batch_size and finetune.batch_size are GLOBAL batches: both scale with the GPUs,
# so each replica keeps 128 (pretraining) and 32 (finetuning) examples per step.
# trainer.precision=auto (the measured default; `doctor` prints what the GPU supports: try
# mixed_bfloat16 on A100/H100, mixed_float16 on V100/T4, and keep it if it measures faster).
# DRY_RUN=1 prints the commands instead of running them; NGPU=N overrides the GPU count.
set -euo pipefail
cd "$(dirname "$0")/.."
PRETRAINER=${PRETRAINER:-$([ -x .venv/bin/pretrainer ] && echo .venv/bin/pretrainer || echo pretrainer)}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
EXP=${EXP:-cifar_ae}
run() { if [ "${DRY_RUN:-0}" = 1 ]; then echo "$*"; else "$@"; fi; }
if [ -z "${NGPU:-}" ]; then
  NGPU=$(TF_CPP_MIN_LOG_LEVEL=3 "$PYTHON" -c \
    "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))" 2>/dev/null)
fi
if [ "$NGPU" -lt 1 ]; then
  echo "TensorFlow sees no GPU. Run '$PRETRAINER doctor' (it says why), e.g. install" \
       "pretrainer[gpu] with 'make install-gpu'." >&2
  exit 2
fi
echo "GPUs: $NGPU"
run "$PRETRAINER" doctor
run "$PRETRAINER" pipeline --config "$EXP" \
  trainer.strategy=auto \
  trainer.batch_size=$((128 * NGPU)) \
  finetune.batch_size=$((32 * NGPU)) \
  trainer.precision=auto "$@"
