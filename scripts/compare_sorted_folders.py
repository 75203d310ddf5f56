"""Right answers on class-sorted data: pretrainer vs plain Keras on the same image folders.

Writes nothing of its own; give it a class-folder tree (root/{train,test}/<class>/*),
e.g. Debian's full Fashion-MNIST written out as PNGs (scripts/fashion_folders.py).
Runs `pretrainer finetune` + `evaluate` with the seed recipe (cifar_cnn) on the
folders, then the same CNN with plain `model.fit` on the same decoded images in
random order, and prints both test accuracies.

    python scripts/compare_sorted_folders.py /tmp/fm --size 28 --color grayscale --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def pretrainer(args: list[str], cwd: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "pretrainer", *args], cwd=cwd,
                         capture_output=True, text=True, env={**os.environ,
                                                              "TF_CPP_MIN_LOG_LEVEL": "3"})
    if out.returncode:
        sys.exit(f"pretrainer {' '.join(args)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout


def plain_seed_cnn(shape, num_classes: int):
    """The seed's CNN written in plain Keras (nothing from pretrainer), compiled as the
    seed compiles it: the reference pretrainer's numbers are compared with."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input(shape),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(num_classes, activation="softmax")])
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", type=Path)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--color", default="rgb")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="pretrainer-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    common = ["--config", "cifar_cnn", "data=image_folder", f"data.path={a.root.resolve()}",
              f"data.image_size=[{a.size},{a.size}]", f"data.color={a.color}",
              f"trainer.epochs={a.epochs}", "trainer.verbose=true"]
    t0 = time.perf_counter()
    print(pretrainer(["finetune", *common], work)[-3000:])
    t_fit = time.perf_counter() - t0
    pretrainer(["evaluate", *common], work)
    (ev,) = sorted((work / "runs" / "cifar_cnn").glob("evaluate-*"))[-1:]
    ours = json.loads((ev / "metrics.json").read_text())["accuracy"]

    # Plain Keras: the same decoded images from the store's own source, shuffled in memory.
    import keras
    import numpy as np

    from pretrainer.config import compose
    from pretrainer.data import sources

    cfg = compose("cifar_cnn", common[2:])
    src = sources.load(cfg.data)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(src.y_pool))
    x, y = src.x_pool[perm].astype("float32") / 255.0, src.y_pool[perm]
    xt, yt = src.x_test.astype("float32") / 255.0, src.y_test
    k = int(y.max()) + 1
    model = plain_seed_cnn(x.shape[1:], k)
    n_train = int(len(y) * 0.95)  # what cifar_cnn trains on: 5% held out for validation
    t0 = time.perf_counter()
    model.fit(x[:n_train], keras.utils.to_categorical(y[:n_train], k), epochs=a.epochs,
              batch_size=64, verbose=2)
    t_keras = time.perf_counter() - t0
    plain = float(model.evaluate(xt, keras.utils.to_categorical(yt, k), verbose=0)[1])
    print(json.dumps({"pretrainer_test_accuracy": round(ours, 4),
                      "plain_keras_test_accuracy": round(plain, 4),
                      "difference_points": round(100 * (ours - plain), 2),
                      "pretrainer_finetune_s (with collect)": round(t_fit, 1),
                      "plain_keras_fit_s": round(t_keras, 1), "epochs": a.epochs,
                      "train_examples": n_train, "test_examples": int(len(yt))}, indent=1))


if __name__ == "__main__":
    main()
