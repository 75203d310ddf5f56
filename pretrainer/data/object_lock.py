"""One writer per dataset store on an object store (gs://, s3://, any filesystem
TensorFlow's gfile knows), where there is no flock.

A lock object beside the store (`<parent>/.<name>.lock`) holds who took it (a random
token, pid, host, time, command). Taking it: wait while another live holder has it
(saying whose it is and where the lock is), write ours, wait SETTLE_S and read it
back: if another writer's token replaced ours in that time, they took it and we wait
again. A holder on this machine whose process is gone is taken over at once; one on
another machine cannot be checked from here, so the waiting line says to delete the
lock object if that process is gone. GCS's read-after-write consistency makes the
read-back see the last writer; two starts within the same instant both read the one
token that stayed. (A generation-conditioned write, where a store offers one, would
close the window entirely; gfile does not expose it.)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import sys
import time
import uuid
from typing import Callable, Iterator, Optional

SETTLE_S = 1.0  # between writing the lock object and reading it back
POLL_S = 5.0  # between looks at a lock another process holds


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def _read(path: str) -> Optional[dict]:
    g = _gfile()
    try:
        with g.GFile(path, "r") as f:
            return json.loads(f.read() or "{}")
    except Exception:  # gone between exists() and open(), or not ours to parse
        return None if not g.exists(path) else {}


def _gone_here(holder: dict) -> bool:
    """The holder ran on this machine and its process no longer exists."""
    if holder.get("host") != platform.node() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def lock_path(store: str) -> str:
    parent, _, name = str(store).rstrip("/").rpartition("/")
    return f"{parent}/.{name}.lock"


@contextlib.contextmanager
def held(store: str, on_wait: Optional[Callable[[str], None]] = None) -> Iterator[str]:
    """Hold the store's lock object for the body; yields the lock's path."""
    g = _gfile()
    path = lock_path(store)
    g.makedirs(path.rpartition("/")[0])
    me = {"token": uuid.uuid4().hex, "pid": os.getpid(), "host": platform.node(),
          "since": _dt.datetime.now().isoformat(timespec="seconds"), "command": sys.argv}
    told = None
    while True:
        holder = _read(path)
        if holder is not None and not _gone_here(holder):
            who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since "
                   f"{holder.get('since', '?')}")
            if on_wait and who != told:
                on_wait(f"waiting for {who}, which is writing {store} (lock {path}; delete "
                        f"it if that process is gone)")
                told = who
            time.sleep(POLL_S)
            continue
        tmp = f"{path}.{me['token']}"  # written whole, then put in place (replacing)
        with g.GFile(tmp, "w") as f:
            f.write(json.dumps(me))
        g.rename(tmp, path, overwrite=True)
        time.sleep(SETTLE_S)
        if (_read(path) or {}).get("token") == me["token"]:
            break
    try:
        yield path
    finally:
        if (_read(path) or {}).get("token") == me["token"]:
            g.remove(path)
