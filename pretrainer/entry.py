"""The `pretrainer` console script: a cached answer for `pretrainer --help`, else the CLI.

Importing Typer and Rich alone costs more than the 0.1 s a help screen should
take, so the top-level help screen (`pretrainer --help`, `-h`) is
rendered by Typer once, stored under the user's cache folder and printed from
there afterwards. The cache key covers everything the screen depends on: Python,
the size and modification time of the CLI's source files (the version included)
and of the installed Typer, Click and Rich, and the terminal (a tty or not, its
size, the colour and width variables Rich reads), so an
edited CLI, an upgrade or a wider terminal renders afresh. Nothing else is
cached; every other invocation goes straight to `pretrainer.cli`.

This module imports only the standard library.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import sys
from pathlib import Path

HELP_ARGS = (["--help"], ["-h"])
# what Rich and Typer read from the environment when they lay out the screen
_ENV = ("COLUMNS", "LINES", "TERM", "COLORTERM", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE",
        "TTY_INTERACTIVE", "_TYPER_FORCE_DISABLE_TERMINAL", "TYPER_USE_RICH",
        "_TYPER_STANDARD_TRACEBACK", "JUPYTER_COLUMNS", "JUPYTER_LINES", "LANG", "LC_ALL")
_SOURCES = ("cli/__init__.py", "config/__init__.py", "__init__.py", "entry.py")


def cache_dir() -> Path:
    """$PRETRAINER_CACHE, else $XDG_CACHE_HOME/pretrainer, else ~/.cache/pretrainer."""
    if os.environ.get("PRETRAINER_CACHE"):
        return Path(os.environ["PRETRAINER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pretrainer"


def help_key(args, stream) -> str:
    """A digest of what the help screen depends on (see the module docstring)."""
    here = Path(__file__).resolve().parent
    parts = [sys.version, repr(args), sys.executable]
    for name in _SOURCES:
        try:
            st = (here / name).stat()
            parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{name}:missing")
    try:
        tty = stream.isatty()
        size = os.get_terminal_size(stream.fileno()) if tty else None
    except (OSError, ValueError, AttributeError):
        tty, size = False, None
    for lib in ("typer", "click", "rich"):  # an upgrade renders differently
        try:
            spec = importlib.util.find_spec(lib)  # finds, does not import
            st = os.stat(spec.origin)
            parts.append(f"{lib}:{spec.origin}:{st.st_size}:{st.st_mtime_ns}")
        except (ImportError, AttributeError, TypeError, ValueError, OSError):
            parts.append(f"{lib}:missing")
    parts.append(f"tty={tty}:{size}")
    parts += [f"{k}={os.environ.get(k)}" for k in _ENV]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


class _Tee(io.TextIOBase):
    """Writes to the real stdout and keeps a copy; looks like that stdout to Rich
    (same tty-ness, file number and encoding), so the copy is what the user saw."""

    def __init__(self, stream):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, s):
        self.copy.write(s)
        return self.stream.write(s)

    def flush(self):
        self.stream.flush()

    def isatty(self):
        return self.stream.isatty()

    def fileno(self):
        return self.stream.fileno()

    @property
    def encoding(self):
        return getattr(self.stream, "encoding", "utf-8")


def _write_atomic(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:  # a read-only home: no cache, the next call renders again
        pass


def _cli() -> None:
    from pretrainer.cli import main as cli_main  # Typer and Rich: only when needed

    cli_main()


STOPPED = 143  # the exit code of a command stopped by SIGTERM (cli/running.py)
_exit_code: list = []


def _leave_after_sigterm() -> None:
    """Registered before anything else, so it runs after every other atexit handler
    (logging's, TensorFlow's): a command stopped by SIGTERM has saved its run and said
    so, and what remains is the interpreter's teardown of TensorFlow (thread pools, C++
    destructors), measured at ~1.2 s on 2 cores, while a scheduler that sent SIGTERM
    counts down to SIGKILL. Objects nobody holds any more are collected (summary writers
    flush as they go), output is flushed, and the process ends."""
    if _exit_code != [STOPPED]:
        return
    import gc

    gc.collect()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(STOPPED)


def main() -> None:
    args = sys.argv[1:]
    if args not in HELP_ARGS or os.environ.get("PRETRAINER_NO_HELP_CACHE"):
        import atexit

        atexit.register(_leave_after_sigterm)
        try:
            _cli()
        except SystemExit as exc:
            _exit_code.append(exc.code)
            raise
        return
    path = cache_dir() / f"help-{help_key(args, sys.stdout)}.txt"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = None
    if text:
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:  # `pretrainer --help | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    real, tee = sys.stdout, _Tee(sys.stdout)
    sys.stdout = tee
    code = 0
    try:
        _cli()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.stdout = real
    if code == 0 and tee.copy.getvalue():  # only a screen that came out whole
        _write_atomic(path, tee.copy.getvalue())
    sys.exit(code)
