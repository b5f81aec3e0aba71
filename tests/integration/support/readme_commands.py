"""The README's runnable lab commands: the fenced blocks marked ``<!-- lab-test -->``.

A block is runnable when the line right before its opening fence is exactly
``<!-- lab-test -->`` (an HTML comment: invisible to readers of the rendered README).
Every non-blank line of such a block is one shell command; a trailing ``\\`` joins the
next line, and ``  # ...`` after the command is a comment for readers, not run.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

MARKER = "<!-- lab-test -->"
README = Path(__file__).resolve().parents[3] / "README.md"

_FENCE = re.compile(r"^```")
_COMMENT = re.compile(r"\s+#\s.*$")
_DESTRUCTIVE = ("down",)


@dataclass(frozen=True)
class Command:
    line: str       # as written in the README (comment removed)
    readme_line: int

    @property
    def destructive(self) -> bool:
        """Tears the lab down, so it has to run after every other command."""
        words = self.line.split()
        return words[:1] == ["overlay-lab"] and any(w in _DESTRUCTIVE for w in words[1:2])


def marked_blocks(text: str) -> list[list[tuple[int, str]]]:
    """The bodies of the marked blocks, each a list of (1-based line number, line)."""
    lines = text.splitlines()
    blocks: list[list[tuple[int, str]]] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == MARKER and i + 1 < len(lines) and _FENCE.match(lines[i + 1]):
            body = []
            j = i + 2
            while j < len(lines) and not _FENCE.match(lines[j]):
                body.append((j + 1, lines[j]))
                j += 1
            if j == len(lines):
                raise ValueError(f"README line {i + 2}: a marked block is never closed")
            blocks.append(body)
            i = j
        i += 1
    return blocks


def commands(text: str) -> list[Command]:
    """Every command of the marked blocks in README order, continuations joined."""
    found = []
    for block in marked_blocks(text):
        pending, start = "", 0
        for number, raw in block:
            line = _COMMENT.sub("", raw).rstrip()
            if not pending:
                start = number
            if line.endswith("\\"):
                pending += line[:-1].strip() + " "
                continue
            line = (pending + line.strip()).strip()
            pending = ""
            if line:
                found.append(Command(line, start))
    return found


def in_run_order(cmds: list[Command]) -> list[Command]:
    """README order, except that what tears the lab down runs last."""
    return [c for c in cmds if not c.destructive] + [c for c in cmds if c.destructive]


def for_lab(line: str, name: str, lab_dir: str) -> str:
    """The substitution rule: each ``overlay-lab`` that starts a command of the line (the
    line's start, or after ``|``, ``;``, ``&&``) gets ``--name NAME --lab-dir DIR`` right
    after it, so the README's commands run against the test's lab and never the user's
    default one.  Nothing else of the line changes."""
    flags = f"overlay-lab --name {shlex.quote(name)} --lab-dir {shlex.quote(lab_dir)}"
    return re.sub(r"(^|\|\s*|;\s*|&&\s*)overlay-lab(?=\s|$)",
                  lambda m: m.group(1) + flags, line)
