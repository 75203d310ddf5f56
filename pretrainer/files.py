"""Writing files so that a killed process never leaves half of one, their checksums, and
the OS-level locks that keep one writer per run directory or dataset store.

Every artifact goes to a temporary name in its own directory, is fsynced and then
renamed into place: a reader opens the old file or the whole new one. The lowest
layer of the package (it imports nothing of pretrainer but its errors).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from pretrainer.errors import RunError


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _as_umask_allows(path: Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create 0600/0700 whatever the umask; give the artifact the mode a
    plain open()/mkdir would (a TF Serving process or a teammate must be able to read it)."""
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_path(target: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success fsync and rename it into place.

    `suffix` keeps an extension a writer insists on (Keras wants `.keras`).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        _as_umask_allows(tmp_path)
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def atomic_write_bytes(target: Path, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: Path, text: str) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: Path, obj: Any) -> Path:
    return atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_with(target: Path, writer: Callable[[Path], None], suffix: str = "") -> Path:
    """Let `writer(tmp_path)` produce the file (model.save, savefig), then rename it."""
    with atomic_path(target, suffix=suffix) as tmp:
        writer(tmp)
    return Path(target)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Build a directory under a temporary name, then rename it to `target` (must not exist)."""
    target = Path(target)
    if target.exists():
        raise RunError(f"{target} already exists; refusing to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _as_umask_allows(tmp, directory=True)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()




def any_sha256(path) -> str:
    """sha256 of a local file, or of one on a TensorFlow filesystem (gs://...)."""
    if "://" not in str(path):
        return sha256_file(Path(path))
    import tensorflow as tf

    h = hashlib.sha256()
    with tf.io.gfile.GFile(str(path), "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# Locks this process holds: {resolved lock path: open file}. flock belongs to an open
# file, and a second open of the same file in this process would conflict with the
# first, so a stage that takes a lock its own process already holds keeps it.
_HELD: dict[str, Any] = {}


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, json.JSONDecodeError):
        return "another process"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} since {info.get('since', '?')}"


def acquire_lock(path: Path, what: str, *, wait: bool = False,
                 on_wait: Optional[Callable[[str], None]] = None) -> None:
    """Hold an OS-level lock (flock) on `path` until release_lock or process exit.

    Held by a live process: raise RunError naming it (or, with `wait`, block until it
    is free after telling `on_wait`). A lock left by a dead process is free (the OS
    drops flock locks when their process ends), so it is simply taken over.
    """
    import fcntl

    path = Path(path)
    key = str(path.resolve())
    if key in _HELD:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        who = _holder(path)
        if not wait:
            f.close()
            raise RunError(f"{what} is in use by {who}; wait for it to finish or stop it "
                           f"(lock: {path})") from None
        if on_wait:
            on_wait(f"waiting for {who}, which holds {what}")
        fcntl.flock(f, fcntl.LOCK_EX)
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": platform.node(),
                        "since": _dt.datetime.now().isoformat(timespec="seconds"),
                        "command": sys.argv}))
    f.flush()
    _HELD[key] = f


def holds_lock(path: Path) -> bool:
    """Whether this process holds the lock on `path`."""
    return str(Path(path).resolve()) in _HELD


def release_lock(path: Path) -> None:
    import fcntl

    f = _HELD.pop(str(Path(path).resolve()), None)
    if f is not None:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()
