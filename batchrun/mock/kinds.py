"""The mock server's fault kinds and one line of help for each.

No imports: the CLI reads these to build `mock-server --help` without loading the server.
"""

__all__ = ["CONTENT_FAULTS", "FAULT_HELP", "FAULT_KINDS", "STATUS_FAULTS", "STREAM_FAULTS"]

STATUS_FAULTS = ("429", "408", "409", "500", "502", "503", "504", "400", "401", "403", "404", "422")
# keepalive: a 200 stream of `: keep-alive` comments only; trickle: one word at a time,
# forever. Both never end by themselves: they exist to test the client's deadlines.
STREAM_FAULTS = ("cut", "stall", "malformed", "keepalive", "trickle")
# A normal 200 reply, streamed or not, whose content is wrong for a structured-output request.
CONTENT_FAULTS = ("schema_violation", "not_json")
FAULT_KINDS: tuple[str, ...] = (
    *STATUS_FAULTS,
    *("drop", "hang", "invalid_json", "redirect"),
    *STREAM_FAULTS,
    "echo_headers",  # a 400 whose body echoes the request headers, as a server in the wild did
    *CONTENT_FAULTS,
)

# One line per kind, what the server does. Streamed kinds break a streamed reply halfway;
# a non-streamed request gets their twin (cut -> drop, stall -> hang, malformed -> invalid_json).
FAULT_HELP = {
    "429": "429 Too Many Requests with Retry-After (--retry-after); retried, one shared pause",
    "408": "408 Request Timeout; retried",
    "409": "409 Conflict; retried",
    "500": "500 Internal Server Error; retried",
    "502": "502 Bad Gateway; retried",
    "503": "503 Service Unavailable; retried",
    "504": "504 Gateway Timeout; retried",
    "400": "400 Bad Request; not retried",
    "401": "401 Unauthorized; not retried, three in a row stop the run",
    "403": "403 Forbidden; not retried, three in a row stop the run",
    "404": "404 Not Found; not retried",
    "422": "422 Unprocessable Entity; not retried",
    "drop": "close the connection without an answer",
    "hang": "never answer; the connection stays open until the client gives up",
    "invalid_json": "200 whose body is not JSON",
    "redirect": "307 to the same URL (batchrun follows no redirect)",
    "cut": "stream: stop halfway, no [DONE], connection closed (not streamed: drop)",
    "stall": "stream: go silent halfway, connection kept open (not streamed: hang)",
    "malformed": "stream: a non-JSON event halfway, then [DONE] (not streamed: invalid_json)",
    "keepalive": "stream: `: keep-alive` comments only, forever (not streamed: hang)",
    "trickle": "stream: one word at a time, forever (not streamed: hang)",
    "echo_headers": "400 whose JSON body echoes the request's headers, key included",
    "schema_violation": "200 whose content is JSON its json_schema refuses (JSON mode: an array)",
    "not_json": "200 whose content is plain text, not JSON",
}
