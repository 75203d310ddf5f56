"""The Rich console every stage prints through, and how user errors look."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

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
