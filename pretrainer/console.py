"""The Rich console every stage prints through, and how user errors look."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

# Logs and CI are not terminals: Rich would wrap tables at 80 columns there.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)


def info(msg: str) -> None:
    console.print(msg)


def warn(msg: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {msg}")


def error(msg: str) -> None:
    err_console.print(f"[bold red]error:[/bold red] {msg}", soft_wrap=True)


def table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*[str(c) for c in row])
    return t
