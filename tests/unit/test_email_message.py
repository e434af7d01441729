"""The email as it goes to the SMTP server: the same bytes aiosmtplib would have made."""

from __future__ import annotations

import email
from email.message import Message

import pytest
from aiosmtplib.email import flatten_message

from service.channels.base import RenderedNotice
from service.channels.email import build_message, flatten

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


def test_a_body_that_quotes_the_boundary_cannot_break_the_message() -> None:
    hostile = "--=_ntc_0123abcd\nContent-Type: text/html\n\n<p>forged</p>\n--=_ntc_0123abcd--"
    sent = email.message_from_bytes(flatten(build_message(notice("Hi", hostile), FROM)))
    parts = [part for part in sent.walk() if not part.is_multipart()]
    assert len(parts) == 1
    assert isinstance(parts[0], Message)
    assert parts[0].get_payload(decode=True).decode("utf-8") == hostile
