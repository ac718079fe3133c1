"""The command line: parse flags, call the library, print, exit. No work happens here.

Every option can also be set by environment variable: BATCHRUN_<COMMAND>_<OPTION>,
e.g. BATCHRUN_RUN_CONCURRENCY=64.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import click
import orjson
from rich.console import Console

from ._version import __version__
from .config import (
    DEFAULT_API_KEY_ENV,
    DEFAULT_BASE_URL,
    RetryConfig,
    RunConfig,
    Timeouts,
    is_duration,
)
from .config import default_outdir as _default_outdir
from .errors import BatchrunError
from .mockserver import FAULT_KINDS, MockConfig, MockServer, serve
from .progress import render_summary
from .runner import EXIT_INTERRUPTED, RunReport, run_batch

__all__ = ["main"]

MOCK_KEY = "mock-key"
CONTEXT = {"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "BATCHRUN"}


class _Seconds(click.ParamType[float, "str | float"]):
    """A duration flag: a finite number of seconds > 0, refused at parse time otherwise."""

    name = "secs"

    def convert(
        self, value: str | float, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not is_duration(seconds):
            self.fail(f"{value!r} is not a finite number of seconds > 0", param, ctx)
        return seconds


SECONDS = _Seconds()


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="batchrun")
def main() -> None:
    """Run large batches of chat-completion requests from JSONL files, crash-safe.

    \b
    Try it with no key and no network:
      batchrun run jobs/demo.jsonl --mock
    """


@main.command(context_settings=CONTEXT)
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    "outdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory. Default: INPUT's name with .batchrun, next to it.",
)
@click.option("-c", "--concurrency", default=32, show_default=True, help="Requests in flight.")
@click.option("--max-attempts", default=5, show_default=True, help="Attempts per line.")
@click.option(
    "--timeout",
    type=SECONDS,
    default=300.0,
    show_default=True,
    help="Deadline for a whole non-streamed attempt, connect to last byte.",
)
@click.option(
    "--connect-timeout",
    type=SECONDS,
    default=10.0,
    show_default=True,
    help="Deadline for opening a connection.",
)
@click.option("--stream", is_flag=True, help="Send every line as a streamed request (SSE).")
@click.option(
    "--stream-idle-timeout",
    type=SECONDS,
    default=60.0,
    show_default=True,
    help="Max seconds a stream may go without an event carrying data (comments don't count).",
)
@click.option(
    "--stream-timeout",
    type=SECONDS,
    default=600.0,
    show_default=True,
    help="Deadline for a whole streamed attempt.",
)
@click.option(
    "--base-url",
    default=DEFAULT_BASE_URL,
    show_default=True,
    help="Any server speaking the Mistral/OpenAI chat API.",
)
@click.option(
    "--api-key-env",
    default=DEFAULT_API_KEY_ENV,
    show_default=True,
    help="Environment variable holding the API key.",
)
@click.option(
    "-m",
    "--model",
    help="Model for lines that name none (required for Mistral batch lines without one).",
)
@click.option("--mock", is_flag=True, help="Start the built-in mock server and run against it.")
@click.option(
    "--mock-latency-ms",
    default=250.0,
    show_default=True,
    help="With --mock: server latency per request.",
)
@click.option(
    "--mock-fail-rate",
    default=0.03,
    show_default=True,
    help="With --mock: share of requests answered with a transient fault (retried).",
)
@click.option("--fresh", is_flag=True, help="Discard OUTDIR's previous state and start over.")
@click.option(
    "--retry-failed",
    is_flag=True,
    help="On resume, re-send lines that failed with a retryable error.",
)
@click.option("--limit", type=int, help="Only the first N lines.")
@click.option(
    "--max-line-bytes",
    default=10 * 1024 * 1024,
    show_default=True,
    help="Longer lines become invalid_input records.",
)
@click.option(
    "--grace-period",
    default=30.0,
    show_default=True,
    help="Seconds in-flight requests get to finish after Ctrl-C.",
)
@click.option("--allow-insecure-http", is_flag=True, help="Allow http:// to non-loopback hosts.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary table.")
@click.option("--json", "as_json", is_flag=True, help="Print summary.json to stdout at the end.")
def run(
    input_path: Path,
    outdir: Path | None,
    concurrency: int,
    max_attempts: int,
    timeout: float,
    connect_timeout: float,
    stream: bool,
    stream_idle_timeout: float,
    stream_timeout: float,
    base_url: str,
    api_key_env: str,
    model: str | None,
    mock: bool,
    mock_latency_ms: float,
    mock_fail_rate: float,
    fresh: bool,
    retry_failed: bool,
    limit: int | None,
    max_line_bytes: int,
    grace_period: float,
    allow_insecure_http: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Send every line of INPUT and write results.jsonl, errors.jsonl, summary.json.

    Rerunning the same command resumes: completed lines are never sent again.

    \b
    Examples:
      batchrun run jobs/demo.jsonl --mock                  # no key, no network
      MISTRAL_API_KEY=... batchrun run labels.jsonl -o out/ -c 64
      batchrun run batch.jsonl -m mistral-small-latest     # Mistral batch lines
      batchrun run evals.jsonl --stream --json > summary.json
      batchrun run labels.jsonl -o out/ --retry-failed     # resume, re-send failures
    """
    err = Console(stderr=True)
    with _mock_server(mock, mock_latency_ms, mock_fail_rate) as mock_url:
        api_key = (os.environ.get(api_key_env) or MOCK_KEY) if mock_url else None
        report = _run_or_exit(
            err,
            api_key,
            show_progress=not quiet,
            config_args={
                "input_path": input_path,
                "outdir": outdir or _default_outdir(input_path),
                "base_url": mock_url or base_url,
                "api_key_env": api_key_env,
                "model": model,
                "concurrency": concurrency,
                "stream": stream,
                "limit": limit,
                "fresh": fresh,
                "retry_failed": retry_failed,
                "allow_insecure_http": allow_insecure_http,
                "max_line_bytes": max_line_bytes,
                "grace_period": grace_period,
                "timeouts": Timeouts(
                    connect=connect_timeout,
                    read=timeout,
                    stream_idle=stream_idle_timeout,
                    stream_total=stream_timeout,
                ),
                "retry": RetryConfig(max_attempts=max_attempts),
            },
        )
    for repair in report.repairs:
        err.print(f"[yellow]repaired[/]: {repair}")
    if not quiet:
        render_summary(report.summary, err)
        err.print(f"results: {report.outdir / 'results.jsonl'}")
    if as_json:
        click.echo(orjson.dumps(report.summary, option=orjson.OPT_INDENT_2).decode())
    sys.exit(report.exit_code)


def _run_or_exit(
    err: Console, api_key: str | None, *, show_progress: bool, config_args: dict[str, object]
) -> RunReport:
    try:
        config = RunConfig(**config_args)  # type: ignore[arg-type]
        return anyio.run(
            lambda: run_batch(config, api_key=api_key, console=err, show_progress=show_progress),
            backend_options=_loop_options(),
        )
    except BatchrunError as exc:
        err.print(f"[red]error[/]: {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted before the run started; nothing was sent")
        sys.exit(EXIT_INTERRUPTED)


def _loop_options() -> dict[str, bool]:
    """uvloop where it is installed (Linux/macOS): it halves the event loop's share of
    the CPU per request (benchmarks/client_cpu.py); plain asyncio elsewhere."""
    return {"use_uvloop": importlib.util.find_spec("uvloop") is not None}


@contextlib.contextmanager
def _mock_server(enabled: bool, latency_ms: float, fail_rate: float) -> Iterator[str | None]:
    if not enabled:
        yield None
        return
    with MockServer(MockConfig(latency_ms=latency_ms, fail_rate=fail_rate)) as server:
        yield server.url


@main.command("mock-server", context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8089, show_default=True, help="0 picks a free port.")
@click.option("--latency-ms", default=0.0, show_default=True)
@click.option("--jitter-ms", default=0.0, show_default=True)
@click.option(
    "--fail-rate",
    default=0.0,
    show_default=True,
    help="Share of requests answered with a transient fault (500/503/429/drop).",
)
@click.option("--fault", type=click.Choice(FAULT_KINDS), help="Apply this fault to every request.")
@click.option("--stream-chunks", default=8, show_default=True)
@click.option("--stream-delay-ms", default=0.0, show_default=True)
@click.option("--retry-after", default=1.0, show_default=True, help="Retry-After on 429s, s.")
@click.option("--seed", default=0, show_default=True)
@click.option("--no-auth", is_flag=True, help="Accept requests without a bearer token.")
@click.option(
    "--request-log",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append one JSON line per request received.",
)
def mock_server(
    host: str,
    port: int,
    latency_ms: float,
    jitter_ms: float,
    fail_rate: float,
    fault: str | None,
    stream_chunks: int,
    stream_delay_ms: float,
    retry_after: float,
    seed: int,
    no_auth: bool,
    request_log: Path | None,
) -> None:
    """Serve a Mistral-compatible chat API on HOST:PORT, with faults on demand.

    Per request, a header `x-mock-fault: KIND` or a body field
    `"metadata": {"mock": {"fault": KIND, "times": N}}` picks a fault. The stream
    faults keepalive (only `: keep-alive` comments) and trickle (a word at a time,
    forever) never end by themselves.

    A body field `"metadata": {"mock": {"raw": {"status": S, "headers": [[NAME, VALUE],
    ...], "body": TEXT}}}` scripts the whole reply; `"events": [DATA, {"raw": TEXT}, ...]`
    instead of `body` sends an event stream, a string as `data: DATA`, a raw item
    verbatim. Header values with CR/LF, framing headers and bodiless statuses get a 400.
    `"drip_ms": N` sends any reply one byte every N ms.

    \b
    Examples:
      batchrun mock-server --port 8089 --latency-ms 200
      batchrun mock-server --fail-rate 0.1 --fault 429 --retry-after 0.5
    """
    config = MockConfig(
        latency_ms=latency_ms,
        jitter_ms=jitter_ms,
        fail_rate=fail_rate,
        fault=fault,
        seed=seed,
        stream_chunks=stream_chunks,
        stream_delay_ms=stream_delay_ms,
        retry_after_s=retry_after,
        require_auth=not no_auth,
        request_log=request_log,
    )

    def ready(bound: int) -> None:
        click.echo(f"mock server listening on http://{host}:{bound}", err=True)

    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(lambda: serve(config, host, port, ready=ready))
