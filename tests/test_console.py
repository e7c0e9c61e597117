"""Progress output on a terminal, in a log file (plain lines) and under -q."""

from __future__ import annotations

import functools
import io

import pytest
from rich.console import Console
from rich.progress import Progress

import scratchlm.console as console_module
from scratchlm.console import progress_bar, set_quiet, track


def _capture(monkeypatch: pytest.MonkeyPatch, terminal: bool) -> io.StringIO:
    """Send scratchlm's console to a buffer that is, or is not, a terminal."""
    buffer = io.StringIO()
    monkeypatch.setattr(console_module, "console", Console(file=buffer, force_terminal=terminal, width=120))
    return buffer


def _fake_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A clock the test moves by hand: progress bars read the time from it."""
    now = [0.0]
    monkeypatch.setattr(console_module, "Progress", functools.partial(Progress, get_time=lambda: now[0]))
    return now


def test_plain_lines_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    set_quiet(False)
    out = _capture(monkeypatch, terminal=False)
    now = _fake_clock(monkeypatch)
    with progress_bar("training", total=10) as bar:
        bar(3)
        now[0] = 12.0
        bar.update(description="step 3 loss 2.500 lr 6.0e-04 1,234 tok/s MFU 5%, a description longer than the 120 columns the console is wide, which a log line keeps whole")
        bar(7)
    # One line per new description, one at the end; never wrapped, no escape codes.
    assert out.getvalue().splitlines() == [
        "training 3/10, 12 s: step 3 loss 2.500 lr 6.0e-04 1,234 tok/s MFU 5%, a description longer than the 120 columns the console is wide, which a log line keeps whole",
        "training 10/10, 12 s: step 3 loss 2.500 lr 6.0e-04 1,234 tok/s MFU 5%, a description longer than the 120 columns the console is wide, which a log line keeps whole",
    ]


def test_plain_bar_without_descriptions_prints_every_30_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    set_quiet(False)
    out = _capture(monkeypatch, terminal=False)
    now = _fake_clock(monkeypatch)
    with progress_bar("stage 1/2: clean", total=None, unit="shards") as advance:
        for _ in range(10):
            now[0] += 10.0
            advance(1)
    assert out.getvalue().splitlines() == [
        "stage 1/2: clean 3 shards, 30 s",
        "stage 1/2: clean 6 shards, 60 s",
        "stage 1/2: clean 9 shards, 90 s",
        "stage 1/2: clean 10 shards, 100 s",
    ]


def test_plain_track_prints_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    set_quiet(False)
    out = _capture(monkeypatch, terminal=False)
    assert list(track(range(5), "items")) == [0, 1, 2, 3, 4]
    assert out.getvalue() == "items 5/5, 0 s\n"


def test_plain_info_line_is_not_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    set_quiet(False)
    out = _capture(monkeypatch, terminal=False)
    message = "trained 281 tokens " + "and more words " * 20
    console_module.info(message)
    assert out.getvalue() == message + "\n"


@pytest.mark.parametrize("terminal", [True, False])
def test_quiet_prints_nothing(monkeypatch: pytest.MonkeyPatch, terminal: bool) -> None:
    set_quiet(True)
    out = _capture(monkeypatch, terminal=terminal)
    with progress_bar("training", total=10) as bar:
        bar.update(description="step 1 loss 2.5")
        bar(10)
    console_module.info("a status line")
    assert out.getvalue() == ""


def test_terminal_keeps_the_live_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    set_quiet(False)
    out = _capture(monkeypatch, terminal=True)
    with progress_bar("training", total=10) as bar:
        bar.update(description="step 1 loss 2.5")
        bar(10)
    text = out.getvalue()
    assert "\x1b[" in text and "━" in text and "10/10" in text  # rich's drawn bar
    assert "training 0/10" not in text  # no plain lines


@pytest.mark.parametrize("terminal", [True, False])
@pytest.mark.parametrize(("unit", "shown"), [("documents", "12,345 documents"), ("", "12,345")])
def test_unknown_total_shows_the_count_alone(monkeypatch: pytest.MonkeyPatch, terminal: bool, unit: str, shown: str) -> None:
    set_quiet(False)
    out = _capture(monkeypatch, terminal=terminal)
    with progress_bar("tokenizing documents", total=None, unit=unit) as advance:
        advance(12345)
    assert shown in out.getvalue()
    assert "/?" not in out.getvalue()
