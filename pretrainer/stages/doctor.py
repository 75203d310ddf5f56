"""doctor: is this machine ready to train and export? One table, non-zero exit if not."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from pretrainer.console import console, styled, table
from pretrainer.errors import UserError

MIN_FREE_BYTES = 2 * 2**30


def nvidia_gpus() -> list[str]:
    """GPUs the NVIDIA driver lists (`nvidia-smi -L`), whatever TensorFlow sees."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.startswith("GPU ")]


def run(runs_root: str = "runs", strategy: str = "auto", tpu: str = "",
        timeout: float = 30.0) -> bool:
    import keras
    import numpy as np
    import tensorflow as tf

    from pretrainer.strategy import get_strategy

    rows, ok = [], True

    def add(check: str, good: bool, detail: str) -> None:
        nonlocal ok
        ok &= good
        rows.append([check, styled("ok", "green") if good else styled("FAIL", "red"), detail])

    add("versions", True, f"tensorflow {tf.__version__}, keras {keras.__version__}")
    gpus = tf.config.list_physical_devices("GPU")
    add("devices", True, f"{len(tf.config.list_physical_devices('CPU'))} CPU, {len(gpus)} GPU"
        + (f" ({', '.join(g.name for g in gpus)})" if gpus else ""))
    listed = nvidia_gpus()
    if listed:
        add("GPU visible to TensorFlow", len(gpus) >= len(listed),
            f"nvidia-smi lists {len(listed)} GPU(s), TensorFlow sees {len(gpus)}"
            + ("" if len(gpus) >= len(listed) else
               ": TensorFlow lacks its CUDA libraries; install pretrainer[gpu] "
               "(`make install-gpu`, or pip install 'pretrainer[gpu]')"))
    label = f"strategy {strategy}" + (f" (trainer.tpu={tpu})" if tpu else "")
    try:
        chosen, why = get_strategy(strategy, tpu=tpu, timeout=timeout)
        add(label, True, f"{type(chosen).__name__} ({why}), "
                         f"{chosen.num_replicas_in_sync} replica(s)")
    except UserError as exc:
        add(label, False, str(exc))
    from pretrainer import precision

    conv = precision.resolve("auto", {"modality": "image", "backbone": "conv_ae"})[0]
    add("precision", True, f"trainer.precision=auto uses {conv} for conv image models and "
                          f"float32 for the others here ({precision.hardware()}; the rule "
                          f"and its measurements: pretrainer/precision.py)")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            t0 = time.perf_counter()
            model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3),
                                      keras.layers.Flatten(), keras.layers.Dense(2)])
            model.compile(optimizer="adam", loss="mse")
            x = np.random.default_rng(0).random((16, 8, 8, 1)).astype("float32")
            model.fit(x, np.zeros((16, 2), "float32"), epochs=1, verbose=0)
            add("train step", True, f"tiny model, {time.perf_counter() - t0:.1f} s")
        except Exception as exc:  # report, do not crash: that is the doctor's job
            add("train step", False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        else:
            try:
                model.export(str(Path(tmp) / "sm"), format="tf_saved_model", verbose=False)
                loaded = tf.saved_model.load(str(Path(tmp) / "sm"))
                same = np.allclose(loaded.serve(x).numpy(), model.predict(x, verbose=0),
                                   atol=1e-5)
                add("SavedModel export", same, "exported, reloaded, same predictions"
                    if same else "reloaded model disagrees with Keras")
            except Exception as exc:
                add("SavedModel export", False,
                    f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
    where = Path(runs_root)
    probe = where if where.exists() else Path.cwd()
    free = shutil.disk_usage(probe).free
    add("disk", free >= MIN_FREE_BYTES, f"{free / 2**30:.1f} GiB free at {probe.resolve()}"
        + ("" if free >= MIN_FREE_BYTES else " (need 2 GiB)"))
    console.print(table("pretrainer doctor", ["check", "status", "detail"], rows))
    return ok
