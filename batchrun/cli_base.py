"""The click classes every command group of the CLI is built on: usage errors exit 1,
and every option reads an environment variable named after its command and long flag.

Apart from cli.py so that command groups defined in their own modules (cache_cli.py) use
the same classes without importing the CLI that attaches them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import click

__all__ = ["CONTEXT", "ENV_PREFIX", "USAGE_EXIT", "Command", "Group"]

ENV_PREFIX = "BATCHRUN"
CONTEXT = {"help_option_names": ["-h", "--help"]}
USAGE_EXIT = 1


@contextlib.contextmanager
def _usage_exits_1() -> Iterator[None]:
    try:
        yield
    except click.UsageError as exc:
        exc.exit_code = USAGE_EXIT  # type: ignore[misc]  # click's ClassVar, on purpose
        raise


class Command(click.Command):
    """A command whose options read <env_prefix>_<COMMAND>_<OPTION> (BATCHRUN_RUN_LIMIT),
    named after the long flag (not the Python parameter), and say so in --help. A
    subgroup's commands set `env_prefix` to include the group (BATCHRUN_CACHE_INFO_JSON)."""

    env_prefix: ClassVar[str] = ENV_PREFIX

    def __init__(self, name: str | None, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        prefix = f"{self.env_prefix}_{name or ''}".upper().replace("-", "_")
        for param in self.params:
            if isinstance(param, click.Option) and param.envvar is None:
                flag = max(param.opts, key=len).lstrip("-")
                param.envvar = f"{prefix}_{flag.upper().replace('-', '_')}"
                param.show_envvar = True


class Group(click.Group):
    """Usage errors (a typo'd flag, a bad value, a missing argument) exit 1, not click's 2."""

    command_class = Command

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        with _usage_exits_1():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _usage_exits_1():
            return super().invoke(ctx)
