"""Benchmarks: pretrainer against a baseline measured in the same run.

    python benchmarks/run.py [--smoke] [--repeats N] [--out results.json]

Each benchmark alternates baseline and candidate after a warm-up and reports
medians and their ratio (absolute numbers vary between machines and runs;
ratios measured side by side are what to compare):

- startup: `pretrainer --help` vs `python -c "import tensorflow"`.
- seed_recipe: the seed's CNN trained with `model.fit` on NumPy arrays (the
  seed's own code) vs pretrainer's training loop reading its TFRecord store.
- input_pipeline: training steps/s from the store vs from the same batches
  already in memory (ratio >= 0.95 means the input pipeline is not the bottleneck).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _time_cmd(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - t0


def paired(baseline, candidate, repeats: int) -> dict:
    """Warm up both, then alternate; return medians and candidate/baseline speed ratio."""
    baseline(), candidate()
    b, c = [], []
    for _ in range(repeats):
        b.append(baseline())
        c.append(candidate())
    mb, mc = statistics.median(b), statistics.median(c)
    return {"baseline_s": mb, "candidate_s": mc, "speedup": mb / mc, "repeats": repeats}


def bench_startup(repeats: int) -> dict:
    py = sys.executable
    r = paired(lambda: _time_cmd([py, "-c", "import tensorflow"]),
               lambda: _time_cmd([py, "-m", "pretrainer", "--help"]), repeats)
    r["what"] = "`pretrainer --help` vs `import tensorflow` (seconds)"
    return r


def _store(tmp: Path, n: int):
    from pretrainer.config import DataConfig
    from pretrainer.data import sources
    from pretrainer.data.store import build_store

    cfg = DataConfig(labeled_fraction=1.0, val_fraction=0.0, max_samples=n)
    build_store(tmp / "store", cfg, seed=0, src=sources.load(cfg))
    return tmp / "store"


def _seed_cnn(shape, num_classes: int):
    import keras

    from pretrainer.config import BackboneConfig
    from pretrainer.models import build_backbone
    from pretrainer.models.heads import classifier

    cfg = BackboneConfig(name="seed_cnn", filters=[32, 64, 64], latent_dim=64, batch_norm=False)
    model = classifier(build_backbone(shape, cfg), num_classes)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    keras.utils.set_random_seed(0)
    return model


def bench_seed_recipe(repeats: int, n: int, epochs: int) -> dict:
    import numpy as np

    from pretrainer.data import pipeline

    with tempfile.TemporaryDirectory() as tmp:
        store = _store(Path(tmp), n)
        x, y = pipeline.to_numpy(pipeline.images(store, "train", batch_size=256, cache=False))
        y1 = np.eye(10, dtype="float32")[y]
        steps = pipeline.steps(store, "train", 64)

        def seed():  # the seed's own code: fit on NumPy arrays, batch 64
            model = _seed_cnn(x.shape[1:], 10)
            t0 = time.perf_counter()
            model.fit(x, y1, epochs=epochs, batch_size=64, verbose=0)
            return time.perf_counter() - t0

        def ours():  # pretrainer's pipeline: the store, repeat + steps_per_epoch
            model = _seed_cnn(x.shape[1:], 10)
            ds = pipeline.images(store, "train", batch_size=64, shuffle=True, repeat=True,
                                 one_hot=True)
            t0 = time.perf_counter()
            model.fit(ds, epochs=epochs, steps_per_epoch=steps, verbose=0)
            return time.perf_counter() - t0

        r = paired(seed, ours, repeats)
    r.update(what=f"seed CNN, {n} samples x {epochs} epochs, batch 64 (seconds)",
             samples_per_s_seed=n * epochs / r["baseline_s"],
             samples_per_s_pretrainer=n * epochs / r["candidate_s"])
    return r


def bench_input_pipeline(repeats: int, n: int) -> dict:
    import tensorflow as tf

    from pretrainer.data import pipeline

    with tempfile.TemporaryDirectory() as tmp:
        store = _store(Path(tmp), n)
        steps = pipeline.steps(store, "train", 64)
        batches = list(pipeline.images(store, "train", batch_size=64, one_hot=True))
        model = _seed_cnn(batches[0][0].shape[1:], 10)

        def memory():
            ds = tf.data.Dataset.from_tensor_slices(
                (tf.concat([b[0] for b in batches], 0), tf.concat([b[1] for b in batches], 0))
            ).batch(64).cache().repeat()
            t0 = time.perf_counter()
            model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
            return time.perf_counter() - t0

        def store_read():
            ds = pipeline.images(store, "train", batch_size=64, shuffle=True, repeat=True,
                                 one_hot=True, cache=False)
            t0 = time.perf_counter()
            model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
            return time.perf_counter() - t0

        r = paired(memory, store_read, repeats)
    r["what"] = f"one epoch of {n} samples: streamed from the store vs in memory (seconds)"
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness runs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.json")
    args = ap.parse_args()
    n, epochs, repeats = (256, 1, 1) if args.smoke else (6000, 2, args.repeats)
    results = {
        "startup": bench_startup(repeats),
        "seed_recipe": bench_seed_recipe(repeats, n, epochs),
        "input_pipeline": bench_input_pipeline(repeats, n),
    }
    results["_meta"] = {"smoke": args.smoke, "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("| benchmark | what | baseline | pretrainer | speed ratio |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        if name.startswith("_"):
            continue
        print(f"| {name} | {r['what']} | {r['baseline_s']:.3f} | {r['candidate_s']:.3f} | "
              f"{r['speedup']:.2f}x |")
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
