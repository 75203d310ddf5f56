"""Run directories: where every artifact is written, and how.

runs/<experiment>/<stage>-<YYYYmmdd-HHMMSS>/ holds config.yaml, manifest.json
(lineage), the stage's artifacts and a DONE marker written last. Every file is
written through pretrainer.files (temporary name, fsync, rename), so a killed process
never leaves a half-written artifact under the name a reader would open. Only this
module decides where things are written.

"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from pretrainer.errors import RunError
from pretrainer.files import (
    acquire_lock,
    any_sha256,
    atomic_write_json,
    atomic_write_text,
    holds_lock,
    release_lock,
)
from pretrainer.records import RunManifest

DONE = "DONE"
LOCK = ".lock"

def lock_run(run: Path) -> None:
    """One writer per run directory (released by mark_done or at process exit)."""
    acquire_lock(Path(run) / LOCK, f"run {run}")


def experiment_dir(runs_root: str | Path, experiment: str) -> Path:
    return Path(runs_root) / experiment


CHECKPOINT = "ckpt/checkpoint"  # a training run's progress: what a rerun resumes from


def new_run_dir(runs_root: str | Path, experiment: str, stage: str,
                progress: str = CHECKPOINT) -> Path:
    """Create runs/<experiment>/<stage>-<stamp>/ (a suffix keeps same-second runs apart).
    `progress`: the file whose presence makes the unfinished run worth keeping."""
    base = experiment_dir(runs_root, experiment)
    base.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        name = f"{stage}-{stamp}" + (f"-{i}" if i else "")
        path = base / name
        with _signals_held():
            try:
                path.mkdir()
            except FileExistsError:
                continue
            _NEW_RUNS[path] = progress
        return path
    raise RunError(f"could not create a new {stage} run under {base}")


@contextlib.contextmanager
def _signals_held():
    """SIGTERM and SIGINT wait while a run directory is created and recorded: a stop in
    between (a scheduler's SIGTERM right as the directory appears) left an empty run that
    `discard_unstarted` did not know of. Delivered when the block ends."""
    import signal
    import threading

    held = {signal.SIGTERM, signal.SIGINT}
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not \
            threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


_NEW_RUNS: dict[Path, str] = {}  # run directories this process created -> progress file


def discard_unstarted(only: Optional[Path] = None) -> list[Path]:
    """Remove the run directories this process created (or only `only`) that hold nothing
    a rerun could use (no DONE, no progress file): a stage that failed a precondition or
    was interrupted before its first checkpoint leaves no empty run."""
    removed = []
    for run, progress in list(_NEW_RUNS.items()):
        if only is not None and run != only:
            continue
        if run.is_dir() and not is_done(run) and not (run / progress).is_file():
            release_lock(run / LOCK)
            shutil.rmtree(run, ignore_errors=True)
            removed.append(run)
        del _NEW_RUNS[run]
    return removed


@dataclass(frozen=True)
class OpenRun:
    path: Path
    resumed: bool = False


@contextlib.contextmanager
def opened(runs_root: str | Path, experiment: str, stage: str, cfg_yaml: str, *,
           progress: Optional[str] = None, keep: Optional[str] = None,
           **lineage: Any) -> Iterator[OpenRun]:
    """The one lifecycle of a run directory, for every stage, study and pipeline arm.

    Entering finds the unfinished run of `stage` with this exact config that holds
    `progress` (a file a rerun continues from: a training checkpoint, a study's done
    cells) and resumes it, or creates a new run; either way locked (one writer) and
    with its lineage written. Leaving normally runs the on-done hooks (MLflow) and writes
    DONE; leaving by an exception removes the run if it holds nothing a rerun could use.
    `progress=None`: never resumed (evaluate, deploy: each call is a new run). `keep`: a
    file that keeps a failed run for the user to look at (deploy's parity.json: the
    exports that failed their check), besides `progress`.
    """
    path, resumed = start_run(runs_root, experiment, stage, cfg_yaml, progress=progress,
                              keep=keep, **lineage)
    try:
        yield OpenRun(path, resumed)
    except BaseException:
        discard_unstarted(only=path)
        raise
    mark_done(path)


def resumable_run(runs_root: str | Path, experiment: str, stage: str,
                  cfg_yaml: str, progress: str = CHECKPOINT) -> Optional[Path]:
    """The newest run of `stage` with this exact config if it is unfinished and holds
    `progress` (a checkpoint). This is what makes "run the same command again" resume
    a killed run.
    """
    path = next(_runs_with_config(experiment_dir(runs_root, experiment), stage, cfg_yaml),
                None)
    if path is None or is_done(path) or not (path / progress).is_file():
        return None
    return path


def _runs_with_config(base: Path, stage: str, cfg_yaml: str) -> Iterator[Path]:
    """The runs of `stage` under `base` whose config.yaml is `cfg_yaml`, newest first."""
    for path in sorted(base.glob(f"{stage}-*"), key=lambda p: p.name, reverse=True):
        try:
            if (path / "config.yaml").read_text(encoding="utf-8") == cfg_yaml:
                yield path
        except OSError:
            continue


def start_run(runs_root: str | Path, experiment: str, stage: str, cfg_yaml: str,
              progress: Optional[str] = CHECKPOINT, keep: Optional[str] = None,
              **lineage: Any) -> tuple[Path, bool]:
    """(run directory, resumed?): resume the same unfinished run, or create a new one.

    Finding and creating happen under one lock per experiment and stage, and a run
    with this config that a live process holds is refused before its first checkpoint
    too: two identical commands never train two runs side by side. With `progress`
    None, always a new run (locked, lineage written)."""
    if progress is None:
        run = new_run_dir(runs_root, experiment, stage, progress=keep or DONE)

        lock_run(run)
        write_lineage(run, stage, cfg_yaml, **lineage)
        return run, False
    base = experiment_dir(runs_root, experiment)
    creating = base / f".{stage}-start.lock"
    acquire_lock(creating, f"the start of a {stage} run in {base}", wait=True)
    try:
        found = resumable_run(runs_root, experiment, stage, cfg_yaml, progress)
        if found is not None:
            lock_run(found)  # a live process still writing it: a clear error, exit 2
            if is_done(found):  # it finished while we waited for the lock check
                release_lock(Path(found) / LOCK)
            else:
                update_manifest(found, resumed=read_manifest(found).resumed + 1)
                return found, True
        _refuse_live_twin(base, stage, cfg_yaml)
        run = new_run_dir(runs_root, experiment, stage, progress=progress)
        lock_run(run)

        write_lineage(run, stage, cfg_yaml, **lineage)
        return run, False
    finally:
        release_lock(creating)


def _refuse_live_twin(base: Path, stage: str, cfg_yaml: str) -> None:
    """RunError (one line, exit 2) when an unfinished run of `stage` with this config is
    held by a live process that has not checkpointed yet (resumable_run finds only
    checkpointed ones); dead ones without a checkpoint are left for a new run."""
    for path in _runs_with_config(base, stage, cfg_yaml):
        lock = path / LOCK
        if holds_lock(lock) or is_done(path) or not lock.is_file():
            continue
        acquire_lock(lock, f"run {path}")  # held by a live process: RunError here
        release_lock(lock)


def is_done(run: Path) -> bool:
    return (Path(run) / DONE).is_file()


_ON_DONE: list[Callable[[Path], Any]] = []


def on_done(hook: Callable[[Path], Any]) -> None:
    """Call hook(run) when a run is marked done, before DONE is written (pretrainer.tracking
    registers MLflow logging this way, so runs does not import what it serves)."""
    if hook not in _ON_DONE:
        _ON_DONE.append(hook)


def mark_done(run: Path) -> None:
    """Mark a run finished, after the on-done hooks (MLflow logging when asked for)."""
    for hook in _ON_DONE:
        hook(Path(run))
    atomic_write_text(Path(run) / DONE, _dt.datetime.now().isoformat(timespec="seconds") + "\n")
    release_lock(Path(run) / LOCK)


def require_done(run: str | Path, stage: Optional[str] = None) -> Path:
    """Check that `run` is a finished run (of `stage`, when given) and return it."""
    path = Path(run).expanduser()
    if not path.is_dir():
        raise RunError(f"Run directory {run} does not exist")
    if not is_done(path):
        raise RunError(f"Run {path} is incomplete (no {DONE} marker): it was interrupted or "
                       f"failed. Rerun that stage, or pass another --run")
    if stage is not None:
        got = read_manifest(path).stage
        if got != stage:
            raise RunError(f"Run {path} is a '{got}' run; this step needs a '{stage}' run")
    return path


def latest_run(runs_root: str | Path, experiment: str, stage: str) -> Path:
    """The newest DONE run of `stage` for `experiment`."""
    base = experiment_dir(runs_root, experiment)
    candidates = sorted(base.glob(f"{stage}-*"), key=lambda p: p.name, reverse=True)
    for path in candidates:
        if path.is_dir() and is_done(path):
            return path
    hint = {"pretrain": "pretrainer pretrain", "finetune": "pretrainer finetune",
            "evaluate": "pretrainer evaluate", "deploy": "pretrainer deploy"}.get(stage, stage)
    raise RunError(f"No finished {stage} run for experiment '{experiment}' under {base}. "
                   f"Run `{hint} --config {experiment}` first, or pass --run DIR")


MODEL_MARK = "MODEL.json"  # runs/<experiment>/MODEL.json: the experiment's model


def mark_model(runs_root: str | Path, experiment: str, **fields: Any) -> Path:
    """Record which finetune run (and its deploy run) is the experiment's model: `pipeline`
    marks the arm that won on the validation split. predict, evaluate, deploy and serve
    default to the marked runs until a newer run of their stage is made."""
    path = experiment_dir(runs_root, experiment) / MODEL_MARK
    newest = {}  # each stage's newest run now: a run made after the mark takes over
    for stage in ("finetune", "deploy"):
        try:
            newest[stage] = latest_run(runs_root, experiment, stage).name
        except RunError:
            pass
    atomic_write_json(path, {**{k: str(Path(v).resolve()) if isinstance(v, Path) else v
                                for k, v in fields.items()}, "newest_at_mark": newest})
    return path


def marked_model(runs_root: str | Path, experiment: str) -> dict:
    path = experiment_dir(runs_root, experiment) / MODEL_MARK
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _marked_run(runs_root: str | Path, experiment: str, stage: str) -> Optional[Path]:
    """The marked run of `stage` while no newer finished run of that stage exists."""
    mark = marked_model(runs_root, experiment)
    path = mark.get(stage)
    if not path or not is_done(Path(path)):
        return None
    try:
        latest = latest_run(runs_root, experiment, stage)
    except RunError:
        return None
    if latest.name > mark.get("newest_at_mark", {}).get(stage, Path(path).name):
        return None  # made after the mark: the user's newer run wins
    from pretrainer.console import esc, info

    info(f"using the experiment's model: the {esc(mark.get('arm', '?'))} arm "
         f"({esc(mark.get('why', 'marked'))}), {esc(path)}; --run DIR picks another")
    return Path(path)


def resolve(runs_root: str | Path, experiment: str, stage: str,
            run: Optional[str | Path] = None, accept: tuple[str, ...] = ()) -> Path:
    """`--run DIR` when given (a finished run of `stage`, or of any stage in `accept`),
    else the experiment's marked model (mark_model) or the latest finished `stage` run."""
    if run is None:
        return (_marked_run(runs_root, experiment, stage)
                or latest_run(runs_root, experiment, stage))
    if not accept:
        return require_done(run, stage)
    path = require_done(run)
    got = read_manifest(path).stage
    if got not in accept:
        raise RunError(f"Run {path} is a '{got}' run; this step takes a "
                       f"{' or '.join(accept)} run")
    return path


def read_manifest(run: Path) -> RunManifest:
    """The run's manifest (an empty record for a run without one)."""
    return RunManifest.from_json(_manifest_json(run))


def _manifest_json(run: Path) -> dict:
    path = Path(run) / "manifest.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise RunError(f"{path} is not valid JSON ({exc.msg})") from exc


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for pkg in ("pretrainer", "tensorflow", "keras", "numpy", "hydra-core", "scikit-learn"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _resolved(path) -> Optional[str]:
    if not path:
        return None
    return str(path) if "://" in str(path) else str(Path(path).resolve())


def dataset_key(dataset_manifest) -> Optional[str]:
    """The store's config key (what decided its content), read from its manifest."""
    if not dataset_manifest:
        return None
    try:
        if "://" in str(dataset_manifest):
            import tensorflow as tf

            with tf.io.gfile.GFile(str(dataset_manifest), "r") as f:
                return json.loads(f.read()).get("config_key")
        return json.loads(Path(dataset_manifest).read_text(encoding="utf-8")).get("config_key")
    except (OSError, ValueError):
        return None


def write_lineage(run: Path, stage: str, cfg_yaml: str, *, parent: Optional[Path] = None,
                  dataset_manifest: Optional[Path] = None, extra: Optional[dict] = None) -> None:
    """config.yaml and manifest.json: enough to know where a run came from and redo it."""
    atomic_write_text(Path(run) / "config.yaml", cfg_yaml)
    manifest = {
        "stage": stage,
        "run": str(Path(run).resolve()),
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "parent_run": str(Path(parent).resolve()) if parent else None,
        "dataset_manifest": _resolved(dataset_manifest),
        "dataset_manifest_sha256": any_sha256(dataset_manifest) if dataset_manifest else None,
        "dataset_key": dataset_key(dataset_manifest),
        "versions": package_versions(),
        "git_commit": _git_commit(),
        "command": sys.argv,
        "host": platform.node(),
    }
    manifest.update(extra or {})
    atomic_write_json(Path(run) / "manifest.json", manifest)


def update_manifest(run: Path, **fields: Any) -> None:
    manifest = _manifest_json(run)
    manifest.update(fields)
    atomic_write_json(Path(run) / "manifest.json", manifest)
