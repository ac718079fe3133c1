"""`batchrun report --html`: a run's report as one self-contained HTML page with charts.

The charts are drawn by plotly.js, inlined from the `plotly` package (the optional
`batchrun[report]` extra): the page needs no network to open. The figures are plain
plotly JSON built here, not plotly's Python figure objects, so building a page costs no
import beyond reading the bundled script.

Every string read from OUTDIR is untrusted (a reply, an error message, a custom_id):
  * HTML text is escaped (`html.escape`);
  * chart data is JSON with `<`, `>` and `&` written as \\u escapes, so no string can
    close the <script> holding it;
  * chart labels are HTML-escaped too, since plotly reads a few HTML tags in them;
  * a Content-Security-Policy lets only the page's own scripts run (a nonce drawn per
    page) and forbids every fetch, so even a missed escape could not run or load anything.
"""

from __future__ import annotations

import html
import math
import os
import secrets
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from .errors import ConfigError
from .report import FAILED_LINES, OutdirReport

__all__ = ["MISSING_EXTRA", "render_html", "write_html"]

MISSING_EXTRA = "--html needs plotly, in the report extra: pip install 'batchrun[report]'"
HISTOGRAM_BINS = 50
Figure = dict[str, Any]  # plotly's {"data": [...], "layout": {...}}


def write_html(report: OutdirReport, path: Path) -> None:
    """Write the page to `path` whole or not at all (a temporary file renamed over it)."""
    page = render_html(report).encode("utf-8", errors="replace")
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(page)
        os.replace(temporary, path)
    except BaseException as exc:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def render_html(report: OutdirReport) -> str:
    """The page; ConfigError (MISSING_EXTRA) when plotly is not installed."""
    plotly_js = _plotly_js()
    data = report.to_dict()
    charts = [
        ("latency", _latency_chart(report.totals.latencies_ms), "no request was timed"),
        ("completions over time", _timeline_chart(data["timeline"]), "no record has a time"),
        ("tokens per model", _tokens_chart(data["tokens_by_model"]), "no reply"),
        ("errors by type", _errors_chart(data["errors_by_type"]), "no failed line"),
        ("score per slice", _scores_chart(data["eval"]), "not an eval run"),
    ]
    drawn = [(f"chart-{i}", title, figure) for i, (title, figure, _) in enumerate(charts) if figure]
    nonce = secrets.token_urlsafe(18)
    sections = [
        f"<h1>batchrun report: {_text(data['outdir'])}</h1>",
        _status_table(data),
        _eval_table(data["eval"]),
        *(_chart_section(i, title, figure, note) for i, (title, figure, note) in enumerate(charts)),
        _failed_table(data["failed_lines"], data["counts"]["failed"]),
    ]
    figures = [
        {"id": div, "data": figure["data"], "layout": figure["layout"]} for div, _, figure in drawn
    ]
    return PAGE.format(
        title=_text(f"batchrun report: {data['outdir']}"),
        nonce=nonce,
        policy=POLICY.format(nonce=nonce),
        body="\n".join(sections),
        plotly_js=plotly_js,
        figures=_script_json(figures),
    )


def _plotly_js() -> str:
    try:
        from plotly.offline import get_plotlyjs  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError:
        raise ConfigError(MISSING_EXTRA) from None
    script: str = get_plotlyjs()
    return script


# Only scripts carrying the page's nonce run; nothing may be fetched (plotly draws inline
# SVG and sets inline styles, and may use data: images and fonts).
POLICY = (
    "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
    "img-src data:; font-src data:"
)
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{policy}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }}
td.msg {{ white-space: pre-wrap; word-break: break-word; max-width: 50em; }}
.chart {{ height: 420px; }}
.note {{ color: #666; font-style: italic; }}
</style>
</head>
<body>
{body}
<script nonce="{nonce}">{plotly_js}</script>
<script nonce="{nonce}">
(function () {{
  const figures = {figures};
  const config = {{responsive: true, displaylogo: false}};
  Promise.all(figures.map(f => Plotly.newPlot(f.id, f.data, f.layout, config))).then(() => {{
    document.body.dataset.chartsDrawn = String(figures.length);
  }});
}})();
</script>
</body>
</html>
"""


def _text(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _script_json(value: object) -> str:
    """JSON safe inside <script>: no `<`, `>` or `&` can end it or open a comment."""
    raw = orjson.dumps(value)
    for char, escape in ((b"<", b"\\u003c"), (b">", b"\\u003e"), (b"&", b"\\u0026")):
        raw = raw.replace(char, escape)
    return raw.decode()


def _label(value: str) -> str:
    """A chart label: plotly reads <b>, <br>, <a href> in text, so it gets the string's
    HTML escape (shown as the string itself: plotly decodes the entities)."""
    return html.escape(value)


def _chart_section(i: int, title: str, figure: Figure | None, note: str) -> str:
    heading = f"<h2>{_text(title)}</h2>"
    if figure is None:
        return f'{heading}\n<p class="note">{_text(note)}</p>'
    return f'{heading}\n<div id="chart-{i}" class="chart"></div>'


def _layout(x_title: str, y_title: str, **extra: Any) -> dict[str, Any]:
    return {
        "margin": {"t": 20, "r": 20},
        "xaxis": {"title": {"text": x_title}},
        "yaxis": {"title": {"text": y_title}},
        **extra,
    }


def _latency_chart(latencies: Sequence[float]) -> Figure | None:
    """Binned here: a 200,000-line run's latencies inlined whole would weigh megabytes."""
    if not latencies:
        return None
    low, high = min(latencies), max(latencies)
    # One bin when all are equal, or when the span overflows (stored figures are untrusted).
    bins = HISTOGRAM_BINS if low < high and math.isfinite(high - low) else 1
    width = (high - low) / bins if bins > 1 else 1.0
    counts = [0] * bins if bins > 1 else [len(latencies)]
    for value in latencies if bins > 1 else ():
        counts[min(bins - 1, int((value - low) / width))] += 1
    centres = [round(low + (i + 0.5) * width, 2) for i in range(bins)]
    bar = {"type": "bar", "x": centres, "y": counts, "width": width, "name": "requests"}
    return {"data": [bar], "layout": _layout("latency (ms)", "requests", bargap=0.02)}


def _timeline_chart(timeline: Mapping[str, Any] | None) -> Figure | None:
    if timeline is None:
        return None
    start, width = timeline["start"], timeline["bucket_s"]
    times = [
        datetime.fromtimestamp(start + i * width, UTC).strftime("%Y-%m-%d %H:%M:%S")
        for i in range(len(timeline["ok"]))
    ]
    traces = [
        {"type": "bar", "x": times, "y": timeline["ok"], "name": "ok"},
        {"type": "bar", "x": times, "y": timeline["failed"], "name": "failed"},
        {"type": "scatter", "mode": "lines", "x": times, "y": timeline["throttled"]}
        | {"name": "429s waited out"},
    ]
    layout = _layout("finished at (UTC)", f"lines, 429s per {width} s", barmode="stack")
    return {"data": traces, "layout": layout}


def _tokens_chart(tokens: Mapping[str, Mapping[str, int]]) -> Figure | None:
    if not tokens:
        return None
    models = sorted(tokens)
    traces = [
        {"type": "bar", "x": [_label(m) for m in models], "y": [tokens[m][key] for m in models]}
        | {"name": key.replace("_", " ")}
        for key in ("prompt_tokens", "completion_tokens")
    ]
    return {"data": traces, "layout": _category_layout("model", "tokens", barmode="stack")}


def _errors_chart(errors: Mapping[str, Mapping[str, Any]]) -> Figure | None:
    if not errors:
        return None
    kinds = list(errors)
    bar = {"type": "bar", "x": [_label(k) for k in kinds], "y": [errors[k]["count"] for k in kinds]}
    return {
        "data": [bar | {"name": "failed lines"}],
        "layout": _category_layout("error type", "lines"),
    }


def _scores_chart(section: Mapping[str, Any] | None) -> Figure | None:
    """One bar per scorer and slice (and the whole run), its 95 % interval as error bars,
    each scorer's bar as a dashed line."""
    if section is None:
        return None
    traces, shapes = [], []
    for name, entry in section["scorers"].items():
        rows = [("(all)", entry), *entry["slices"].items()]
        scores = [row["score"] or 0.0 for _, row in rows]
        traces.append(
            {
                "type": "bar",
                "name": _label(name),
                "x": [_label(value) for value, _ in rows],
                "y": scores,
                "error_y": {
                    "type": "data",
                    "symmetric": False,
                    "array": [row["ci95"][1] - s for (_, row), s in zip(rows, scores, strict=True)],
                    "arrayminus": [
                        s - row["ci95"][0] for (_, row), s in zip(rows, scores, strict=True)
                    ],
                },
            }
        )
        if entry["bar"] is not None:
            shapes.append(
                {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": entry["bar"]}
                | {"y1": entry["bar"], "line": {"dash": "dash", "color": "#b00020"}}
            )
    by = section["slice"] or "slice"
    layout = _category_layout(by, "score (95 % CI)", barmode="group", shapes=shapes)
    layout["yaxis"]["range"] = [0, 1.05]
    return {"data": traces, "layout": layout}


def _category_layout(x_title: str, y_title: str, **extra: Any) -> dict[str, Any]:
    """Categories stay categories, even when a label looks like a number or a date."""
    layout = _layout(_label(x_title), y_title, **extra)
    layout["xaxis"]["type"] = "category"
    return layout


def _status_table(data: Mapping[str, Any]) -> str:
    counts = data["counts"]
    rows = [
        ("state (from the records)", data["state"]),
        ("last summary", data["summary_status"] or "none (first session running or killed)"),
        ("done / requests", f"{counts['done']} / {counts['requests']}"),
        *((key.replace("_", " "), counts[key]) for key in ("ok", "failed", "not_done")),
        ("unreadable lines", counts["unreadable_lines"]),
    ]
    return _table(("", ""), ([_text(k), _text(v)] for k, v in rows))


def _eval_table(section: Mapping[str, Any] | None) -> str:
    if section is None:
        return ""
    head = ("scorer", "slice", "score", "95 % CI", "passed / count", "scored", "unscored", "bar")
    rows = []
    for name, entry in section["scorers"].items():
        for value, score in [("(all)", entry), *entry["slices"].items()]:
            low, high = score["ci95"]
            cells = [
                _text(name),
                _text(value),
                "-" if score["score"] is None else f"{score['score']:.3f}",
                f"{low:.3f}-{high:.3f}",
                f"{score['passed']} / {score['count']}",
                str(score["scored"]),
                str(score["unscored"]),
                ""
                if score["bar"] is None
                else f"{score['bar']:g}" + (" below" if score["below_bar"] else ""),
            ]
            rows.append(cells)
    return "<h2>eval scores (from the records)</h2>\n" + _table(head, rows)


def _failed_table(lines: Sequence[Mapping[str, Any]], failed: int) -> str:
    heading = "<h2>failed lines</h2>"
    if not lines:
        return f'{heading}\n<p class="note">none</p>'
    shown = f"the first {len(lines)} of {failed}" if failed > len(lines) else f"all {failed}"
    note = f'<p class="note">{shown} (at most {FAILED_LINES}), by index</p>'
    head = ("index", "line", "custom_id", "error type", "message")
    rows = (
        [_text(line[key]) for key in ("index", "line", "custom_id", "error_type", "message")]
        for line in lines
    )
    return f"{heading}\n{note}\n{_table(head, rows, message_column=4)}"


def _table(
    head: Sequence[str], rows: Iterable[Sequence[str]], message_column: int | None = None
) -> str:
    """Cells must be escaped already."""
    out = ["<table>", "<tr>" + "".join(f"<th>{_text(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        cells = (
            f'<td class="msg">{cell}</td>' if i == message_column else f"<td>{cell}</td>"
            for i, cell in enumerate(row)
        )
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)
