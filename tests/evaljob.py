"""An eval job whose every line's fate is known: row i's reply is scripted through the
mock (`metadata.mock`), so a test knows which scorers each line passes, which lines fail
and which waited out a 429, and can check `report` against its own count."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from jsonl import write_jsonl

SCORERS = ["exact", "contains"]
TOPICS = ("geo", "math", "lang")


def row(i: int, qid: str | None = None, topic: str | None = None) -> dict[str, Any]:
    """Even rows answer exactly (exact 1, contains 1), odd ones in a sentence (exact 0,
    contains 1), every 7th says something else (both 0); every 10th fails with a 422 and
    every 6th waits out one 429 first."""
    answer = f"ans{i}"
    reply = answer if i % 2 == 0 else f"it is {answer}."
    if i % 7 == 3:
        reply = "no idea"
    mock: dict[str, Any] = {"reply": reply}
    if i % 10 == 9:
        mock["fault"] = "422"
    elif i % 6 == 1:
        mock |= {"fault": "429", "times": 1}
    return {
        "qid": qid or f"q{i}",
        "topic": topic or TOPICS[i % len(TOPICS)],
        "q": f"question {i}",
        "answer": answer,
        "mock": mock,
    }


def marks(line: dict[str, Any]) -> dict[str, int] | None:
    """What a row scores; None when its request fails (unscored)."""
    mock = line["mock"]
    if mock.get("fault") == "422":
        return None
    reply, answer = mock["reply"], line["answer"]
    return {"exact": int(reply == answer), "contains": int(answer in reply)}


def job_text(
    scorers: list[str] = SCORERS, extra: str = "", model: str = "mistral-small-latest"
) -> str:
    """An eval job over rows.jsonl beside it: each row's `mock` column is its request's
    `metadata.mock` (the reply the mock gives), `answer` the expected one, `topic` the
    slice; `extra` goes in the [eval] table."""
    return f"""\
[input]
path = "rows.jsonl"
id = "qid"

[request]
model = "{model}"
metadata = {{ mock = "{{mock}}" }}

[[messages]]
role = "user"
content = "{{q}}"

[eval]
expected = "answer"
scorers = {orjson.dumps(scorers).decode()}
slice = "topic"
{extra}
[run]
max_attempts = 1
"""


def write_job(folder: Path, rows: Iterable[dict[str, Any]], extra: str = "") -> Path:
    write_jsonl(folder / "rows.jsonl", rows)
    job = folder / "job.toml"
    job.write_text(job_text(extra=extra), encoding="utf-8")
    return job


def tally(rows: dict[str, dict[str, Any]], done: Iterable[str]) -> dict[str, Any]:
    """Per scorer, overall and per topic, [passed, count, unscored] over the done lines
    (by qid), counted here by hand."""
    figures: dict[str, Any] = {}
    for name in SCORERS:
        overall = [0, 0, 0]
        slices: dict[str, list[int]] = {}
        for qid in done:
            line = rows[qid]
            got = marks(line)
            for counts in (overall, slices.setdefault(line["topic"], [0, 0, 0])):
                counts[1] += 1
                if got is None:
                    counts[2] += 1
                else:
                    counts[0] += got[name]
        figures[name] = {"all": overall, "slices": slices}
    return figures


def reported(section: dict[str, Any]) -> dict[str, Any]:
    """The same [passed, count, unscored] read from a report's `eval`."""

    def three(entry: dict[str, Any]) -> list[int]:
        return [entry["passed"], entry["count"], entry["unscored"]]

    return {
        name: {
            "all": three(entry),
            "slices": {value: three(s) for value, s in entry["slices"].items()},
        }
        for name, entry in section["scorers"].items()
    }
