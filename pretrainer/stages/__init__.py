"""One module per CLI verb; each exposes `run(cfg, ...) -> Path`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

from pretrainer import runs
from pretrainer.errors import RunError


def load_keras_artifact(run: Path, filename: str, shape: tuple[int, ...], hint: str = ""):
    """Load run/filename (a .keras model) and check it takes inputs of `shape` (None: any)."""
    import keras

    import pretrainer.models  # noqa: F401  (registers our layers for deserialisation)

    try:  # text models hold keras-hub layers, registered when keras_hub is imported
        import keras_hub  # noqa: F401
    except ImportError:
        pass

    path = Path(run) / filename
    if not path.is_file():
        raise RunError(f"{run} has no {filename}")
    model = keras.saving.load_model(path)
    got = tuple(model.input_shape[1:])
    if shape is not None and got != tuple(shape):
        raise RunError(f"{filename} takes inputs of shape {got} but the dataset's examples are "
                       f"{tuple(shape)}" + (f": {hint}" if hint else ""))
    return model


def open_run(runs_root: str, experiment: str, stage: str, strategy, cfg_yaml: str,
             **lineage) -> tuple[Path, bool, bool, Optional[Path]]:
    """(run dir, resumed, is chief, checkpoint run to restore from) for this process.

    Only the chief of a multi-worker cluster writes the run's artifacts; the other
    workers train in a scratch directory (their checkpoints go there) and, when
    resuming, restore from the chief's run if this machine can see it.
    """
    from pretrainer.strategy import is_chief, is_multi_worker, worker_index

    if not is_multi_worker(strategy) or is_chief():
        run, resumed = runs.start_run(runs_root, experiment, stage, cfg_yaml, **lineage)
        return run, resumed, True, None
    scratch = Path(tempfile.mkdtemp(prefix=f"pretrainer-{stage}-worker{worker_index()}-"))
    chief_run = runs.resumable_run(runs_root, experiment, stage, cfg_yaml)
    return scratch, chief_run is not None, False, chief_run


def weights_checksum(model) -> float:
    """Sum of |w| over all weights: workers that end equal print the same number."""
    import numpy as np

    return float(sum(np.abs(np.asarray(w, dtype=np.float64)).sum() for w in model.get_weights()))
