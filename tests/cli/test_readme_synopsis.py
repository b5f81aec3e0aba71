"""The README's overlayctl synopses name only commands and options that ``--help`` has."""

import re
from pathlib import Path

import click
import pytest

from overlay.cli import cli

README = Path(__file__).resolve().parents[2] / "README.md"


def synopses() -> list[str]:
    """The overlayctl lines of the README's "## overlayctl" block, continuations joined."""
    text = README.read_text()
    block = text.split("## overlayctl\n", 1)[1].split("```", 2)[1]
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.split("#", 1)[0].strip() for line in joined.splitlines()
            if line.startswith("overlayctl")]


def command_of(words: list[str]) -> tuple[click.Command, list[str]]:
    cmd: click.Command = cli
    path = []
    for w in words:
        if isinstance(cmd, click.Group) and w in cmd.commands:
            cmd = cmd.commands[w]
            path.append(w)
    return cmd, path


def test_the_block_is_found():
    assert len(synopses()) >= 10


@pytest.mark.parametrize("line", synopses())
def test_each_option_of_a_synopsis_is_an_option_of_its_command(line):
    words = line.split()[1:]
    cmd, path = command_of(words)
    assert path or words == ["--version"], line
    ctx = click.Context(cmd, info_name="overlayctl")
    known = {o for p in cmd.get_params(ctx) for o in (*p.opts, *p.secondary_opts)}
    given = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", line))
    assert given <= known, (line, given - known)
