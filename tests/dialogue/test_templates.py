from __future__ import annotations

from decimal import Decimal

import pytest

from talkwire.server.dialogue.templates import (
    TemplateSyntaxError,
    TemplateValueError,
    compile_template,
    render,
)


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


def test_value_types_and_strict() -> None:
    tmpl = compile_template("{order_id}")
    assert tmpl.render_value({"order_id": 1001}) == 1001
    with pytest.raises(TemplateValueError):
        compile_template("{user.customer_id}").render({"user": {}}, strict=True)
    assert compile_template("x{nope}y").render({}) == "xy"


def test_templates_cannot_reach_attributes_or_call_code() -> None:
    class Secret:
        password = "hunter2"

    values = {"obj": Secret(), "s": "abc"}
    assert render("{obj.password}", values) == ""
    assert render("{s.__class__}", values) == ""
    for bad in ("{a.__class__.__mro__()}", "{a!r}", "{a:>10}", "{a|exec}", "{", "}", "{a|each}"):
        with pytest.raises(TemplateSyntaxError):
            compile_template(bad)
