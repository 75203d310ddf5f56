"""One module per CLI verb; each exposes `run(cfg, ...) -> Path`."""

from __future__ import annotations

from pathlib import Path

from pretrainer.errors import RunError


def load_keras_artifact(run: Path, filename: str, shape: tuple[int, ...], hint: str = ""):
    """Load run/filename (a .keras model) and check it takes inputs of `shape`."""
    import keras

    path = Path(run) / filename
    if not path.is_file():
        raise RunError(f"{run} has no {filename}")
    model = keras.saving.load_model(path)
    got = tuple(model.input_shape[1:])
    if got != tuple(shape):
        raise RunError(f"{filename} takes inputs of shape {got} but the dataset's examples are "
                       f"{tuple(shape)}" + (f": {hint}" if hint else ""))
    return model
