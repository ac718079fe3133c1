"""The job-file template language: compile errors, rendering, dots and nesting, and
hypothesis properties against two reference implementations."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from batchrun.errors import ConfigError, InvalidInput
from batchrun.templates import Template, TemplateError, compile_messages, compile_template


def render(source: str, row: dict[str, Any]) -> str:
    return compile_template(source).render(row)


# --- rendering -------------------------------------------------------------------------------


def test_fields_are_replaced_and_literals_kept() -> None:
    template = compile_template("Label: {text}\nLanguage: {lang}.")
    assert template.render({"text": "great film", "lang": "en"}) == (
        "Label: great film\nLanguage: en."
    )
    assert template.fields == ("text", "lang")


def test_a_template_without_fields_is_its_text_with_braces_unescaped() -> None:
    assert render("plain", {}) == "plain"
    assert render("", {}) == ""
    assert render('JSON like {{"label": "pos"}}', {}) == 'JSON like {"label": "pos"}'


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{a}}", "{a}"),
        ("{{{a}}}", "{1}"),
        ("{a}}}", "1}"),
        ("{{{{", "{{"),
        ("}}{a}{{", "}1{"),
    ],
)
def test_doubled_braces_are_literal(source: str, expected: str) -> None:
    assert render(source, {"a": 1}) == expected


@pytest.mark.parametrize(
    ("value", "inserted"),
    [
        (7, "7"),
        (-2.5, "-2.5"),
        (1.0, "1.0"),
        (True, "true"),
        (False, "false"),
        (None, "null"),
        ([1, "b", None], '[1,"b",null]'),
        ({"k": "é", "n": [True]}, '{"k":"é","n":[true]}'),
        ("", ""),
    ],
)
def test_non_string_values_are_compact_json(value: object, inserted: str) -> None:
    assert render("<{v}>", {"v": value}) == f"<{inserted}>"


def test_unicode_is_kept_in_values_literals_and_field_names() -> None:
    row = {"名前": "世界", "emoji": "🙂 café", "ü": {"ß": "ok"}}
    assert render("こんにちは {名前}! {emoji} {ü.ß}", row) == "こんにちは 世界! 🙂 café ok"


def test_values_are_inserted_verbatim_never_evaluated() -> None:
    row = {"a": "{b} {{c}} {__class__}", "b": "no"}
    assert render("{a}", row) == "{b} {{c}} {__class__}"


def test_nested_fields_reach_into_objects() -> None:
    row = {"meta": {"lang": "fr", "source": {"site": "x.org", "rank": 3}}}
    assert render("{meta.lang} {meta.source.site} {meta.source.rank}", row) == "fr x.org 3"
    assert render("{meta.source}", row) == '{"site":"x.org","rank":3}'


def test_a_whole_dotted_key_wins_over_nesting() -> None:
    """CSV columns may be named `user.name`; such a key is read before any nesting."""
    both = {"user.name": "column", "user": {"name": "nested"}}
    assert render("{user.name}", both) == "column"
    assert render("{user.name}", {"user": {"name": "nested"}}) == "nested"
    assert render("{user.name}", {"user.name": "column"}) == "column"


@pytest.mark.parametrize(
    ("source", "row", "field"),
    [
        ("{text}", {}, "text"),
        ("{text}", {"Text": "x"}, "text"),
        ("ok {a} then {b}", {"a": 1}, "b"),
        ("{meta.lang}", {"meta": {}}, "meta.lang"),
        ("{meta.lang}", {"other": 1}, "meta.lang"),
        ("{meta.lang}", {"meta": "fr"}, "meta.lang"),  # not an object
        ("{meta.lang}", {"meta": None}, "meta.lang"),
        ("{items.0}", {"items": ["first"]}, "items.0"),  # a list index is not supported
        ("{a.b.c}", {"a": {"b": [1]}}, "a.b.c"),
    ],
)
def test_a_missing_field_is_invalid_input_naming_it(
    source: str, row: dict[str, Any], field: str
) -> None:
    template = compile_template(source, "messages[1].content")
    with pytest.raises(InvalidInput) as caught:
        template.render(row)
    error = caught.value.at_line(12)
    assert error.field == field
    assert str(error) == f"line 12: {field}: missing from the row (messages[1].content uses it)"
    assert error.to_record() == {
        "type": "invalid_input",
        "message": str(error),
        "retryable": False,
        "field": field,
    }


def test_a_null_value_is_present_not_missing() -> None:
    assert render("{a}", {"a": None}) == "null"
    assert render("{a.b}", {"a": {"b": None}}) == "null"


@pytest.mark.parametrize("value", [2**70, {1: "int key"}, {"a": {2.5: "float key"}}, object()])
def test_a_value_json_cannot_hold_is_invalid_input(value: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        render("{v}", {"v": value})
    assert caught.value.field == "v" and "cannot be written as JSON" in str(caught.value)


def test_fields_lists_each_field_once_in_order() -> None:
    template = compile_template("{b} {a.x} {b} {{c}} {a.x} {d}")
    assert template.fields == ("b", "a.x", "d")
    assert compile_template("no fields {{here}}").fields == ()


def test_absent_fields_are_the_ones_no_sample_row_has() -> None:
    template = compile_template("{text} {meta.lang} {label} {tyop}")
    rows: list[dict[str, Any]] = [{"text": "a"}, {"text": "b", "meta": {"lang": "en"}}]
    rows.append({"label": None})
    assert template.absent_fields(rows) == ("tyop",)
    assert template.absent_fields([]) == ("text", "meta.lang", "label", "tyop")
    assert template.absent_fields(iter(rows[:1])) == ("meta.lang", "label", "tyop")


def test_a_template_is_compiled_once_and_reused() -> None:
    template = compile_template("{n}: {text}")
    rows = [{"n": i, "text": f"row {i}"} for i in range(50)]
    assert [template.render(row) for row in rows] == [f"{i}: row {i}" for i in range(50)]
    assert "{n}: {text}" in repr(template) and isinstance(template, Template)


# --- compile errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "column", "reason"),
    [
        ("hello {", 7, "'{' is never closed"),
        ("{name", 1, "'{' is never closed"),
        ("a {b{c}}", 3, "'{' is never closed"),
        ("oops }", 6, "'}' was never opened"),
        ("{a}}", 4, "'}' was never opened"),
        ("x {} y", 3, "empty field name"),
        ("{a b}", 1, "may hold only letters"),
        ("{ a }", 1, "may hold only letters"),
        ("..{a.}", 3, "may hold only letters"),
        ("{.a}", 1, "may hold only letters"),
        ("{a..b}", 1, "may hold only letters"),
        ("{a!r}", 1, "may hold only letters"),
        ("{a:>10}", 1, "may hold only letters"),
        ("{a[0]}", 1, "may hold only letters"),
        ("{a.__class__()}", 1, "may hold only letters"),
        ("{a-b}", 1, "may hold only letters"),
        ("ok {a} {b} {{ {c d}", 15, "may hold only letters"),
    ],
)
def test_compile_errors_name_the_template_and_column(source: str, column: int, reason: str) -> None:
    with pytest.raises(TemplateError) as caught:
        compile_template(source, "messages[0].content")
    error = caught.value
    assert isinstance(error, ConfigError) and error.exit_code == 1
    assert error.where == "messages[0].content" and error.column == column
    assert str(error).startswith(f"messages[0].content: column {column}: ")
    assert reason in error.reason


# --- properties ------------------------------------------------------------------------------

NAMES = ("a", "b", "text", "é", "a.b", "x1")
Part = tuple[str, str]  # ("literal", text) | ("field", name)

parts = st.lists(
    st.one_of(
        st.tuples(st.just("literal"), st.text()),
        st.tuples(st.just("field"), st.sampled_from(NAMES)),
    ),
    max_size=12,
)
string_rows = st.fixed_dictionaries({name: st.text() for name in NAMES})


def escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


@given(parts, string_rows)
@example([("literal", "{{}}{"), ("field", "a"), ("literal", "}")], dict.fromkeys(NAMES, "{x}"))
def test_built_templates_render_their_parts(pieces: list[Part], row: dict[str, str]) -> None:
    """Any template built from literals (braces included, escaped) and fields renders as
    the literals and the row's strings side by side; literal braces round-trip."""
    source = "".join(escape(text) if kind == "literal" else f"{{{text}}}" for kind, text in pieces)
    expected = "".join(text if kind == "literal" else row[text] for kind, text in pieces)
    template = compile_template(source)
    assert template.render(row) == expected
    assert template.fields == tuple(dict.fromkeys(t for k, t in pieces if k == "field"))


def reference_render(source: str, row: dict[str, Any]) -> str:
    """A character-at-a-time statement of the language, slow and plain: the whole text
    is checked before a missing field counts."""
    out: list[str | InvalidInput] = []
    position = 0
    while position < len(source):
        if source.startswith(("{{", "}}"), position):
            out.append(source[position])
            position += 2
        elif source[position] == "}":
            raise TemplateError("", position + 1, "lone }")
        elif source[position] == "{":
            close = source.find("}", position)
            name = source[position + 1 : close]
            if close < 0 or "{" in name or not reference_name(name):
                raise TemplateError("", position + 1, "bad field")
            out.append(reference_value(row, name))
            position = close + 1
        else:
            out.append(source[position])
            position += 1
    for piece in out:
        if isinstance(piece, InvalidInput):
            raise piece
    return "".join(map(str, out))


def reference_name(name: str) -> bool:
    return all(part and all(c.isalnum() or c == "_" for c in part) for part in name.split("."))


def reference_value(row: dict[str, Any], name: str) -> str | InvalidInput:
    if name in row:
        value = row[name]
    else:
        value = row
        for key in name.split("."):
            if not isinstance(value, dict) or key not in value:
                return InvalidInput("missing", field=name)
            value = value[key]
    return value if isinstance(value, str) else orjson.dumps(value).decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "é", "a.b"]), inner, max_size=3)
    ),
    max_leaves=8,
)
rows = st.dictionaries(st.sampled_from(["a", "b", "é", "a.b", "c"]), json_values, max_size=5)


@given(st.text(alphabet="ab.é_{} x", max_size=20), rows)
@example("{a.b}", {"a.b": "lit", "a": {"b": "nested"}})
@example("{a.b}", {"a": {"b": [1, {"é": None}]}})
def test_any_text_renders_like_the_reference(source: str, row: dict[str, Any]) -> None:
    try:
        expected: str | type[Exception] = reference_render(source, row)
    except (TemplateError, InvalidInput) as exc:
        expected = type(exc)
    try:
        got: str | type[Exception] = render(source, row)
    except (TemplateError, InvalidInput) as exc:
        got = type(exc)
    assert got == expected


@given(st.text(alphabet="abc_{}:!.[]0 ", max_size=20), st.text())
def test_python_format_agrees_wherever_both_apply(source: str, value: str) -> None:
    """Where Python's own `format_map` reads the same template (plain names, not starting
    with a digit) it gives the same text; what it calls unbalanced we refuse too."""
    names = re.findall(r"\{([^{}]*)\}", source)
    row = dict.fromkeys(names, value)
    try:
        ours: str | None = compile_template(source).render(row)
    except TemplateError:
        ours = None
    try:
        python: str | None = source.format_map(row)
    except ValueError as exc:
        # `{0}` and `{}` are positional to Python, a row field named "0" to us: not comparable.
        assert ours is None or "positional" in str(exc)
        return
    except (KeyError, IndexError, AttributeError, TypeError):
        python = None
    if ours is not None and all(not n[:1].isdigit() and "." not in n for n in names):
        assert ours == python


# --- a job's messages ------------------------------------------------------------------------


def test_messages_render_per_row_with_constants_kept() -> None:
    messages = compile_messages(
        [
            {"role": "system", "content": 'Answer as {{"label": ...}}.'},
            {"role": "user", "content": "Review: {text} ({meta.lang})", "prefix": False},
            {"role": "{speaker}", "content": "{text}"},
        ]
    )
    row = {"text": "superb", "meta": {"lang": "en"}, "speaker": "assistant"}
    assert messages.render(row) == [
        {"role": "system", "content": 'Answer as {"label": ...}.'},
        {"role": "user", "content": "Review: superb (en)", "prefix": False},
        {"role": "assistant", "content": "superb"},
    ]
    assert messages.fields == ("text", "meta.lang", "speaker")
    assert messages.absent_fields(iter([{"text": "x"}, {"speaker": "user"}])) == ("meta.lang",)
    first, second = messages.render(row), messages.render({**row, "text": "dull"})
    assert first[1]["content"] != second[1]["content"] and first[0] == second[0]


def test_message_errors_name_the_message_and_key() -> None:
    with pytest.raises(TemplateError) as caught:
        compile_messages([{"role": "user", "content": "ok {a}"}, {"role": "user", "content": "{"}])
    assert str(caught.value).startswith("messages[1].content: column 1: ")
    not_tables: Any = ["hello"]
    with pytest.raises(ConfigError, match=r"messages\[0\] must be a table, not str"):
        compile_messages(not_tables)
    missing = compile_messages([{"role": "user", "content": "{text}"}])
    with pytest.raises(InvalidInput) as absent:
        missing.render({"txt": "typo"})
    assert absent.value.field == "text" and "messages[0].content uses it" in str(absent.value)
