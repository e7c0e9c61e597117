"""Terminal output shared by every stage: rich progress bars that `-q` silences.

On a terminal a bar redraws in place. When stderr is a pipe or a file (`scratchlm speedrun > log
2>&1`) a redrawn bar would show nothing until it ends, so each bar prints plain lines instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

T = TypeVar("T")

# Without a terminal, a bar whose description never changes still prints a line this often, so
# a long stage in a log file shows it is alive.
PLAIN_LINE_EVERY_S = 30.0

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
        # A terminal wraps at its width; a log file keeps each message on one line.
        console.print(message, soft_wrap=not console.is_terminal)


def _count(task: Task, unit: str) -> str:
    """'5/16', or the count alone while the total is unknown; then the unit, if any."""
    count = f"{task.completed:,.0f}" if task.total is None else f"{task.completed:,.0f}/{task.total:,.0f}"
    return f"{count} {unit}" if unit else count


class _CountColumn(ProgressColumn):
    """The count (and unit) while the total is unknown, where rich's columns would show '/?'."""

    def __init__(self, unit: str, known_total: MofNCompleteColumn | TaskProgressColumn) -> None:
        super().__init__()
        self._unit = unit
        self._known_total = known_total

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text(_count(task, self._unit), style="progress.download")
        return self._known_total.render(task)


class Bar:
    """A running progress bar: call it to advance, `update(...)` to change its text or total.

    A plain bar (stderr is no terminal) prints a line for each new description, and otherwise
    one every `PLAIN_LINE_EVERY_S` at most.
    """

    def __init__(self, progress: Progress, task: TaskID, unit: str = "", plain: bool = False) -> None:
        self._progress = progress
        self._task = task
        self._unit = unit
        self._plain = plain
        self._name = self._state().description
        self._printed: tuple[float, float | None, str] | None = None
        self._printed_at = progress.get_time()

    def __call__(self, n: float = 1) -> None:
        self._progress.update(self._task, advance=n)
        if self._plain and self._progress.get_time() - self._printed_at >= PLAIN_LINE_EVERY_S:
            self._print_line()

    def update(self, **fields: Any) -> None:
        self._progress.update(self._task, **fields)
        if self._plain and "description" in fields:
            self._print_line()

    def _state(self) -> Task:
        return next(task for task in self._progress.tasks if task.id == self._task)

    def _finish(self) -> None:
        task = self._state()
        if self._plain and self._printed != (task.completed, task.total, task.description):
            self._print_line()

    def _print_line(self) -> None:
        task = self._state()
        line = f"{self._name} {_count(task, self._unit)}, {task.elapsed or 0:.0f} s"
        if task.description != self._name:
            line += f": {task.description}"
        # soft_wrap: a log line stays one line, whatever width rich assumes for a file.
        console.print(line, highlight=False, soft_wrap=True)
        self._printed = (task.completed, task.total, task.description)
        self._printed_at = self._progress.get_time()


@contextmanager
def progress_bar(description: str, total: float | None, unit: str = "") -> Iterator[Bar]:
    """A progress bar as a context; yields a `Bar`. Disabled when quiet, plain lines when stderr
    is no terminal."""
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        _CountColumn(unit, MofNCompleteColumn() if unit == "" else TaskProgressColumn()),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    plain = not _quiet and not console.is_terminal and not console.is_jupyter
    # A disabled Progress still keeps the count and the clock that plain lines print.
    with Progress(*columns, console=console, disable=_quiet or plain, transient=False) as progress:
        bar = Bar(progress, progress.add_task(description, total=total), unit, plain)
        yield bar
        bar._finish()


def track(items: Iterable[T], description: str, total: float | None = None) -> Iterator[T]:
    """Iterate with a progress bar."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(description, total) as advance:
        for item in items:
            yield item
            advance(1)
