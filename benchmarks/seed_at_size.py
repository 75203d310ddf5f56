"""The seed recipe against pretrainer at the size users train at.

    python benchmarks/seed_at_size.py [--epochs 3] [--rounds 3] [--smoke]

Full Fashion-MNIST (60,000 training and 10,000 test images, 28x28x1) from Debian's
`dataset-fashion-mnist` IDX files (`apt-get install dataset-fashion-mnist`; or
--idx DIR). Each side is a whole process, start-up included, alternating rounds,
medians:

- seed: the seed's few lines, `model.fit` on NumPy arrays (float32, batch 64,
  validation on the test images every epoch);
- pretrainer: `pretrainer finetune --config cifar_cnn data=fashion_mnist_idx
  finetune.init=scratch` as a user runs it (it collects first, outside the timing),
  once with trainer.precision=float32 and once with the default (auto).

Reports wall seconds, fit seconds (the seed's model.fit; pretrainer's fit_seconds
from its run manifest), the speed ratio seed / pretrainer, and the test accuracy of
each after the same epochs (pretrainer's model.keras scored on the same test images).
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

from pretrainer.precision import cpu_name  # noqa: E402  (a light module: no TF)

IDX = Path("/usr/share/datasets/fashion-mnist")

SEED = """
import gzip, json, sys, time
t0 = time.perf_counter()
import numpy as np, keras
from keras import layers
d, epochs, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def images(n):
    return np.frombuffer(gzip.open(f"{d}/{n}").read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
def labels(n):
    return np.frombuffer(gzip.open(f"{d}/{n}").read(), np.uint8, offset=8)
x = (images("train-images-idx3-ubyte.gz")[:limit] / 255.0).astype("float32")
y = np.eye(10, dtype="float32")[labels("train-labels-idx1-ubyte.gz")[:limit]]
xt = (images("t10k-images-idx3-ubyte.gz")[:limit // 6] / 255.0).astype("float32")
yt = np.eye(10, dtype="float32")[labels("t10k-labels-idx1-ubyte.gz")[:limit // 6]]
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((28, 28, 1)), layers.Conv2D(32, 3, activation="relu"),
    layers.MaxPooling2D(), layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(),
    layers.Conv2D(64, 3, activation="relu"), layers.Flatten(),
    layers.Dense(64, activation="relu"), layers.Dense(10, activation="softmax")])
model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
t1 = time.perf_counter()
model.fit(x, y, epochs=epochs, batch_size=64, validation_data=(xt, yt), verbose=0)
fit_s = time.perf_counter() - t1
acc = float(model.evaluate(xt, yt, verbose=0)[1])
print(json.dumps({"wall_s": time.perf_counter() - t0, "fit_s": fit_s, "test_accuracy": acc}))
"""


# Scored in its own process after the timing: this process never loads TensorFlow, whose
# idle thread pools would share the 2 cores with the timed runs.
SCORE = """
import gzip, sys
import numpy as np, keras
import pretrainer.models  # noqa: F401 - registered layers
d, limit = sys.argv[1], int(sys.argv[3])
x = np.frombuffer(gzip.open(f"{d}/t10k-images-idx3-ubyte.gz").read(), np.uint8,
                  offset=16).reshape(-1, 28, 28, 1)[:limit // 6]
y = np.frombuffer(gzip.open(f"{d}/t10k-labels-idx1-ubyte.gz").read(), np.uint8,
                  offset=8)[:limit // 6]
model = keras.saving.load_model(sys.argv[2])
print(float((model.predict(x.astype("float32") / 255.0, verbose=0).argmax(1) == y).mean()))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idx", type=Path, default=IDX)
    ap.add_argument("--smoke", action="store_true", help="1,200 images, 1 epoch, 1 round")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "seed_at_size.json")
    args = ap.parse_args()
    if not (args.idx / "train-images-idx3-ubyte.gz").is_file():
        sys.exit(f"no Fashion-MNIST IDX files in {args.idx}: apt-get install "
                 f"dataset-fashion-mnist, or pass --idx DIR")
    limit, epochs, rounds = (1200, 1, 1) if args.smoke else (60000, args.epochs, args.rounds)
    pretrainer = [str(Path(sys.executable).with_name("pretrainer"))]
    if not Path(pretrainer[0]).is_file():
        pretrainer = [sys.executable, "-m", "pretrainer"]
    with tempfile.TemporaryDirectory() as tmp:
        base = ["-c", "cifar_cnn", "data=fashion_mnist_idx", f"data.path={args.idx}",
                "finetune.init=scratch", f"finetune.epochs={epochs}", "trainer.batch_size=64",
                "trainer.verbose=false", f"paths.runs={tmp}/runs", f"paths.data={tmp}/data",
                f"data.max_samples={limit}", f"data.max_test={limit // 6}"]
        subprocess.run([*pretrainer, "collect", *base], check=True, capture_output=True)

        def seed() -> dict:
            out = subprocess.run([sys.executable, "-c", SEED, str(args.idx), str(epochs),
                                  str(limit)], check=True, capture_output=True, text=True)
            return json.loads(out.stdout.strip().splitlines()[-1])

        def ours(precision: str) -> dict:
            t0 = time.perf_counter()
            out = subprocess.run([*pretrainer, "finetune", *base,
                                  f"trainer.precision={precision}"], check=True,
                                 capture_output=True, text=True)
            wall = time.perf_counter() - t0
            run = Path(out.stdout.split("finetune done: ")[1].split()[0]).parent
            manifest = json.loads((run / "manifest.json").read_text())
            score = subprocess.run([sys.executable, "-c", SCORE, str(args.idx),
                                    str(run / "model.keras"), str(limit)], check=True,
                                   capture_output=True, text=True, cwd=ROOT)
            return {"wall_s": wall, "fit_s": manifest.get("fit_seconds"),
                    "test_accuracy": float(score.stdout.strip().splitlines()[-1]),
                    "strategy": manifest.get("strategy", "")}

        sides = {"seed": seed, "float32": lambda: ours("float32"), "auto": lambda: ours("auto")}
        measured: dict[str, list[dict]] = {k: [] for k in sides}
        for _ in range(rounds):
            for name, fn in sides.items():
                measured[name].append(fn())
                print(name, json.dumps(measured[name][-1]), flush=True)

    def med(name: str, key: str) -> float:
        return statistics.median(m[key] for m in measured[name])

    rows = {name: {k: med(name, k) for k in ("wall_s", "fit_s", "test_accuracy")}
            for name in sides}
    result = {"images": limit, "epochs": epochs, "rounds": rounds, "batch": 64, "rows": rows,
              "speedup_float32": rows["seed"]["wall_s"] / rows["float32"]["wall_s"],
              "speedup_auto": rows["seed"]["wall_s"] / rows["auto"]["wall_s"],
              "auto_policy": measured["auto"][-1]["strategy"], "smoke": args.smoke,
              "cpu": cpu_name(),
              "each_round": measured}  # this 2-core machine is noisy: the spread is shown
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nseed CNN, Fashion-MNIST {limit} images x {epochs} epochs, batch 64, "
          f"{rounds} alternating round(s), medians, {cpu_name()}")
    print("| | wall s (process) | fit s | test accuracy | speed vs seed (wall) |")
    print("|---|---|---|---|---|")
    for name, label in (("seed", "seed recipe (Keras, float32)"),
                        ("float32", "pretrainer, trainer.precision=float32"),
                        ("auto", "pretrainer, default (precision auto)")):
        r = rows[name]
        print(f"| {label} | {r['wall_s']:.1f} | {r['fit_s']:.1f} | {r['test_accuracy']:.4f} | "
              f"{rows['seed']['wall_s'] / r['wall_s']:.2f}x |")
    print("\neach round, wall s: " + "; ".join(
        f"{name} " + " / ".join(f"{m['wall_s']:.1f}" for m in measured[name]) for name in sides))
    print(f"\nauto chose: {result['auto_policy']}\nJSON: {args.out}")


if __name__ == "__main__":
    main()
