"""The command line: parse flags, call the library, print, exit. No work happens here.

Every option can also be set by environment variable: BATCHRUN_<COMMAND>_<OPTION>,
e.g. BATCHRUN_RUN_CONCURRENCY=64 (`--help` shows each one). Usage errors exit 1, like
every configuration error: exit 2 means "finished, some lines failed".
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import anyio
import click
import orjson
from rich.console import Console
from rich.text import Text

from ._version import __version__
from .cache import default_cache_dir
from .cache_cli import cache
from .cli_base import CONTEXT, Group
from .config import (
    DEFAULT_API_KEY_ENV,
    DEFAULT_BASE_URL,
    OUTPUT_FORMATS,
    Guards,
    Pace,
    RetryConfig,
    RunConfig,
    Timeouts,
    is_duration,
)
from .config import default_outdir as _default_outdir
from .errors import BatchrunError
from .mock.kinds import FAULT_HELP, FAULT_KINDS
from .outcome import EXIT_INTERRUPTED, RunReport
from .prices import load_prices
from .progress import render_summary, stderr_console
from .reader import STDIN
from .report import read_report, render_report

__all__ = ["main"]

MOCK_KEY = "mock-key"
MOCK_CACHE_SERVER = "mock://batchrun"  # --mock's port changes every run, its replies do not
# The flags a resume must repeat (request settings, where to send, what to read).
RESUME_FLAGS = (
    ("model", "-m"),
    ("override_model", "--override-model"),
    ("stream", "--stream"),
    ("limit", "--limit"),
    ("mock", "--mock"),
    ("no_api_key", "--no-api-key"),
    ("allow_insecure_http", "--allow-insecure-http"),
    ("prices_file", "--prices"),  # not needed to resume, but the costs would change
    ("output_format", "--output-format"),  # else the resumed run stops writing it
    ("fail_under", "--fail-under"),  # else the resumed run judges by another bar
)


class _Positive(click.ParamType[float, "str | float"]):
    """A finite number > 0 (nan, inf, 0 and negatives refused at parse time)."""

    name = "number"
    what = "a finite number > 0"

    def convert(
        self, value: str | float, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not is_duration(number):
            self.fail(f"{value!r} is not {self.what}", param, ctx)
        return number


class _Seconds(_Positive):
    """A duration flag: a finite number of seconds > 0."""

    name = "secs"
    what = "a finite number of seconds > 0"


class _Duration(_Seconds):
    """A duration with an optional unit: 90s, 45m, 2h, or plain seconds."""

    name = "duration"
    what = "a duration > 0 (90s, 45m, 2h, or seconds)"
    units: ClassVar[dict[str, float]] = {"s": 1.0, "m": 60.0, "h": 3600.0}

    def convert(
        self, value: str | float, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, str) and value[-1:] in self.units and value[:-1]:
            number = super().convert(value[:-1], param, ctx)
            return number * self.units[value[-1]]
        return super().convert(value, param, ctx)


SECONDS = _Seconds()
DURATION = _Duration()
POSITIVE = _Positive()


@click.group(cls=Group, context_settings=CONTEXT)
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
    help="Output directory. Default: a job's [run] output, else INPUT's name with "
    ".batchrun, next to it.",
)
@click.option("-c", "--concurrency", default=32, show_default=True, help="Requests in flight.")
@click.option("--max-attempts", default=5, show_default=True, help="Attempts per line.")
@click.option(
    "--deadline",
    type=DURATION,
    help="Stop sending after this long (90s, 45m, 2h or seconds), finish the requests "
    "in flight, exit 3; rerun to resume.",
)
@click.option(
    "--max-tokens-total",
    type=click.IntRange(min=1),
    help="Stop before the tokens used by this OUTDIR (all sessions, lines in flight "
    "estimated) pass N; exit 3, rerun with a higher N to resume.",
)
@click.option(
    "--max-error-rate",
    type=click.FloatRange(min=0, max=1, min_open=True),
    help="Stop when more than this share of the last 100 lines sent failed (judged "
    "after 20); exit 3, rerun to resume.",
)
@click.option(
    "--max-cost",
    type=POSITIVE,
    metavar="USD",
    help="Stop before this OUTDIR's cost (all sessions, lines in flight estimated from "
    "their prompt and max_tokens) passes USD; exit 3, rerun with a higher limit to resume. "
    "Every model must have a price (--prices).",
)
@click.option(
    "--fail-under",
    type=click.FloatRange(0, 1),
    metavar="SCORE",
    help="An eval job (with [eval]): exit 4 when a scorer's overall score is below SCORE "
    "(0 to 1; at the bar passes), after writing everything. Overrides the job's fail_under.",
)
@click.option(
    "--max-rate-limit-wait",
    type=DURATION,
    default="10m",
    show_default=True,
    help="How long one line may wait out HTTP 429s (which use no attempt) before it is "
    "recorded as rate_limited; a rerun sends it again.",
)
@click.option(
    "--rps",
    type=POSITIVE,
    help="At most this many requests in any 1 s window (retries included).",
)
@click.option(
    "--rpm",
    type=POSITIVE,
    help="At most this many requests in any 60 s window, paced smoothly.",
)
@click.option(
    "--tpm",
    type=POSITIVE,
    help="At most this many tokens in any 60 s window (estimated, then settled with usage).",
)
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
@click.option(
    "--override-model",
    metavar="MODEL",
    help="Send every line to MODEL, replacing the model the line names.",
)
@click.option(
    "--no-api-key",
    is_flag=True,
    help="Send no Authorization header (servers without authentication: vLLM, Ollama...).",
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
@click.option(
    "--schema-retries",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Ask again this many times when a reply does not fit the line's response_format "
    "(json_schema or json_object) before recording schema_violation; counted apart from "
    "--max-attempts.",
)
@click.option(
    "--output-format",
    type=click.Choice(OUTPUT_FORMATS),
    help="Also write OUTDIR/batch_output.jsonl: one line per record, in input order, in "
    "this provider's batch output shape (custom_id, response, error).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary table.")
@click.option("--json", "as_json", is_flag=True, help="Print summary.json to stdout at the end.")
@click.option(
    "--prices",
    "prices_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Prices (USD per million tokens) replacing or adding to the bundled table, as TOML "
    "or JSON: {MODEL = {input = 0.1, output = 0.3}}. Used for summary.json's cost.",
)
@click.option(
    "--cache",
    "cache_dir",
    is_flag=False,
    flag_value="",  # --cache alone: the default directory
    metavar="[DIR]",
    help="Answer requests sent before (same body, same server) from a local cache in DIR "
    "instead of paying again; store successful replies. DIR (give it as --cache=DIR, or "
    "put --cache after INPUT): default $XDG_CACHE_HOME/batchrun, else ~/.cache/batchrun.",
)
def run(
    input_path: Path,
    outdir: Path | None,
    concurrency: int,
    max_attempts: int,
    deadline: float | None,
    max_tokens_total: int | None,
    max_error_rate: float | None,
    max_rate_limit_wait: float,
    rps: float | None,
    rpm: float | None,
    tpm: float | None,
    timeout: float,
    connect_timeout: float,
    stream: bool,
    stream_idle_timeout: float,
    stream_timeout: float,
    base_url: str,
    api_key_env: str,
    model: str | None,
    override_model: str | None,
    no_api_key: bool,
    mock: bool,
    mock_latency_ms: float,
    mock_fail_rate: float,
    fresh: bool,
    retry_failed: bool,
    limit: int | None,
    max_line_bytes: int,
    grace_period: float,
    allow_insecure_http: bool,
    schema_retries: int,
    output_format: str | None,
    quiet: bool,
    as_json: bool,
    prices_file: Path | None,
    max_cost: float | None,
    cache_dir: str | None,
    fail_under: float | None,
) -> None:
    """Send every line of INPUT and write results.jsonl, errors.jsonl, summary.json.

    INPUT is a JSONL file of requests, or a job file (.toml, see docs/jobs.md) whose
    rows are sent through its templates; a job run also writes rows.jsonl (rows.csv),
    its rows with their outputs. A flag given here overrides the job's value.

    Rerunning the same command resumes: completed lines are never sent again.

    \b
    Examples:
      batchrun run jobs/demo.jsonl --mock                  # no key, no network
      batchrun run jobs/label-sentiment.toml --mock        # a job: rows -> labelled rows
      MISTRAL_API_KEY=... batchrun run labels.jsonl -o out/ -c 64
      batchrun run batch.jsonl -m mistral-small-latest     # Mistral batch lines
      batchrun run evals.jsonl --override-model mistral-large-latest  # another model
      batchrun run in.jsonl --base-url http://localhost:8000 --no-api-key  # local vLLM
      batchrun run evals.jsonl --stream --json > summary.json
      batchrun run labels.jsonl -o out/ --retry-failed     # resume, re-send failures
      batchrun run labels.jsonl --cache                    # rerun: stored replies free
    """
    err = stderr_console()
    if input_path == STDIN and outdir is None:
        err.print(
            "error: INPUT - reads standard input, which has no name to derive "
            "OUTDIR from: give one with -o (the input is kept there, so the run can resume)",
            highlight=False,
            markup=False,
        )
        sys.exit(1)
    with _mock_server(mock, mock_latency_ms, mock_fail_rate, no_api_key) as mock_url:
        api_key = (os.environ.get(api_key_env) or MOCK_KEY) if mock_url else None

        def config() -> RunConfig:
            return RunConfig(
                input_path=input_path,
                outdir=outdir or _default_outdir(input_path),
                base_url=mock_url or base_url,
                api_key_env=api_key_env,
                model=model,
                override_model=override_model,
                no_api_key=no_api_key,
                concurrency=concurrency,
                stream=stream,
                limit=limit,
                fresh=fresh,
                retry_failed=retry_failed,
                allow_insecure_http=allow_insecure_http,
                max_line_bytes=max_line_bytes,
                grace_period=grace_period,
                timeouts=Timeouts(
                    connect=connect_timeout,
                    read=timeout,
                    stream_idle=stream_idle_timeout,
                    stream_total=stream_timeout,
                ),
                retry=RetryConfig(max_attempts=max_attempts, rate_limit_wait=max_rate_limit_wait),
                pace=Pace(rps=rps, rpm=rpm, tpm=tpm),
                guards=Guards(
                    deadline=deadline,
                    max_tokens_total=max_tokens_total,
                    max_error_rate=max_error_rate,
                    max_cost=max_cost,
                ),
                prices_file=prices_file,
                schema_retries=schema_retries,
                output_format=output_format,
                cache_dir=_cache_dir(cache_dir),
                cache_server=MOCK_CACHE_SERVER if mock_url else None,
                fail_under=fail_under,
            )

        from .jobs import is_job  # noqa: PLC0415 (run and validate only: report and diff start faster)

        build = config
        if is_job(input_path):
            build = lambda: _with_job(input_path, config(), mock=mock_url is not None)  # noqa: E731
        report = _run_or_exit(err, api_key, build, show_progress=not quiet)
    for repair in report.repairs:
        err.print(Text.assemble(("repaired", "yellow"), f": {repair}"))
    if not quiet:
        params = click.get_current_context().params
        render_summary(report.summary, err, _resume_command(params, report.outdir))
        err.print(f"results: {report.outdir / 'results.jsonl'}", highlight=False, markup=False)
    if as_json:
        click.echo(orjson.dumps(report.summary, option=orjson.OPT_INDENT_2).decode())
    sys.exit(report.exit_code)


def _with_job(path: Path, flags: RunConfig, *, mock: bool) -> RunConfig:
    """The job at `path` laid over the flags; the flags the user gave win (--mock's
    server wins over the job's base_url)."""
    ctx = click.get_current_context()
    given = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    explicit = {name for name in ctx.params if ctx.get_parameter_source(name) in given}
    if mock:
        explicit.add("base_url")
    from .jobs import apply_job, load_job  # noqa: PLC0415 (see run)

    return apply_job(load_job(path), flags, explicit)


def _cache_dir(flag: str | None) -> Path | None:
    """--cache's value: None without it, the default directory when given alone."""
    if flag is None:
        return None
    return Path(flag).expanduser() if flag else default_cache_dir()


def _resume_command(params: dict[str, Any], outdir: Path) -> str:
    """The shortest command that picks this OUTDIR up again (--fresh left out)."""
    args = ["batchrun", "run", str(params["input_path"]), "-o", str(outdir)]
    if not params.get("mock") and params.get("base_url") != DEFAULT_BASE_URL:
        args += ["--base-url", str(params["base_url"])]
    if params.get("api_key_env") != DEFAULT_API_KEY_ENV:
        args += ["--api-key-env", str(params["api_key_env"])]
    for name, flag in RESUME_FLAGS:
        value = params.get(name)
        if value is True:
            args.append(flag)
        elif value is not None and value is not False:
            args += [flag, str(value)]
    cache = params.get("cache_dir")  # not needed to resume, but the rest is cached too
    if cache is not None:
        args.append(f"--cache={cache}" if cache else "--cache")  # last: it takes a value
    return shlex.join(args)


def _run_or_exit(
    err: Console, api_key: str | None, build: Callable[[], RunConfig], *, show_progress: bool
) -> RunReport:
    """Build the config and run it; a BatchrunError from either ends the program with
    its class's exit code and one line, never a traceback."""
    # Loaded here: the runner brings aiohttp, which report, diff and validate never need.
    from .runner import run_batch  # noqa: PLC0415

    try:
        config = build()
        return anyio.run(
            lambda: run_batch(config, api_key=api_key, console=err, show_progress=show_progress),
            backend_options=_loop_options(),
        )
    except BatchrunError as exc:
        err.print(Text.assemble(("error", "red"), f": {exc}"), highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted before the run started; nothing was sent")
        sys.exit(EXIT_INTERRUPTED)


def _loop_options() -> dict[str, bool]:
    """uvloop where it is installed (Linux/macOS): it halves the event loop's share of
    the CPU per request (benchmarks/client_cpu.py); plain asyncio elsewhere."""
    return {"use_uvloop": importlib.util.find_spec("uvloop") is not None}


@contextlib.contextmanager
def _mock_server(
    enabled: bool, latency_ms: float, fail_rate: float, no_auth: bool
) -> Iterator[str | None]:
    if not enabled:
        yield None
        return
    # Imported here, not at the top: a run without --mock never loads the server.
    from .mock import MockConfig, MockServer  # noqa: PLC0415

    config = MockConfig(latency_ms=latency_ms, fail_rate=fail_rate, require_auth=not no_auth)
    with MockServer(config) as server:
        yield server.url


@main.command("validate", context_settings=CONTEXT)
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-m",
    "--model",
    help="Model for lines that name none, as `run -m` (Mistral batch lines need one).",
)
@click.option(
    "--override-model",
    metavar="MODEL",
    help="Check every line as sent to MODEL, as `run --override-model`.",
)
@click.option(
    "--prices",
    "prices_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Prices replacing or adding to the bundled table (TOML or JSON), as `run --prices`.",
)
@click.option(
    "--max-line-bytes",
    default=10 * 1024 * 1024,
    show_default=True,
    help="Longer lines are invalid, as in `run`.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def validate_command(
    input_path: Path,
    model: str | None,
    override_model: str | None,
    prices_file: Path | None,
    max_line_bytes: int,
    as_json: bool,
) -> None:
    """Check every line of INPUT (or every row of a job file) without sending anything.

    Prints the lines, the invalid ones with their reasons (the first 20, and how many
    more), the requests per model, their estimated prompt tokens and maximum completion
    tokens, and the cost range those may come to. Exit 0: every line is valid; 2: some
    are not; 1: the file cannot be run (missing, unreadable, duplicate custom_ids...).

    \b
    Examples:
      batchrun validate labels.jsonl
      batchrun validate jobs/label-sentiment.toml          # a job: its rows as requests
      batchrun validate batch.jsonl -m mistral-small-latest --prices our-prices.toml
      batchrun validate evals.jsonl --json | jq .cost
    """
    from .checkfile import check_file, check_job  # noqa: PLC0415 (see run)
    from .jobs import is_job, load_job  # noqa: PLC0415

    try:
        if is_job(input_path):
            job = load_job(input_path)
            check = check_job(
                job,
                load_prices(prices_file, job.prices),
                max_line_bytes=max_line_bytes,
                model=model,
                override_model=override_model,
            )
        else:
            check = check_file(
                input_path,
                load_prices(prices_file),
                max_line_bytes=max_line_bytes,
                model=model,
                override_model=override_model,
            )
    except BatchrunError as exc:
        stderr_console().print(Text.assemble(("error", "red"), f": {exc}"), highlight=False)
        sys.exit(exc.exit_code)
    if as_json:
        click.echo(orjson.dumps(check.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo("\n".join(check.report()))
    sys.exit(check.exit_code)


MOCK_DIRECTIVES = """\b
Per request, in the body: "metadata": {"mock": {...}} with
  fault            a KIND for this request
  times            apply the fault to the first N arrivals of this exact body only
  latency_ms       extra latency for this request
  chunks           pieces the streamed content is cut into
  chunk_delay_ms   delay between streamed chunks
  retry_after      Retry-After seconds on this request's 429
  retry_after_ms   retry-after-ms header on this request's 429
  drip_ms          send the reply one byte every N ms
  reply            the completion's content: a string, or any JSON value as its compact JSON
  raw              script the whole reply: {"status": S, "headers": [[NAME, VALUE], ...],
                   "body": TEXT} (or "body_base64"), or "events": [DATA, {"raw": TEXT}]
                   for an event stream (a string goes out as `data: DATA`, a raw item
                   verbatim); CR/LF in a header value, framing headers and bodiless
                   statuses are answered 400
or the headers `x-mock-fault: KIND` and `x-mock-fault-times: N` (they win over the
body's fault). An unknown kind is answered 400.

\b
Examples:
  batchrun mock-server --port 8089 --latency-ms 200
  batchrun mock-server --fail-rate 0.1 --fault 429 --retry-after 0.5
  batchrun mock-server --limit-rps 10 --limit-rpm 600 --storm 30:50

\b
Limits work like a provider's: a request that would put more than N requests (or
tokens, as its reply's usage says) in the last 1 s or 60 s is answered 429 at once,
with Retry-After (and retry-after-ms) saying when the window has room, and counts
against nothing. Every reply carries Mistral's x-ratelimit-* headers with the true
remaining values; without limits they advertise a generous account.
"""


def _storms(specs: tuple[str, ...]) -> tuple[tuple[float, float], ...]:
    from .mock.limits import parse_storms  # noqa: PLC0415 (only mock-server needs it)

    try:
        return parse_storms(specs)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _mock_help() -> str:
    width = max(map(len, FAULT_KINDS))
    # .get: a kind added without its line must not break the whole CLI (a test catches it)
    kinds = "\n".join(f"  {kind:<{width}}  {FAULT_HELP.get(kind, '')}" for kind in FAULT_KINDS)
    return (
        "Serve a Mistral-compatible chat API on HOST:PORT, with faults on demand.\n\n\b\n"
        "Fault kinds (--fault KIND for every request, --fail-rate for a random transient one):\n"
        f"{kinds}\n\n{MOCK_DIRECTIVES}"
    )


@main.command("mock-server", context_settings=CONTEXT, help=_mock_help())
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8089, show_default=True, help="0 picks a free port.")
@click.option("--latency-ms", default=0.0, show_default=True, help="Added to every reply.")
@click.option("--jitter-ms", default=0.0, show_default=True, help="+ uniform(0, this), seeded.")
@click.option(
    "--fail-rate",
    default=0.0,
    show_default=True,
    help="Share of requests answered with a transient fault (500/503/429/drop).",
)
@click.option("--fault", type=click.Choice(FAULT_KINDS), help="Apply this fault to every request.")
@click.option("--stream-chunks", default=8, show_default=True, help="Pieces of a streamed reply.")
@click.option(
    "--stream-delay-ms", default=0.0, show_default=True, help="Delay between streamed chunks."
)
@click.option("--retry-after", default=1.0, show_default=True, help="Retry-After on 429s, s.")
@click.option("--seed", default=0, show_default=True, help="Seeds faults, jitter and replies.")
@click.option("--no-auth", is_flag=True, help="Accept requests without a bearer token.")
@click.option(
    "--request-log",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append one JSON line per request received: content, fault, stream, t (arrival, "
    "s after the start), status (null: dropped or hung), limit (the allowance that said 429).",
)
@click.option(
    "--limit-rps",
    type=click.IntRange(min=0),
    help="Requests allowed in any 1 s window; 0: none (every request 429).",
)
@click.option(
    "--limit-rpm",
    type=click.IntRange(min=0),
    help="Requests allowed in any 60 s window; 0: none (every request 429).",
)
@click.option(
    "--limit-tpm",
    type=click.IntRange(min=0),
    help="Tokens (the replies' usage.total_tokens) allowed in any 60 s window; 0: none.",
)
@click.option(
    "--limit-tokens-month",
    type=click.IntRange(min=0),
    help="Token budget for the month (from the start); once spent, every request is 429.",
)
@click.option(
    "--storm",
    "storms",
    multiple=True,
    metavar="START:END",
    callback=lambda _ctx, _param, specs: _storms(specs),
    help="Answer every chat request arriving START..END s after the start with 429 "
    "(Retry-After: --retry-after). Repeatable, or comma-separated.",
)
@click.option(
    "--no-rate-headers",
    is_flag=True,
    help="Send no x-ratelimit-* headers, like a self-hosted server (limits still apply).",
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
    limit_rps: int | None,
    limit_rpm: int | None,
    limit_tpm: int | None,
    limit_tokens_month: int | None,
    storms: tuple[tuple[float, float], ...],
    no_rate_headers: bool,
) -> None:
    from .mock import MockConfig, serve  # noqa: PLC0415 (only this command needs the server)

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
        limit_rps=limit_rps,
        limit_rpm=limit_rpm,
        limit_tpm=limit_tpm,
        limit_tokens_month=limit_tokens_month,
        storms=storms,
        rate_headers=not no_rate_headers,
    )

    def ready(bound: int) -> None:
        click.echo(f"mock server listening on http://{host}:{bound}", err=True)

    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(lambda: serve(config, host, port, ready=ready))


main.add_command(cache)


@main.command("report", context_settings=CONTEXT)
@click.argument("outdir", metavar="OUTDIR", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--prices",
    "prices_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Prices replacing or adding to the bundled table (TOML or JSON), as `run --prices`.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document.")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the report as one self-contained HTML page with charts to this file "
    "(instead of the tables; needs `pip install 'batchrun[report]'`).",
)
def report_command(
    outdir: Path, prices_file: Path | None, as_json: bool, html_file: Path | None
) -> None:
    """Show the figures of a run in OUTDIR: finished, partial, killed or still running.

    Counts, errors by type with one example each, tokens and cost per model, latency and
    time-to-first-token percentiles, the last session's flow figures, and an eval run's
    scores per scorer and slice (95 % interval, bar). Built from the records themselves
    (results.jsonl and the journal), so a killed run reports what it finished. Nothing
    in OUTDIR is changed or locked: safe while a run is writing it.
    Exit 0, or 1 when OUTDIR is not a batchrun output directory.

    \b
    Examples:
      batchrun report labels.batchrun
      batchrun report evals.batchrun --json | jq .eval.scorers
      batchrun report evals.batchrun --html evals.html   # latency, completions over
                                                         # time, tokens, errors, scores
    """
    err = stderr_console()
    try:
        found = read_report(outdir, load_prices(prices_file))
        if html_file is not None:
            from .report_html import write_html  # noqa: PLC0415 (plotly: only for --html)

            write_html(found, html_file)
    except BatchrunError as exc:
        err.print(Text.assemble(("error", "red"), f": {exc}"), highlight=False)
        sys.exit(exc.exit_code)
    if as_json:
        click.echo(orjson.dumps(found.to_dict(), option=orjson.OPT_INDENT_2).decode())
    elif html_file is not None:
        err.print(f"report written to {html_file}", highlight=False, markup=False)
    else:
        render_report(found, Console())


def _tolerance(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not 0 <= value <= 1:  # written out: click's FloatRange lets NaN through
        raise click.BadParameter(f"must be a number from 0 to 1, not {value}")
    return value


@main.command("diff", context_settings=CONTEXT)
@click.argument("run_a", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("run_b", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option(
    "--prices",
    "prices_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A TOML or JSON price table for the cost figures (the bundled one by default).",
)
@click.option(
    "--fail-on-regression",
    is_flag=True,
    help="Exit 4 when a scorer's score, overall or in a slice, dropped by more than --tolerance.",
)
@click.option(
    "--tolerance",
    type=float,
    default=0.0,
    show_default=True,
    callback=_tolerance,
    help="The drop in score (0 to 1) that is not yet a regression.",
)
def diff_command(
    run_a: Path,
    run_b: Path,
    as_json: bool,
    prices_file: Path | None,
    fail_on_regression: bool,
    tolerance: float,
) -> None:
    """Compare two runs' OUTDIRs: lines only in one, changed outputs, new and fixed
    failures, B - A of tokens, cost and latency, and for eval runs each scorer's score,
    overall and per slice, with the lines that went from pass to fail and back. Lines
    join by custom_id when every line of both runs has one, else by index. Neither
    OUTDIR is written to; a run still being written is read as far as it got.

    --fail-on-regression compares the scorers both runs have: a drop of an overall or a
    slice's score by more than --tolerance (compared exactly: 0.8 to 0.7 is a drop of
    0.1) is a regression. A scorer or slice only one run has is listed as not compared,
    never a regression; with no scorer in both runs it says so and exits 0.

    \b
    Exit codes:
      0  compared (with --fail-on-regression: no score dropped beyond --tolerance)
      1  usage error, or an OUTDIR that holds no run
      4  --fail-on-regression: a score dropped by more than --tolerance

    \b
    Examples:
      batchrun diff runs/last-night runs/tonight
      batchrun diff runs/last-night runs/tonight --fail-on-regression --tolerance 0.02
      batchrun diff runs/model-a runs/model-b --json > diff.json
    """
    from .diff import diff_runs, render_diff, render_verdict  # noqa: PLC0415 (only here)

    try:
        found = diff_runs(run_a, run_b, load_prices(prices_file)).to_dict(tolerance)
    except BatchrunError as exc:
        stderr_console().print(Text.assemble(("error", "red"), f": {exc}"), highlight=False)
        sys.exit(exc.exit_code)
    if as_json:
        click.echo(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
    else:
        render_diff(found, Console(highlight=False))
    if fail_on_regression:
        sys.exit(render_verdict(found, stderr_console()))
