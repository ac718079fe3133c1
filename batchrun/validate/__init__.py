"""Pre-send validation of one chat-completion body: the API reference's §7 checklist.

`body.py` owns the top-level field table, tools, response_format and the cross-field
rules; `messages.py` the messages (content chunks, each role's shape, turn order);
`checks.py` the leaf checkers, error-reason rendering and `Field` tables they share.
"""

from .body import FIELDS, validate_body

__all__ = ["FIELDS", "validate_body"]
