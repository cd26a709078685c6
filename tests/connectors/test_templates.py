"""The one template language (strict and lenient rendering, filters), the caller scope, paths."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from decimal import Decimal

import pytest

from talkwire.connectors.caller import caller_scope
from talkwire.connectors.paths import PathError, map_fields, select
from talkwire.connectors.templates import (
    LENIENT,
    TemplateError,
    TemplateSyntaxError,
    TemplateValueError,
    compile_template,
    render,
    render_value,
    template_fields,
)


def test_render_and_native_values() -> None:
    values = {"order_id": 1001, "ok": True, "user": {"sub": "c-100", "tenant": {"id": 7}}}
    assert render("order:{order_id}", values) == "order:1001"
    assert (
        render("{user.sub}/{user.tenant.id} {{literal}} {ok}", values) == "c-100/7 {literal} true"
    )
    assert render_value("{order_id}", values) == 1001
    assert render_value({"a": ["{ok}", "x{order_id}"], "n": 3}, values) == {
        "a": [True, "x1001"],
        "n": 3,
    }
    assert template_fields({"a": "{x}-{user.sub}"}) == {"x", "user.sub"}


@pytest.mark.parametrize(
    "bad", ["{x.__class__}", "{x!r}", "{x:>10}", "{0}", "{x[0]}", "{", "a}b", "{}"]
)
def test_unsafe_or_malformed_templates_are_refused(bad: str) -> None:
    with pytest.raises(TemplateError):
        render(bad, {"x": "v"})


def test_missing_value() -> None:
    with pytest.raises(TemplateError, match="order_id"):
        render("{order_id}", {})
    with pytest.raises(TemplateError):
        render("{user.sub.__len__}", {"user": {"sub": "a"}})


def test_fields_and_numbers() -> None:
    values = {"result": {"balance": Decimal("1234.5"), "currency": "EUR"}, "n": 1234567}
    assert render("Your balance is {result.balance|num:2} {result.currency}.", values) == (
        "Your balance is 1,234.50 EUR."
    )
    assert render("{n|num}", values) == "1,234,567"
    assert render("{result.balance|num}", {"result": {"balance": 1234.5}}) == "1,234.50"
    assert render("{{literal}} {n}", values) == "{literal} 1234567"


def test_each_count_default_join() -> None:
    rows = [{"id": 1001, "status": "shipped"}, {"id": 1002, "status": "processing"}]
    values = {"result": rows, "name": "Alice"}
    assert render('{result|each:"#{id} {status}", "; "}', values) == (
        "#1001 shipped; #1002 processing"
    )
    assert render('{result|each:"{index}. {id} for {name}"}', values) == (
        "1. 1001 for Alice\n2. 1002 for Alice"
    )
    assert render("{result|count} orders", values) == "2 orders"
    assert render('{missing|default:"none"}', values) == "none"
    assert render('{tags|join:"/"}', {"tags": ["a", "b"]}) == "a/b"
    assert render("{result.1.status}", values) == "processing"


def test_strict_and_lenient_modes() -> None:
    """Keys and parameters are strict (true/false); what people read is lenient (yes/no)."""
    assert compile_template("{order_id}", mode=LENIENT).render_value({"order_id": 1001}) == 1001
    with pytest.raises(TemplateValueError):
        compile_template("{user.customer_id}", mode=LENIENT).render({"user": {}}, strict=True)
    assert compile_template("x{nope}y", mode=LENIENT).render({}) == "xy"
    assert compile_template("{nope}", mode=LENIENT).render_value({}) is None
    assert render("paid: {ok}", {"ok": True}, mode=LENIENT) == "paid: yes"
    assert render("paid={ok}", {"ok": True}) == "paid=true"
    assert render("{row}", {"row": {"a": [1, 2]}}, mode=LENIENT) == '{"a":[1,2]}'


def test_templates_cannot_reach_attributes_or_call_code() -> None:
    class Secret:
        password = "hunter2"

    values = {"obj": Secret(), "s": "abc"}
    assert render("{obj.password}", values, mode=LENIENT) == ""
    assert render("{s.__class__}", values, mode=LENIENT) == ""
    for bad in ("{a.__class__.__mro__()}", "{a!r}", "{a:>10}", "{a|exec}", "{", "}", "{a|each}"):
        with pytest.raises(TemplateSyntaxError):
            compile_template(bad)


def test_filters_can_be_refused() -> None:
    assert compile_template("order:{order_id}", filters=False).fields == ("order_id",)
    with pytest.raises(TemplateSyntaxError, match="filters are not allowed"):
        compile_template("order:{order_id|upper}", filters=False)


def test_both_subject_spellings_render_the_subject() -> None:
    """``{user.sub}`` is documented; ``{user.subject}`` (deprecated) renders the same value."""
    values = {"user": caller_scope("alice", {"sub": "jwt-sub", "customer_id": "c-100"})}
    assert render("owner:{user.sub}", values) == "owner:alice"
    assert render("owner:{user.subject}", values) == "owner:alice"
    assert render_value("{user.subject}", values) == "alice"
    assert template_fields({"a": "{user.subject}", "b": "{user.sub}"}) == {"user.sub"}


def test_deprecated_spelling_is_logged_once() -> None:
    """A fresh process: three templates with the old spelling, one warning on stderr."""
    script = textwrap.dedent(
        """
        import logging
        from talkwire.connectors.caller import caller_scope
        from talkwire.connectors.templates import render
        logging.basicConfig(format="%(levelname)s %(name)s %(message)s")
        user = {"user": caller_scope("bob", {})}
        print(render("a:{user.subject}", user), render("b:{user.subject}", user),
              render("{user.sub}", user), render("c:{user.subject}", user))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-W", "default::DeprecationWarning", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert proc.stdout.split() == ["a:bob", "b:bob", "bob", "c:bob"]
    logged = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    assert logged == [
        "WARNING talkwire.connectors.caller template field {user.subject} is deprecated; "
        "write {user.sub} (same value)"
    ]
    assert proc.stderr.count("DeprecationWarning") == 1


def test_caller_scope_subject_wins_over_a_sub_claim() -> None:
    assert caller_scope("alice", {"sub": "other", "tier": "gold"}) == {
        "sub": "alice",
        "tier": "gold",
    }
    assert caller_scope("", {"sub": "jwt"}) == {"sub": "jwt"}


def test_paths() -> None:
    doc = {"data": {"items": [{"status": "a", "k.e": 1}, {"status": "b"}]}}
    assert select(doc, "data.items[0].status") == "a"
    assert select(doc, "data.items[-1].status") == "b"
    assert select(doc, "data.items[5].status") is None
    assert select(doc, 'data.items[0]["k.e"]') == 1
    assert select(doc, "data.items[*].status") == ["a", "b"]
    assert map_fields(select(doc, "data.items"), {"s": "status"}) == [{"s": "a"}, {"s": "b"}]
    with pytest.raises(PathError):
        select(doc, "data..items")
