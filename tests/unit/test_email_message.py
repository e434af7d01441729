"""The email as it goes to the SMTP server: the same bytes aiosmtplib would have made."""

from __future__ import annotations

import email
from email.generator import BytesGenerator
from email.message import Message
from email.mime.text import MIMEText
from io import BytesIO

import pytest
from aiosmtplib.email import flatten_message
from aiosmtplib.protocol import normalize_message_line_endings
from hypothesis import example, given, settings
from hypothesis import strategies as st

from service.channels.base import PermanentDeliveryError, RenderedNotice
from service.channels.email import (
    SMTP_POLICY,
    build_message,
    flatten,
    message_bytes,
    smtp_size,
    text_part,
)

FROM = "招商银行信用卡中心 <collections@bank.example>"


def notice(subject: str, text: str, html: str = "") -> RenderedNotice:
    return RenderedNotice(notice_id="ntc_0123abcd", event_id="evt-1", channel="email",
                          template="cn_m1", locale="zh-CN", destination="wang@example.com",
                          parts={"subject": subject, "text": text, "html": html})


@pytest.mark.parametrize("subject", [
    "信用卡逾期还款提醒",
    "Your card account ending 1234 is 35 days past due: please pay USD 1,234.56 by 5 December",
    "Reminder",
])
def test_flattening_gives_the_bytes_aiosmtplib_gives(subject: str) -> None:
    message = build_message(notice(subject, "您的账户已逾期。" * 40, "<p>您的账户已逾期。</p>"),
                            FROM)
    assert flatten(message) == flatten_message(message)


DATE = "Sun, 29 Nov 2026 14:30:13 GMT"


@settings(max_examples=300, deadline=None)
@given(subject=st.text(), text=st.text(), html=st.text(),
       notice_id=st.from_regex(r"[A-Za-z0-9._-]{1,40}|ntc_[0-9a-f]{26}|[ -~\n]{1,12}", fullmatch=True),
       email_from=st.sampled_from([FROM, "collections@bank.example", "Bank <a@b.example>"]))
@example(subject="信用卡逾期还款提醒", text="您的账户已逾期。" * 40, html="<p>x</p>",
         notice_id="ntc_0123abcd", email_from=FROM)
@example(subject="Your card account ending 1234 is 35 days past due: please pay USD 1,234.56 "
                 "by 5 December", text="x" * 57, html="", notice_id="evt-5.m1.1",
         email_from=FROM)
def test_the_message_written_directly_is_the_message_built_and_flattened(
        subject: str, text: str, html: str, notice_id: str, email_from: str) -> None:
    """The same bytes, or the same refusal (a line break in a header, no body at all)."""
    made = RenderedNotice(notice_id=notice_id, event_id="evt-1", channel="email",
                          template="cn_m1", locale="zh-CN", destination="wang@example.com",
                          parts={"subject": subject, "text": text, "html": html})
    try:
        built = flatten(build_message(made, email_from, DATE))
    except PermanentDeliveryError as refused:
        with pytest.raises(PermanentDeliveryError) as caught:
            message_bytes(made, email_from, DATE)
        assert caught.value.reason == refused.reason
        return
    assert message_bytes(made, email_from, DATE) == built


def test_a_body_that_quotes_the_boundary_cannot_break_the_message() -> None:
    hostile = "--=_ntc_0123abcd\nContent-Type: text/html\n\n<p>forged</p>\n--=_ntc_0123abcd--"
    sent = email.message_from_bytes(flatten(build_message(notice("Hi", hostile), FROM)))
    parts = [part for part in sent.walk() if not part.is_multipart()]
    assert len(parts) == 1
    assert isinstance(parts[0], Message)
    assert parts[0].get_payload(decode=True).decode("utf-8") == hostile


@settings(max_examples=300, deadline=None)
@given(body=st.text(), subtype=st.sampled_from(["plain", "html"]))
@example(body="x" * 57, subtype="plain")  # one whole base64 line, then none
@example(body="x" * 58, subtype="plain")
@example(body="From here\r\nto there\n\n", subtype="plain")  # what a generator would mangle
def test_a_text_part_is_mimetext_made_cheaper(body: str, subtype: str) -> None:
    """The same headers and payload as ``MIMEText``, and the same bytes from the stock
    generator and from ours."""
    made, stock = text_part(body, subtype), MIMEText(body, subtype, "utf-8")
    assert made.items() == stock.items()
    assert made.get_payload() == stock.get_payload()
    with BytesIO() as out:
        BytesGenerator(out, policy=SMTP_POLICY).flatten(stock)
        assert flatten(made) == out.getvalue()  # type: ignore[arg-type]


def test_a_part_that_is_not_base64_is_written_as_the_stock_generator_writes_it() -> None:
    part = MIMEText("From the bank\nline two\n", "plain", "us-ascii")  # 7bit, mangled
    with BytesIO() as out:
        BytesGenerator(out, policy=SMTP_POLICY).flatten(part)
        assert flatten(part) == out.getvalue() == (  # type: ignore[arg-type]
            b'Content-Type: text/plain; charset="us-ascii"\nMIME-Version: 1.0\n'
            b"Content-Transfer-Encoding: 7bit\n\n>From the bank\nline two\n")


@given(st.lists(st.sampled_from([b"a", b".", b" ", b"\r", b"\n", b"\r\n", b"\xe4"]), max_size=40))
@example([b"\r\r\n"])
@example([b"x\r"])
def test_the_smtp_size_is_the_length_aiosmtplib_sends(pieces: list[bytes]) -> None:
    """What ``sendmail`` measured by rewriting the line endings, counted instead."""
    message = b"".join(pieces)
    assert smtp_size(message) == len(normalize_message_line_endings(message))
