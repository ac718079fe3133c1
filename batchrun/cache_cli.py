"""`batchrun cache info|clear`: the request cache from the command line.

A click group of its own on the CLI's classes (cli_base.py: usage errors exit 1, options
read BATCHRUN_CACHE_<COMMAND>_<OPTION>), attached to the main CLI by cli.py.
"""

from __future__ import annotations

from pathlib import Path

import click
import orjson

from .cache import RequestCache, default_cache_dir
from .cli_base import CONTEXT, ENV_PREFIX, Command, Group

__all__ = ["cache"]

_dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="BATCHRUN_CACHE_DIR",
    show_envvar=True,
    help="Cache directory. Default: $XDG_CACHE_HOME/batchrun, else ~/.cache/batchrun.",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


class _CacheCommand(Command):
    env_prefix = f"{ENV_PREFIX}_CACHE"


class _CacheGroup(Group):
    command_class = _CacheCommand


@click.group(cls=_CacheGroup, context_settings=CONTEXT)
def cache() -> None:
    """The request cache of `batchrun run --cache`: replies stored on this machine.

    \b
    Examples:
      batchrun cache info            # where it is, how many entries, how big
      batchrun cache clear           # remove every stored reply
    """


@cache.command(context_settings=CONTEXT)
@_dir_option
@_json_option
def info(directory: Path | None, as_json: bool) -> None:
    """Show the cache directory, its entries and their size."""
    found = RequestCache(directory or default_cache_dir()).info()
    if as_json:
        click.echo(orjson.dumps(found.to_dict()).decode())
        return
    click.echo(f"directory: {found.directory}")
    click.echo(f"entries:   {found.entries} ({_size(found.bytes)})")
    if found.partial:
        click.echo(f"partial:   {found.partial} (left by interrupted writes; clear removes them)")


@cache.command(context_settings=CONTEXT)
@_dir_option
@_json_option
def clear(directory: Path | None, as_json: bool) -> None:
    """Remove every stored reply (the next runs send those requests again)."""
    store = RequestCache(directory or default_cache_dir())
    before = store.info()
    removed = store.clear()
    if as_json:
        report = {"directory": str(store.directory), "removed": removed, "bytes": before.bytes}
        click.echo(orjson.dumps(report).decode())
        return
    click.echo(f"removed {removed} entries ({_size(before.bytes)}) from {store.directory}")


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} bytes"
    size = count / 1024
    for unit in ("KB", "MB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
