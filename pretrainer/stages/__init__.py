"""One module per CLI verb; each exposes `run(cfg, ...) -> Path`."""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from pretrainer import files, runs, tracking  # noqa: F401  (tracking: the on-done MLflow hook)
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
    want = runs.read_manifest(run).artifacts.get(filename)
    if want is not None and files.sha256_file(path) != want:
        raise RunError(f"{path} is damaged: its sha256 differs from the one recorded in "
                       f"{Path(run) / 'manifest.json'}. Rerun the stage that wrote it")
    try:
        model = keras.saving.load_model(path)
    except Exception as exc:  # noqa: BLE001 - truncated zip, foreign file, missing class
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise RunError(f"{path} cannot be loaded ({type(exc).__name__}: {first}). Rerun the "
                       f"stage that wrote it") from exc
    got = tuple(model.input_shape[1:])
    if shape is not None and got != tuple(shape):
        raise RunError(f"{filename} takes inputs of shape {got} but the dataset's examples are "
                       f"{tuple(shape)}" + (f": {hint}" if hint else ""))
    return model


def save_artifact(run: Path, filename: str, model) -> None:
    """Save a .keras artifact atomically and record its sha256 in the run's manifest."""
    path = files.atomic_write_with(Path(run) / filename, model.save, suffix=".keras")
    artifacts = dict(runs.read_manifest(run).artifacts)
    runs.update_manifest(run, artifacts={**artifacts, filename: files.sha256_file(path)})


def trained_store(run: Path, fallback: str) -> str:
    """The store `run` was trained on (its manifest records the path, checksum and key),
    so evaluate and deploy score a model on its own data, not on whatever store the
    current config names. A store that is gone or was rebuilt for another data config
    is a clear error; runs from before this was recorded fall back to `fallback`."""
    lineage = runs.read_manifest(run)
    path = lineage.dataset_manifest
    if not path:
        return fallback
    store = str(path).rsplit("/", 1)[0]
    if "://" not in str(path) and not Path(path).is_file():
        raise RunError(f"{run} was trained on the dataset store {store}, which is gone. "
                       f"Collect it again with the run's config ({Path(run) / 'config.yaml'})")
    same_file = files.any_sha256(path) == lineage.dataset_manifest_sha256
    key = runs.dataset_key(path)
    if not same_file and (key is None or key != lineage.dataset_key):
        raise RunError(f"{run} was trained on the dataset store {store}, which has been "
                       f"rebuilt since for another data config; its scores would not be "
                       f"comparable. Collect it again with the run's data config (see "
                       f"{Path(run) / 'config.yaml'}), or finetune again")
    return store


@dataclass(frozen=True)
class TrainingRun:
    path: Path  # the run directory (a multi-worker worker: its scratch directory)
    resumed: bool
    chief: bool  # writes the run's artifacts
    restore_from: Optional[Path] = None  # a worker resuming: the chief's run


@contextlib.contextmanager
def training_run(runs_root: str, experiment: str, stage: str, strategy, cfg_yaml: str,
                 **lineage) -> Iterator[TrainingRun]:
    """runs.opened for a training stage (resumed from its checkpoint), per process.

    Only the chief of a multi-worker cluster writes the run's artifacts; the other
    workers train in a scratch directory (their checkpoints go there) and, when
    resuming, restore from the chief's run if this machine can see it.
    """
    from pretrainer.strategy import is_chief, is_multi_worker, worker_index

    if not is_multi_worker(strategy) or is_chief():
        with runs.opened(runs_root, experiment, stage, cfg_yaml, progress=runs.CHECKPOINT,
                         **lineage) as opened:
            yield TrainingRun(opened.path, opened.resumed, True)
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"pretrainer-{stage}-worker{worker_index()}-"))
    # its checkpoints matter only while this process trains: gone when it exits (they
    # piled up in /tmp, one folder per worker and run)
    atexit.register(shutil.rmtree, scratch, True)
    chief_run = runs.resumable_run(runs_root, experiment, stage, cfg_yaml)
    yield TrainingRun(scratch, chief_run is not None, False, chief_run)



def weights_checksum(model) -> float:
    """Sum of |w| over all weights: workers that end equal print the same number."""
    import numpy as np

    return float(sum(np.abs(np.asarray(w, dtype=np.float64)).sum() for w in model.get_weights()))
