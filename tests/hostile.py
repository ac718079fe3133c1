"""Hypothesis strategies for stored records of any shape (hand-edited, foreign or
hostile): the readers that skip `Record`'s properties for speed are checked on these
against the properties' own answers."""

from __future__ import annotations

from hypothesis import strategies as st

__all__ = ["MARKS", "ODD", "RECORD", "RESPONSE"]

ODD = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-1, 1e3) | st.text(max_size=4)
MARKS = st.dictionaries(st.sampled_from(["exact", "contains", "x"]), ODD | st.sampled_from([0, 1]))
RESPONSE = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["m1", "m2"]) | ODD,
        "usage": st.dictionaries(
            st.sampled_from(["prompt_tokens", "completion_tokens", "total_tokens"]),
            st.integers(-2, 50) | ODD,
        )
        | ODD,
        "choices": st.lists(
            st.fixed_dictionaries({}, optional={"message": st.fixed_dictionaries(
                {}, optional={"content": st.text(max_size=5) | ODD}
            ) | ODD}) | ODD,
            max_size=2,
        )
        | ODD,
    },
)  # fmt: skip
RECORD = st.fixed_dictionaries(
    {},
    optional={
        "index": st.integers(0, 5) | ODD,
        "custom_id": st.sampled_from(["a", "b"]) | ODD,
        "status": st.sampled_from(["ok", "error"]) | ODD,
        "response": RESPONSE | ODD,
        "error": st.fixed_dictionaries({"type": st.sampled_from(["timeout", "x"]) | ODD}) | ODD,
        "latency_ms": st.floats(0, 1e4) | st.integers(0, 10) | ODD,
        "cached": st.booleans() | ODD,
        "score": MARKS | ODD,
        "slice": st.sampled_from(["geo", "math"]) | ODD,
    },
)
