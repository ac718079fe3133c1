"""batch_output.jsonl: results.jsonl again, each record in the line shape of a hosted
batch API's output file, so tools that read OpenAI or Mistral batch outputs read ours.

One line per record, in input order (line i is results.jsonl's line i):
`{"id", "custom_id", "response": {"status_code", "request_id", "body"} | null,
"error": {"code", "message"} | null}`.

- `id`: `batch_req_<index>`, deterministic, so a run killed and resumed writes the same
  file as one that was not.
- `custom_id`: the line's own; a line without one (plain request files, or a batch line
  too broken to read its id) gets its 0-based index as a string, since readers join on
  custom_id and OpenAI types it as a required string.
- ok: `response` is `{"status_code": 200, "request_id": <the completion's "id">, "body":
  <the completion>}` and `error` null. batchrun keeps no response headers, so
  `request_id` is the completion's own id (null when it has none).
- failed: `error` is `{"code": <error.type>, "message": <error.message>}` for every
  failed line. A failure with an HTTP status (`http_status`, `rate_limited`) also has
  `response`: that status, `request_id` null, and as `body` the error body when it is a
  JSON object, else `{"error": {"message": <its first 2 KB>}}`. Other failures (no
  reply, a reply that was no completion, `schema_violation`, `invalid_input`) have
  `response` null. OpenAI sets `error` only when there was no HTTP reply; setting it on
  every failure lets a reader that checks either `error` or `status_code` see it.

Mistral documents no output line of its own; its SDK examples and the readers we found
read this same shape (`response.body`, `response.status_code`), so `mistral-batch`
writes exactly what `openai-batch` does, under its own name.
"""

from __future__ import annotations

from typing import Any

import orjson

from .records import Record

__all__ = ["batch_line"]


def batch_line(raw: bytes) -> bytes:
    """The batch output line (newline included) of one stored record (`raw`, one
    results.jsonl line, newline or not). Never raises: a record is untrusted data."""
    record = Record.parse(raw)
    if record is None:  # the journal scan admits none, but a reader must not crash
        line: dict[str, Any] = {"id": None, "custom_id": None, "response": None}
        line["error"] = {"code": "unreadable_record", "message": "not a JSON object"}
        return orjson.dumps(line) + b"\n"
    index = record.index
    custom_id = record.custom_id
    line = {
        "id": None if index is None else f"batch_req_{index}",
        "custom_id": custom_id if custom_id is not None or index is None else str(index),
        "response": None,
        "error": None,
    }
    if record.status == "ok" and record.response is not None:
        body = record.response
        request_id = body.get("id")
        line["response"] = {
            "status_code": 200,
            "request_id": request_id if isinstance(request_id, str) else None,
            "body": body,
        }
    else:
        line["response"] = _error_response(record)
        line["error"] = {
            "code": record.error_type or "unknown",
            "message": record.error_message or "",
        }
    return orjson.dumps(line) + b"\n"


def _error_response(record: Record) -> dict[str, Any] | None:
    status = record.status_code
    if status is None:
        return None
    return {"status_code": status, "request_id": None, "body": _error_body(record.error_body)}


def _error_body(text: str | None) -> dict[str, Any]:
    if text is None:
        return {"error": {"message": ""}}
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        body = None
    return body if isinstance(body, dict) else {"error": {"message": text}}
