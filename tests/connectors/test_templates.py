"""Templates and path expressions."""

from __future__ import annotations

import pytest

from talkwire.connectors.paths import PathError, map_fields, select
from talkwire.connectors.templates import TemplateError, render, render_value, template_fields


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
