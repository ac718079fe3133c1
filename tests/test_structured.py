"""Structured output: response_format -> a checker; content parsed and schema-checked;
every reply, however odd, ends as a value or a SchemaViolation."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from jsonschema.validators import validator_for

from batchrun.errors import ConfigError, RequestFailed, SchemaViolation, TransientError
from batchrun.structured import OutputChecker, output_checker

LABEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"enum": ["pos", "neg"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "tags": {"type": "array", "items": {"type": "object", "required": ["name"]}},
    },
    "required": ["label"],
    "additionalProperties": False,
}


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def checker(schema: dict[str, Any] = LABEL_SCHEMA) -> OutputChecker:
    built = output_checker(schema_format(schema))
    assert built is not None and built.kind == "json_schema"
    return built


def violation(check: OutputChecker, content: object) -> SchemaViolation:
    with pytest.raises(SchemaViolation) as caught:
        check.check(content)
    return caught.value


def reply(*messages: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    choices = [{"index": i, "message": m, "finish_reason": finish} for i, m in enumerate(messages)]
    return {"id": "x", "choices": choices}


# --- building the checker --------------------------------------------------------------------


@pytest.mark.parametrize("response_format", [None, {"type": "text"}, {"type": "future_mode"}, {}])
def test_nothing_to_check(response_format: object) -> None:
    assert output_checker(response_format) is None


@pytest.mark.parametrize(
    ("response_format", "message"),
    [
        ("json_object", "response_format must be an object"),
        ({"type": "json_schema"}, "json_schema.schema must be an object"),
        ({"type": "json_schema", "json_schema": {"name": "a"}}, "schema must be an object"),
        (schema_format({"type": "nope"}), "schema.type: invalid JSON Schema"),
        (schema_format({"required": "label"}), "schema.required: invalid JSON Schema"),
        (schema_format({"properties": {"a": {"pattern": "("}}}), "'(' is not a 'regex'"),
        (schema_format({"$ref": "https://example.com/s.json"}), "only references inside"),
        (schema_format({"items": {"$ref": "#/$defs/item"}}), "'#/$defs/item' points to nothing"),
        (
            schema_format({"prefixItems": [{}], "items": {"$ref": "#/prefixItems/3"}}),
            "points to nothing",
        ),
    ],
)
def test_a_bad_format_or_schema_is_a_config_error_up_front(
    response_format: object, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        output_checker(response_format)
    assert message in str(caught.value) and caught.value.exit_code == 1


def test_the_draft_is_the_one_schema_names() -> None:
    tuple_items = {"type": "array", "items": [{"type": "integer"}, {"type": "string"}]}
    with pytest.raises(ConfigError, match=r"schema\.items: invalid JSON Schema"):
        checker(tuple_items)  # 2020-12 by default: items is one schema there
    draft7 = checker({"$schema": "http://json-schema.org/draft-07/schema#", **tuple_items})
    assert draft7.check('[1, "a"]') == [1, "a"]
    assert violation(draft7, '["a", "b"]').path == "$[0]"
    for unknown in ("https://example.com/my-draft", 7, None):
        with pytest.raises(ConfigError, match="unknown \\$schema"):
            checker({"$schema": unknown})


def test_a_schema_nested_past_python_s_stack_is_a_config_error() -> None:
    deep: dict[str, Any] = {}
    for _ in range(3000):
        deep = {"items": deep}
    with pytest.raises(ConfigError, match="nests too deeply"):
        checker(deep)


def test_local_references_and_data_named_ref_are_fine() -> None:
    schema = {
        "$defs": {"label": {"enum": ["pos", "neg"]}, "a/b": {"type": "integer"}},
        "type": "object",
        "properties": {
            "label": {"$ref": "#/$defs/label"},
            "n": {"$ref": "#/$defs/a~1b"},
            "self": {"anyOf": [{"type": "null"}, {"$ref": "#"}]},
            "$ref": {"const": {"$ref": "not a reference"}},
        },
    }
    check = checker(schema)
    assert check.check('{"label": "pos", "n": 3, "self": {"label": "neg"}}')["n"] == 3
    assert violation(check, '{"self": {"label": "meh"}}').path == "$.self.label"
    assert violation(check, '{"n": "3"}').message == "$.n: '3' is not of type 'integer'"


# --- checking content ------------------------------------------------------------------------


def test_conforming_content_is_returned_parsed() -> None:
    content = '{"label": "pos", "score": 0.5, "tags": [{"name": "é"}]}'
    assert checker().check(content) == orjson.loads(content)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"label": "maybe"}', "$.label: 'maybe' is not one of ['pos', 'neg']"),
        ("{}", "$: 'label' is a required property"),
        ('{"label": "pos", "score": 2}', "$.score: 2 is greater than the maximum of 1"),
        ('{"label": "neg", "tags": [{"name": 1}, {}]}', "$.tags[1]: 'name' is a required property"),
        (
            '{"label": "neg", "x": 1}',
            "$: Additional properties are not allowed ('x' was unexpected)",
        ),
        ("[1, 2]", "$: [1, 2] is not of type 'object'"),
        ('"pos"', "$: 'pos' is not of type 'object'"),
    ],
)
def test_a_violation_names_the_first_problem_and_its_path(content: str, message: str) -> None:
    error = violation(checker(), content)
    assert error.message == message
    assert error.path == message.partition(":")[0]
    assert error.to_record() == {
        "type": "schema_violation",
        "message": message,
        "retryable": True,
        "path": error.path,
        "content": content,
    }


@pytest.mark.parametrize(
    "content", ["", "label: pos", '{"label": "pos"', "```json\n{}\n```", "NaN"]
)
def test_content_that_is_not_json(content: str) -> None:
    error = violation(checker(), content)
    assert error.message.startswith("content is not JSON: ") and error.path is None
    assert error.to_record()["content"] == content and "path" not in error.to_record()


def test_json_object_mode_wants_an_object() -> None:
    check = output_checker({"type": "json_object"})
    assert check is not None and check.kind == "json_object"
    assert check.check('{"any": ["thing"]}') == {"any": ["thing"]}
    error = violation(check, "[1]")
    assert error.message == "$: content is JSON but not an object: [1]"
    assert violation(check, "{").message.startswith("content is not JSON")


def test_text_chunks_are_the_content() -> None:
    chunks = [
        {"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]},
        {"type": "text", "text": '{"label": '},
        {"type": "text", "text": '"neg"}'},
    ]
    assert checker().check(chunks) == {"label": "neg"}


@pytest.mark.parametrize(
    ("content", "shown"),
    [
        (None, "null"),
        (3, "a number"),
        (True, "a boolean"),
        ({"label": "pos"}, "an object"),
        ([{"type": "thinking", "thinking": []}], "a list without text chunks"),
        ([{"type": "text", "text": 5}], "a list without text chunks"),
    ],
)
def test_content_that_is_not_text(content: object, shown: str) -> None:
    assert violation(checker(), content).message == f"content is not text but {shown}"


def test_long_values_are_cut_in_the_message_and_the_record() -> None:
    error = violation(checker(), orjson.dumps({"label": "x" * 10_000}).decode())
    assert len(error.message) <= 320 and error.message.endswith("…")
    assert len(error.to_record()["content"]) == 2048


def test_deep_content_under_a_recursive_schema_is_a_violation_not_a_crash() -> None:
    nested = {
        "$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}}},
        "$ref": "#/$defs/n",
    }
    check = checker(nested)
    assert check.check("[[[]]]") == [[[]]]
    for depth in (1000, 5000):
        error = violation(check, "[" * depth + "]" * depth)
        assert "too deeply" in error.message or "not JSON" in error.message


def test_schema_violation_is_retryable_but_not_a_transport_retry() -> None:
    assert issubclass(SchemaViolation, RequestFailed)
    assert not issubclass(SchemaViolation, TransientError)
    assert SchemaViolation.retryable and SchemaViolation.error_type == "schema_violation"
    assert SchemaViolation("bad", content="\ud800x").to_record()["content"] == "?x"


# --- checking a reply ------------------------------------------------------------------------


def test_choice_zero_is_the_one_checked() -> None:
    good, bad = {"content": '{"label": "pos"}'}, {"content": '{"label": "meh"}'}
    assert checker().check_reply(reply(good, bad)) == {"label": "pos"}
    with pytest.raises(SchemaViolation):
        checker().check_reply(reply(bad, good))


def test_tool_calls_instead_of_content_are_a_violation() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    content: object
    for content in (None, "", []):
        with pytest.raises(SchemaViolation, match="tool calls, not content"):
            checker().check_reply(reply({"content": content, "tool_calls": [call]}))
    both = {"content": '{"label": "neg"}', "tool_calls": [call]}
    assert checker().check_reply(reply(both)) == {"label": "neg"}


def test_a_reply_cut_by_max_tokens_says_so() -> None:
    with pytest.raises(SchemaViolation) as caught:
        checker().check_reply(reply({"content": '{"label": "p'}, finish="length"))
    assert caught.value.message.endswith("(finish_reason length: max_tokens cut the reply)")
    assert caught.value.content == '{"label": "p'
    with pytest.raises(SchemaViolation) as valid_json:
        checker().check_reply(reply({"content": '{"label": "p"}'}, finish="length"))
    assert "max_tokens" not in valid_json.value.message


@pytest.mark.parametrize(
    "shape",
    [{}, {"choices": []}, {"choices": "x"}, {"choices": [None]}, {"choices": [{"message": "hi"}]}],
)
def test_a_reply_without_a_message_is_a_violation(shape: dict[str, Any]) -> None:
    with pytest.raises(SchemaViolation, match="no message"):
        checker().check_reply(shape)


# --- properties ------------------------------------------------------------------------------

SCHEMAS: list[dict[str, Any]] = [
    LABEL_SCHEMA,
    {"type": "array", "items": {"type": "integer"}, "minItems": 1, "uniqueItems": True},
    {"anyOf": [{"type": "string", "pattern": "^a+$"}, {"type": "null"}]},
    {"type": "object", "patternProperties": {"^x": {"type": "boolean"}}, "maxProperties": 2},
    {
        "$defs": {"t": {"type": "object", "properties": {"k": {"$ref": "#/$defs/t"}}}},
        "$ref": "#/$defs/t",
    },
    {"not": {"type": "number"}, "minLength": 2},
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.sampled_from(SCHEMAS), st.text())
@example(LABEL_SCHEMA, '{"label": "pos"')
@example(SCHEMAS[4], "{" * 3000)
def test_any_text_is_parsed_or_a_violation(schema: dict[str, Any], content: str) -> None:
    try:
        checker(schema).check(content)
    except SchemaViolation as error:
        orjson.dumps(error.to_record())  # always writable


@given(st.sampled_from(SCHEMAS), json_values)
@example(LABEL_SCHEMA, {"label": "pos"})
@example(SCHEMAS[1], [1, 2])
def test_json_content_passes_exactly_when_the_schema_says(
    schema: dict[str, Any], value: Any
) -> None:
    content = orjson.dumps(value).decode()
    valid = validator_for(schema)(schema).is_valid(orjson.loads(content))
    try:
        parsed = checker(schema).check(content)
    except SchemaViolation as error:
        assert not valid and error.path is not None and error.path.startswith("$")
    else:
        assert valid and parsed == orjson.loads(content)


@given(json_values)
def test_any_reply_shape_is_a_value_or_a_violation(shape: Any) -> None:
    for candidate in (shape, {"choices": shape}, {"choices": [{"message": shape}]}):
        if isinstance(candidate, dict):
            try:
                checker().check_reply(candidate)
            except SchemaViolation as error:
                orjson.dumps(error.to_record())
