"""Terminal output shared by every stage: rich progress bars that `-q` silences."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True)
_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence progress bars and informational messages (errors are always shown)."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def info(message: str) -> None:
    """Print a status line to stderr unless quiet."""
    if not _quiet:
        console.print(message)


@contextmanager
def progress_bar(description: str, total: float | None, unit: str = "") -> Iterator[callable]:
    """A progress bar as a context; yields `advance(n)`. Disabled when quiet or not a terminal."""
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn() if unit == "" else TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, disable=_quiet, transient=False) as progress:
        task = progress.add_task(description, total=total)

        def advance(n: float = 1) -> None:
            progress.update(task, advance=n)

        yield advance


def track(items: Iterable[T], description: str, total: float | None = None) -> Iterator[T]:
    """Iterate with a progress bar."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(description, total) as advance:
        for item in items:
            yield item
            advance(1)
