"""How a run ended: its Outcome (the status summary.json reports and the exit code the
CLI returns, both decided here and nowhere else) and the RunReport run_batch returns."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import Aborted

__all__ = [
    "EXIT_BELOW_BAR",
    "EXIT_FAILED_LINES",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "Outcome",
    "RunReport",
]

EXIT_OK = 0
EXIT_FAILED_LINES = 2  # the run finished, some lines have an error record
EXIT_BELOW_BAR = 4  # the run finished, an eval score is under its bar (or dropped, in diff)
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM, by the shell's convention (128 + SIGINT)


class Outcome(enum.Enum):
    """The status of a session; its value is summary.json's `status`."""

    COMPLETE = "complete"  # every line of the input has a record
    PARTIAL = "partial"  # --limit left lines for a later run
    ABORTED = "aborted"  # a stop rule or guard fired: rerun to resume
    INTERRUPTED = "interrupted"  # a signal: rerun to resume

    def exit_code(self, failed_lines: int, below_bar: bool = False) -> int:
        """1 (raised, never returned here), 3 and 130 come before 4 (a score under its
        bar), which comes before 2 (some lines failed): a cron job reads the worst news."""
        if self is Outcome.ABORTED:
            return Aborted.exit_code
        if self is Outcome.INTERRUPTED:
            return EXIT_INTERRUPTED
        if below_bar:
            return EXIT_BELOW_BAR
        return EXIT_FAILED_LINES if failed_lines else EXIT_OK


@dataclass(frozen=True)
class RunReport:
    exit_code: int
    summary: dict[str, Any]
    outdir: Path
    repairs: tuple[str, ...] = ()
