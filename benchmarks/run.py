"""Benchmarks: pretrainer against a baseline measured in the same run.

    python benchmarks/run.py [--smoke] [--repeats N] [--out results.json]

Each benchmark alternates baseline and candidate after a warm-up and reports
medians and their ratio (absolute numbers vary between machines and runs;
ratios measured side by side are what to compare):

- startup: `pretrainer --help` vs `python -c "import tensorflow"`.
- seed_recipe: the seed's CNN trained with `model.fit` on NumPy arrays (the
  seed's own code) vs `pretrainer finetune --config cifar_cnn` reading its store
  (CIFAR-10 when cached by Keras, else the bundled sample), float32 and
  mixed_bfloat16, with the test accuracy of both after the same epochs.
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


def _time_cmd(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT,
                   env=None if env is None else {**os.environ, **env})
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
    # the first call of a version renders through Typer and Rich (pretrainer/entry.py)
    r["rendered_s"] = statistics.median(
        _time_cmd([py, "-m", "pretrainer", "--help"], env={"PRETRAINER_NO_HELP_CACHE": "1"})
        for _ in range(repeats))
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

    from pretrainer.config import ConvConfig
    from pretrainer.models import build_backbone
    from pretrainer.models.heads import classifier

    cfg = ConvConfig(name="seed_cnn", filters=[32, 64, 64], latent_dim=64, batch_norm=False)
    model = classifier(build_backbone(shape, cfg), num_classes)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    keras.utils.set_random_seed(0)
    return model


def _seed_data():
    """(name, overrides, x_train, y_train, x_test, y_test): CIFAR-10 when Keras has it
    cached, else the bundled Fashion-MNIST sample; the same arrays pretrainer collects."""
    import numpy as np

    from pretrainer.config import compose
    from pretrainer.data import sources

    for name, extra in (("cifar10", []), ("fashion_bundled", ["data=fashion_bundled"])):
        cfg = compose("cifar_cnn", extra)
        try:
            src = sources.load(cfg.data)
        except Exception:  # offline without the CIFAR file
            continue
        return (name, extra, src.x_pool.astype("float32") / 255.0,
                np.eye(10, dtype="float32")[src.y_pool], src.x_test.astype("float32") / 255.0,
                np.eye(10, dtype="float32")[src.y_test])
    raise RuntimeError("no data for the seed recipe benchmark")


def bench_seed_recipe(repeats: int, epochs: int, limit: int | None, precision: str) -> dict:
    """The seed's code (fit on NumPy arrays with validation_data) vs `pretrainer finetune
    --config cifar_cnn finetune.init=scratch` on its store; same data, epochs and batch."""
    import keras

    from pretrainer.config import compose
    from pretrainer.stages import collect, finetune

    name, extra, x, y, xt, yt = _seed_data()
    caps = [f"data.max_samples={limit}", f"data.max_test={limit // 5}"] if limit else []
    if limit:
        x, y, xt, yt = x[:limit], y[:limit], xt[:limit // 5], yt[:limit // 5]
    accuracy = {}
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [*extra, *caps, f"finetune.epochs={epochs}", "trainer.verbose=false",
                     f"trainer.precision={precision}", f"paths.runs={tmp}/runs",
                     f"paths.data={tmp}/data", "finetune.init=scratch"]
        collect.run(compose("cifar_cnn", overrides))  # collecting is not part of training

        def seed():
            keras.mixed_precision.set_global_policy("float32")
            model = _seed_cnn(x.shape[1:], 10)
            t0 = time.perf_counter()
            model.fit(x, y, epochs=epochs, batch_size=64, validation_data=(xt, yt), verbose=0)
            seconds = time.perf_counter() - t0
            accuracy["seed"] = float(model.evaluate(xt, yt, verbose=0)[1])
            return seconds

        def ours():
            t0 = time.perf_counter()
            run = finetune.run(compose("cifar_cnn", overrides))
            seconds = time.perf_counter() - t0
            model = keras.saving.load_model(run / "model.keras")
            accuracy["pretrainer"] = float((model.predict(xt, verbose=0).argmax(1)
                                            == yt.argmax(1)).mean())
            return seconds

        r = paired(seed, ours, repeats)
    keras.mixed_precision.set_global_policy("float32")
    n = len(x)
    r.update(what=f"seed CNN on {name}, {n} samples x {epochs} epochs, batch 64, pretrainer in "
                  f"{precision} (seconds)",
             images=n, epochs=epochs, data=name,
             samples_per_s_seed=n * epochs / r["baseline_s"],
             samples_per_s_pretrainer=n * epochs / r["candidate_s"],
             test_accuracy_seed=accuracy["seed"], test_accuracy_pretrainer=accuracy["pretrainer"])
    return r


def bench_input_pipeline(repeats: int, n: int, cache: bool) -> dict:
    import tensorflow as tf

    from pretrainer.data import pipeline

    with tempfile.TemporaryDirectory() as tmp:
        store = _store(Path(tmp), n)
        steps = pipeline.steps(store, "train", 64)
        batches = list(pipeline.images(store, "train", batch_size=64, one_hot=True))
        model = _seed_cnn(batches[0][0].shape[1:], 10)
        memory_ds = tf.data.Dataset.from_tensor_slices(
            (tf.concat([b[0] for b in batches], 0), tf.concat([b[1] for b in batches], 0))
        ).batch(64).cache().repeat()
        # one dataset object per side, as a training run has: a cached split is decoded
        # once (in the warm-up round) and then served from memory
        store_ds = pipeline.images(store, "train", batch_size=64, shuffle=True, repeat=True,
                                   one_hot=True, cache=cache)

        def timed(ds):
            t0 = time.perf_counter()
            model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
            return time.perf_counter() - t0

        r = paired(lambda: timed(memory_ds), lambda: timed(store_ds), repeats)
    how = "cached, the default for small splits" if cache else "streamed, no cache"
    r["what"] = f"one epoch of {n} samples from the store ({how}) vs in memory (seconds)"
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness runs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.json")
    args = ap.parse_args()
    n, epochs, repeats = (256, 1, 1) if args.smoke else (6000, 5, args.repeats)
    limit = 300 if args.smoke else None
    results = {
        "startup": bench_startup(repeats),
        "seed_recipe": bench_seed_recipe(repeats, epochs, limit, "float32"),
        "input_pipeline": bench_input_pipeline(repeats, n, cache=True),
    }
    if not args.smoke:  # the same harnesses with another setting: smoke checks them once
        results["seed_recipe_bf16"] = bench_seed_recipe(repeats, epochs, limit, "mixed_bfloat16")
        results["input_pipeline_streamed"] = bench_input_pipeline(repeats, n, cache=False)
    from pretrainer.precision import cpu_name

    results["_meta"] = {"smoke": args.smoke, "cpus": os.cpu_count(), "cpu": cpu_name(),
                        "python": sys.version.split()[0]}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"on {cpu_name()}\n")
    print("| benchmark | what | baseline | pretrainer | speed ratio |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        if name.startswith("_"):
            continue
        print(f"| {name} | {r['what']} | {r['baseline_s']:.3f} | {r['candidate_s']:.3f} | "
              f"{r['speedup']:.2f}x |")
    print(f"\nstartup: `pretrainer --help` {results['startup']['candidate_s']:.3f} s from its "
          f"cache, {results['startup']['rendered_s']:.3f} s when Typer renders it (first call)")
    for name in ("seed_recipe", "seed_recipe_bf16"):
        if name not in results:
            continue
        r = results[name]
        print(f"\n{name}: test accuracy seed {r['test_accuracy_seed']:.4f}, pretrainer "
              f"{r['test_accuracy_pretrainer']:.4f}; samples/s {r['samples_per_s_seed']:.0f} vs "
              f"{r['samples_per_s_pretrainer']:.0f}")
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
