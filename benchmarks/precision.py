"""Mixed precision vs float32 for pretrainer's image models, on whatever device Keras sees.

    python benchmarks/precision.py [--smoke] [--out benchmarks/precision.json]

Trains each model (pretrainer's own builders: the seed CNN and conv_ae classifiers,
the autoencoder and SimCLR pretexts on conv_ae, and a ResNet50V2 classifier on
32x32x3) for a fixed number of steps on in-memory random data, float32 vs
mixed_bfloat16 (and mixed_float16 on GPUs), alternating, and reports samples/s and
the ratio. It imports only Keras and pretrainer's model code, so it also runs on a
GPU machine that has Keras with the JAX backend but no TensorFlow (how
`trainer.precision=auto`'s GPU choice was checked; see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pretrainer.precision import cpu_name  # noqa: E402  (a light module: no TF)


def _build(name: str, policy: str):
    import keras

    from pretrainer.config import ApplicationConfig, ConvConfig, ReconstructionConfig, SimCLRConfig
    from pretrainer.models import build_backbone
    from pretrainer.models.heads import classifier

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    if name == "resnet_classifier":
        shape, bcfg = (32, 32, 3), ApplicationConfig(name="resnet")
    elif name == "seed_cnn_classifier":
        shape, bcfg = (28, 28, 1), ConvConfig(name="seed_cnn", filters=[32, 64, 64],
                                        latent_dim=64, batch_norm=False)
    else:
        shape, bcfg = (28, 28, 1), ConvConfig()
    backbone = build_backbone(shape, bcfg)
    if name.endswith("classifier"):
        model = classifier(backbone, 10)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        return model, shape, "labels"
    if name == "autoencoder":
        from pretrainer.pretext.reconstruction import build_autoencoder

        return build_autoencoder(backbone, ReconstructionConfig(), bcfg, 0), shape, "inputs"
    from pretrainer.pretext.contrastive import build_simclr

    return build_simclr(backbone, SimCLRConfig(), bcfg, 0), shape, "zeros"


def measure(name: str, policy: str, batch: int, steps: int) -> float:
    import numpy as np

    model, shape, target = _build(name, policy)
    rng = np.random.default_rng(0)
    x = rng.random((batch * steps, *shape), dtype=np.float32)
    y = {"labels": rng.integers(0, 10, len(x)), "inputs": x,
         "zeros": np.zeros(len(x), np.float32)}[target]
    model.fit(x[:batch * 3], y[:batch * 3], batch_size=batch, epochs=1, verbose=0)  # compile
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    import keras

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default="seed_cnn_classifier,conv_ae_classifier,autoencoder,"
                    "simclr,resnet_classifier", help="comma-separated subset")
    ap.add_argument("--batches", default="128,1024", help="comma-separated batch sizes")
    ap.add_argument("--steps", type=int, default=50, help="timed steps per measurement")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "precision.json")
    args = ap.parse_args()
    gpu = bool(keras.config.backend() == "jax" and __import__("jax").devices()[0].platform
               == "gpu") or bool(keras.config.backend() == "tensorflow" and __import__(
                   "tensorflow").config.list_physical_devices("GPU"))
    policies = ["float32", "mixed_bfloat16"] + (["mixed_float16"] if gpu else [])
    models = args.models.split(",")
    batches = [64] if args.smoke else [int(b) for b in args.batches.split(",")]
    steps, rounds = (3, 1) if args.smoke else (args.steps, args.rounds)
    rows = []
    for name in models:
        for batch in batches:
            if args.smoke and name == "resnet_classifier":
                continue
            per = {p: [] for p in policies}
            for _ in range(rounds):
                for p in policies:
                    per[p].append(measure(name, p, batch, steps))
            med = {p: statistics.median(v) for p, v in per.items()}
            rows.append({"model": name, "batch": batch, "samples_per_s": med,
                         "ratio_vs_float32": {p: med[p] / med["float32"] for p in policies}})
            print(json.dumps(rows[-1]), flush=True)
    result = {"backend": keras.config.backend(), "gpu": gpu, "rows": rows, "cpu": cpu_name()}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nbackend {result['backend']}, gpu {gpu}, {cpu_name()}")
    print("| model | batch | float32 samples/s | " + " | ".join(f"{p} / float32" for p in
                                                          policies[1:]) + " |")
    print("|---|---|---|" + "---|" * (len(policies) - 1))
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['samples_per_s']['float32']:.0f} | "
              + " | ".join(f"{r['ratio_vs_float32'][p]:.2f}x" for p in policies[1:]) + " |")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
