"""Rendering: filters, locale fallback, SMS segment counting."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from babel.numbers import format_currency
from jinja2 import DictLoader, Environment, StrictUndefined, UndefinedError

from service.rendering import (
    NoticeEnvironment,
    Renderer,
    RenderInput,
    TemplateMissing,
    locale_chain,
    mask,
    sms_segments,
)


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def data(locale: str = "zh-CN", channel: str = "sms", currency: str = "CNY") -> RenderInput:
    return RenderInput(
        notice_id="ntc_1", channel=channel, template="t", locale=locale, stage="m1",
        account={"amount_due": Decimal("1830.00"), "currency": currency, "card_last4": "4321",
                 "due_date": date(2026, 10, 25)},
        debtor={"name": "张伟"}, event={}, context={}, sender={"name": "Bank"},
        today=date(2026, 11, 28))


def test_money_is_locale_aware_with_grouping(tmp_path: Path) -> None:
    write(tmp_path, "t/zh-CN/sms.txt.j2", "{{ account.amount_due | money(account.currency) }}")
    write(tmp_path, "t/en-US/sms.txt.j2", "{{ account.amount_due | money(account.currency) }}")
    renderer = Renderer(tmp_path)
    assert renderer.render(data()).parts["text"] == "¥1,830.00"
    assert renderer.render(data("en-US", currency="USD")).parts["text"] == "$1,830.00"


def test_remembered_amounts_are_formatted_as_babel_formats_each(tmp_path: Path) -> None:
    write(tmp_path, "t/zh-CN/sms.txt.j2", "{{ account.amount_due | money(account.currency) }}")
    renderer = Renderer(tmp_path)
    for amount in ("0", "-0", "0", "1830.00", "1830.0", "1830.005", "-12.5", "-12.50"):
        notice = data()
        notice.account["amount_due"] = Decimal(amount)
        assert renderer.render(notice).parts["text"] == format_currency(
            Decimal(amount), "CNY", locale="zh_CN"), amount


def test_date_filter_follows_the_locale(tmp_path: Path) -> None:
    write(tmp_path, "t/zh-CN/sms.txt.j2", "{{ account.due_date | date }}")
    write(tmp_path, "t/en-US/sms.txt.j2", "{{ account.due_date | date }}")
    renderer = Renderer(tmp_path)
    assert renderer.render(data()).parts["text"] == "2026年10月25日"
    assert renderer.render(data("en-US")).parts["text"] == "October 25, 2026"


def test_locale_falls_back_from_region_to_language_to_default(tmp_path: Path) -> None:
    write(tmp_path, "t/zh/sms.txt.j2", "中文")
    write(tmp_path, "t/en-US/sms.txt.j2", "English")
    renderer = Renderer(tmp_path, "en-US")
    assert renderer.render(data("zh-CN")).parts["text"] == "中文"
    assert renderer.render(data("fr-FR")).locale == "en-US"
    assert locale_chain("zh-CN", "en-US") == ["zh-CN", "zh", "en-US"]


def test_a_missing_template_is_reported(tmp_path: Path) -> None:
    with pytest.raises(TemplateMissing, match="no sms files"):
        Renderer(tmp_path).render(data())


def test_undefined_variables_fail_instead_of_rendering_blank(tmp_path: Path) -> None:
    write(tmp_path, "t/zh-CN/sms.txt.j2", "{{ account.nope }}")
    with pytest.raises(UndefinedError):
        Renderer(tmp_path).render(data())


class Attributes(dict):  # type: ignore[type-arg]
    """A dict with an attribute of its own: not a plain dict, so Jinja2's own lookup runs."""

    amount_due = "from the attribute"


LOOKUPS = {
    "item": "{{ account.amount_due }}",
    "nested": "{{ debtor.address.city }}",
    "dict_method": "{{ account.items() | list | length }}",  # the method, not the key
    "key_named_like_a_method": "{{ account.get }}",
    "get_call": "{{ account.get('missing', 'fallback') }}",
    "dunder": "{{ account.__class__.__name__ }}",
    "subclass": "{{ special.amount_due }}",
    "list_item": "{{ lines.0 }}",
    "object": "{{ today.year }}",
}


@pytest.mark.parametrize("name", LOOKUPS)
def test_dict_lookups_give_what_jinja2_itself_gives(name: str) -> None:
    values = {"account": {"amount_due": Decimal("1.50"), "items": "key", "get": "key"},
              "debtor": {"address": {"city": "上海"}}, "special": Attributes(amount_due="k"),
              "lines": ["one"], "today": date(2026, 11, 29)}
    rendered = [kind(loader=DictLoader(LOOKUPS), undefined=StrictUndefined)
                .get_template(name).render(values) for kind in (Environment, NoticeEnvironment)]
    assert rendered[0] == rendered[1]


@pytest.mark.parametrize("template", ["{{ account.missing }}", "{{ account.missing.deeper }}"])
def test_a_missing_key_is_still_an_undefined_error(template: str) -> None:
    env = NoticeEnvironment(loader=DictLoader({"t": template}), undefined=StrictUndefined)
    with pytest.raises(UndefinedError, match="missing"):
        env.get_template("t").render(account={"amount_due": 1})


def test_html_is_autoescaped_and_text_is_not(tmp_path: Path) -> None:
    for name in ("email.subject.j2", "email.txt.j2", "email.html.j2"):
        write(tmp_path, f"t/zh-CN/{name}", "{{ debtor.name }}")
    notice = data(channel="email")
    notice.debtor["name"] = "<b>Tom & Jerry</b>"
    parts = Renderer(tmp_path).render(notice).parts
    assert parts["html"] == "&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;"
    assert parts["text"] == "<b>Tom & Jerry</b>"


def test_mask_keeps_the_last_four() -> None:
    assert mask("6222000012344321") == "************4321"
    assert mask("123") == "***"
    assert mask(None) == ""


@pytest.mark.parametrize(("text", "encoding", "segments"), [
    ("a" * 160, "GSM-7", 1),
    ("a" * 161, "GSM-7", 2),
    ("a" * 306, "GSM-7", 2),
    ("a" * 307, "GSM-7", 3),
    ("{" * 80, "GSM-7", 1),   # extension characters count twice
    ("{" * 81, "GSM-7", 2),
    ("中" * 70, "UCS-2", 1),
    ("中" * 71, "UCS-2", 2),
    ("中" * 134, "UCS-2", 2),
    ("中" * 135, "UCS-2", 3),
    ("a" * 69 + "€", "GSM-7", 1),
    ("😀" * 35, "UCS-2", 1),  # a surrogate pair is two UCS-2 units
    ("😀" * 36, "UCS-2", 2),
])
def test_sms_segments(text: str, encoding: str, segments: int) -> None:
    count = sms_segments(text)
    assert (count.encoding, count.segments) == (encoding, segments)


def test_a_validation_notice_renders_only_when_its_figures_add_up_exactly() -> None:
    from tests.helpers.notices import rendered_notice, us_event

    # 3,000.00 + 95.44 + 25.00 - 0.00 = 3,120.44, the amount due: in Decimal, to the cent
    assert "$3,120.44" in rendered_notice(us_event("recovery"), "us_recovery", "letter").parts["html"]
    # a tenth of a cent off is off (floats compared within half a cent let this one pass)
    off = us_event("recovery", account={"days_past_due": 112, "amount_due": "3120.441"})
    with pytest.raises(UndefinedError, match="itemization_must_add_up_to_amount_due"):
        rendered_notice(off, "us_recovery", "letter")
