"""The Rich console every stage prints through, and how user errors look."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from typing import Callable, Iterator, Optional

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

# --debug: TensorFlow's start-up lines are shown (quiet_tensorflow does nothing)
TF_NOISE = False

# Logs and CI are not terminals: Rich would wrap tables at 80 columns there.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)


def esc(value) -> str:
    """A user-supplied value (path, file or class name) safe to put in a markup string:
    Rich would read `bad[/b].jpg` as a closing tag and crash, or swallow `[bold]`."""
    return escape(str(value))


def info(msg: str) -> None:
    """Print `msg` (our markup; interpolate user values through esc()). Not wrapped:
    paths and commands in it must stay whole for a user to copy them from a log."""
    console.print(msg, soft_wrap=True)


def warn(msg: str) -> None:
    """Plain text (no markup is read in it); not wrapped, like info()."""
    err_console.print(f"[yellow]warning:[/yellow] {escape(msg)}", soft_wrap=True)


def error(msg: str) -> None:
    """Plain text (no markup is read in it)."""
    err_console.print(f"[bold red]error:[/bold red] {escape(msg)}", soft_wrap=True)


def styled(text: str, style: str) -> Text:
    """A table cell with a style (cells are otherwise plain text)."""
    return Text(text, style=style)


def table(title: str, columns: list[str], rows: list[list]) -> Table:
    """A table of plain values: no markup is read in the title or cells (use styled())."""
    # min_width: a narrow table would wrap its title mid-phrase in logs
    t = Table(title=escape(title), title_justify="left", min_width=min(len(title), 120))
    for col in columns:
        t.add_column(escape(col))
    for row in rows:
        t.add_row(*[c if isinstance(c, Text) else escape(str(c)) for c in row])
    return t


@contextlib.contextmanager
def progress(label: Optional[str], total: Optional[int], unit: str = "items",
             every_s: float = 20.0) -> Iterator[Callable[[int], None]]:
    """`advance(n)` for a long step: a bar on a terminal, a line every `every_s` seconds
    in logs (where a bar would print nothing or garbage), and one closing line with the
    count, the time and the rate. label=None: silent."""
    if label is None:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    t0 = last = time.perf_counter()
    done = 0
    with Progress(TextColumn(escape(label)), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task("", total=total)

        def advance(n: int) -> None:
            nonlocal done, last
            done += n
            bar.advance(task, n)
            now = time.perf_counter()
            if not console.is_terminal and now - last >= every_s:
                last = now
                of = f"/{total}" if total else ""
                console.print(f"  {escape(label)}: {done}{of} {unit} "
                              f"({done / (now - t0):,.0f}/s)", soft_wrap=True)

        yield advance
    wall = time.perf_counter() - t0
    rate = f", {done / wall:,.0f}/s" if wall > 0 and done else ""
    console.print(f"  {escape(label)}: {done} {unit} in {wall:.1f} s{rate}", soft_wrap=True)


def quiet_tensorflow() -> None:
    """Import TensorFlow and Keras with stderr muted; --debug (TF_NOISE) shows everything.

    TF 2.21 prints absl lines (oneDNN, "Could not find cuda drivers") before its
    log level is read, so TF_CPP_MIN_LOG_LEVEL alone cannot hide them: mute fd 2
    for the import only. An import failure still raises after stderr is back.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not TF_NOISE:
        # a saved model loaded for inference or finetuning gets a new optimizer: Keras
        # warns (three times per text pipeline) that the saved optimizer state is skipped,
        # which is the intent. Only that case: an optimizer with 0 variables.
        warnings.filterwarnings("ignore", message=r"Skipping variable loading for optimizer "
                                r"'[^']*', because it has 0 variables")
    if "tensorflow" in sys.modules or TF_NOISE:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                import keras  # noqa: F401  (TID253: deliberately inside a function)
                import tensorflow  # noqa: F401
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
    # "N out of the last M calls ... triggered tf.function retracing": expected when a
    # stage predicts with several models in one process, and no use to a user.
    tensorflow.get_logger().setLevel("ERROR")
