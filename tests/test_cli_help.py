"""Every command answers `-h` with its usage and examples, and every example parses.

The commands are discovered from the click tree typer builds, so a new command is covered (and
must have examples) without touching this file. That tree is typed `Any` and its groups found by
their `commands`: typer 0.29 builds it from its own copy of click, older typer from click itself.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from scratchlm.cli import app

CLI = [sys.executable, "-c", "from scratchlm.cli import main; main()"]
ROOT = typer.main.get_command(app)


def _subcommands(command: Any) -> dict[str, Any]:
    return getattr(command, "commands", {})


def _tree(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every group and command under `command`, with the words that name it."""
    found = [(path, command)]
    for name, sub in _subcommands(command).items():
        found += _tree(sub, (*path, name))
    return found


COMMANDS = _tree(ROOT)


def _examples(command: Any) -> list[list[str]]:
    """The words after `scratchlm` of each example in the command's help."""
    lines = (command.help or "").partition("Examples:")[2].splitlines()
    examples = []
    for line in lines:
        words = shlex.split(line, comments=True)
        if "scratchlm" in words:
            examples.append(words[len(words) - words[::-1].index("scratchlm") :])
    return examples


def test_the_tree_is_discovered() -> None:
    paths = {path for path, _ in COMMANDS}
    assert {(), ("data",), ("data", "prepare"), ("tokenizer", "encode"), ("train",), ("generate",), ("speedrun",)} <= paths
    assert len(paths) >= 14


@pytest.mark.parametrize("path", [path for path, _ in COMMANDS], ids=lambda path: " ".join(path) or "scratchlm")
def test_dash_h_shows_usage_and_examples(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "-h"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    assert "Example" in result.output


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(path) or "scratchlm" for path, _ in COMMANDS])
def test_every_example_parses(path: tuple[str, ...], command: Any) -> None:
    examples = _examples(command)
    assert examples, f"`scratchlm {' '.join(path)}` has no examples in its help"
    for words in examples:
        target, named = ROOT, []
        while words and words[0] in _subcommands(target):
            target = _subcommands(target)[words[0]]
            named.append(words.pop(0))
        if not _subcommands(command):
            assert tuple(named) == path, f"an example of `scratchlm {' '.join(path)}` runs `scratchlm {' '.join(named)}`"
        assert named and not _subcommands(target), f"the example `scratchlm {shlex.join(named + words)}` names no command"
        try:
            target.make_context(named[-1], words)
        except Exception as error:  # click's UsageError, from whichever click typer uses
            pytest.fail(f"the example `scratchlm {shlex.join(named + words)}` does not parse: {error}")


@pytest.mark.parametrize("args", [["-h"], ["data", "-h"], ["tokenizer", "encode", "-h"], ["train", "-h"]], ids=" ".join)
def test_dash_h_from_the_command_line(args: list[str]) -> None:
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout and "Example" in result.stdout
