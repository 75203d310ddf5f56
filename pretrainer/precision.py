"""trainer.precision=auto: one rule, used by training and by `doctor` alike.

Measured (steady-state training samples/s, mixed_bfloat16 / float32):
- Intel Xeon with AMX-BF16, 2 cores (benchmarks/precision.py --batches 64,256): seed
  CNN 1.11x (batch 64) and 1.74x (256), conv_ae classifier 1.37x and 1.03x, conv
  autoencoder 1.37-1.46x (64); end to end at 50k images the seed CNN recipe 1.42x.
- AMD EPYC with AVX512-BF16 and no AMX, 2 cores: `finetune -c cifar_cnn` on 50k
  class-folder JPEGs, 2 epochs, 1.41x (29.6 s vs 41.6 s for float32 in the same run;
  accuracy 0.59 vs 0.58).
- Not faster on those CPUs: DCGAN (0.54x), the transformer LM (1.00x). On an H200
  neither bf16 nor fp16 gained consistently for these small models, so GPUs stay
  float32. CPUs without bf16 instructions (AVX2 only) emulate bf16: float32 (AMD EPYC, AVX2 only,
  2 cores, benchmarks/precision.py: mixed_bfloat16 0.14x float32 for the seed CNN at
  batch 64, 0.21x at 256, 0.13-0.14x for SimCLR).

So `auto` is mixed_bfloat16 for convolutional image models on a CPU with bf16 units
(AMX-BF16 or AVX512-BF16) and no GPU, float32 everywhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

BF16_CPU_BACKBONES = ("seed_cnn", "conv_ae", "resnet", "mobilenet")
BF16_CPU_SLOWER_PRETEXTS = ("dcgan",)
# /proc/cpuinfo flag -> how doctor and the run's first line name it, best first
BF16_UNITS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}


def _cpuinfo(field: str) -> str:
    """The first `field` line's value in /proc/cpuinfo (Linux; "" elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    return set(_cpuinfo("flags").split())


def cpu_name() -> str:
    """The CPU's model name and core count, and its bf16 units: the line a benchmark
    figure needs beside it (CPU speed differs 2x between machines of one cloud type)."""
    import os

    name = _cpuinfo("model name") or "unknown CPU"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} core(s), {hardware()}"


def cpu_bf16_unit() -> Optional[str]:
    """'AMX-BF16' or 'AVX512-BF16' when the CPU computes bf16 natively, else None."""
    flags = cpu_flags()
    return next((name for flag, name in BF16_UNITS.items() if flag in flags), None)


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def resolve(precision: str, workload: Optional[dict] = None) -> tuple[str, str]:
    """(Keras dtype policy, why) for trainer.precision. `workload`: {"modality",
    "backbone", "pretext"} of the run; without it, auto means float32."""
    if precision != "auto":
        return precision, precision
    w = workload or {}
    conv = (w.get("modality") == "image" and w.get("backbone") in BF16_CPU_BACKBONES
            and w.get("pretext") not in BF16_CPU_SLOWER_PRETEXTS)
    unit = cpu_bf16_unit() if conv else None
    if unit and not _has_gpu():
        return "mixed_bfloat16", (f"mixed_bfloat16 (auto: conv image models measured ~1.4x "
                                  f"faster in bf16 on CPUs with {unit})")
    if conv and not unit:
        return "float32", "float32 (auto: this CPU has no bf16 units)"
    return "float32", "float32 (auto: mixed precision measured no faster for this model here)"


def hardware() -> str:
    """One line on the bf16 hardware here, for doctor."""
    unit = cpu_bf16_unit()
    return f"CPU with {unit}" if unit else "CPU without bf16 units (AMX-BF16, AVX512-BF16)"
