"""Regenerate the command reference in README.md from the CLI itself.

python docs/cli_help.py          # rewrite README.md
python docs/cli_help.py --check  # exit 1 if README.md is out of date (tests do this)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from click.testing import CliRunner

from batchrun.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"
COMMANDS = (
    ["run"],
    ["validate"],
    ["report"],
    ["mock-server"],
    ["cache", "info"],
    ["cache", "clear"],
    ["diff"],
)
BLOCK = re.compile(r"(<!-- help:(?P<name>[\w-]+) -->\n).*?(<!-- /help -->)", re.S)


def render(command: list[str]) -> str:
    result = CliRunner().invoke(
        main, [*command, "--help"], terminal_width=100, prog_name="batchrun"
    )
    return "```text\n" + result.output.rstrip() + "\n```"


def updated(text: str) -> str:
    helps = {" ".join(c).replace(" ", "-"): render(c) for c in COMMANDS}
    return BLOCK.sub(lambda m: m.group(1) + helps[m.group("name")] + "\n" + m.group(3), text)


if __name__ == "__main__":
    current = README.read_text()
    fresh = updated(current)
    if "--check" in sys.argv:
        sys.exit(0 if fresh == current else 1)
    README.write_text(fresh)
