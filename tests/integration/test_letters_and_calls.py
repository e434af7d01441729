"""The worker with letters to a spool (real WeasyPrint, real fonts) and calls to the Twilio double."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from tests.helpers.notices import pdf_text, poppler, us_event
from tests.helpers.twilio_double import TwilioDouble
from tests.helpers.worker import ROOT, SAMPLES, Broker, WorkerProcess, by_channel
from tests.integration.conftest import TWILIO_FROM

StartWorker = Callable[..., WorkerProcess]
PUBLIC_URL = "https://dunning.example.com"


def spooled(spool: Path, suffix: str) -> list[Path]:
    return sorted(spool.rglob(f"*{suffix}"))


def spoken(twiml: str | None) -> list[tuple[str, dict[str, str], str]]:
    root = ET.fromstring((twiml or "").encode("utf-8"))  # noqa: S314 - TwiML we made
    return [(verb.tag, dict(verb.attrib), verb.text or "") for verb in root]


async def test_an_m3_event_yields_one_pdf_letter_and_one_chinese_call_even_when_republished(
        start_worker: StartWorker, broker: Broker, twilio: TwilioDouble, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    worker = start_worker(DUNNING_LETTER_SPOOL_DIR=str(spool), DUNNING_PUBLIC_URL=PUBLIC_URL)
    await broker.publish_sample("escalated_m3_letter_cn.json")
    outcomes = by_channel(await broker.wait_outcomes(2, terminal=True))
    assert {c: (o["status"], o["provider"]) for c, o in outcomes.items()} == {
        "letter": ("sent", "spool"), "voice": ("sent", "twilio")}

    (pdf,) = spooled(spool, ".pdf")
    assert outcomes["letter"]["provider_id"] == pdf.relative_to(spool).as_posix()
    assert pdf.name == f"{outcomes['letter']['notice_id']}.pdf"
    text = pdf_text(pdf)
    for expected in ("李娜", "9,120.55", "浦东新区世纪大道100号", "21楼", "200120", "上海市"):
        assert expected in text, expected
    fonts = poppler("pdffonts", str(pdf))
    assert any("CJK" in line and line.split()[-5:-3] == ["yes", "yes"]
               for line in fonts.splitlines()), fonts
    manifest = json.loads(pdf.with_suffix(".json").read_text(encoding="utf-8"))
    assert (manifest["paper"], manifest["template"], manifest["locale"]) == ("A4", "cn_m3", "zh-CN")

    (call,) = twilio.calls
    assert outcomes["voice"]["provider_id"] == call.sid
    assert (call.to, call.from_) == ("+8613912345678", TWILIO_FROM)
    assert call.status_callback == f"{PUBLIC_URL}/twilio/status"
    verbs = spoken(call.twiml)
    assert verbs[0][1]["language"] == "cmn-CN" and "¥9,120.55" in verbs[0][2]
    assert [tag for tag, _, _ in verbs] == ["Say", "Pause", "Say", "Say"]

    await broker.publish_sample("escalated_m3_letter_cn.json")
    await broker.publish_sample("escalated_m1_cn.json")  # a marker: once through, so is the repeat
    await broker.wait_outcomes(4)
    await asyncio.sleep(0.5)
    assert len(broker.outcomes) == 4 and len(twilio.calls) == 1
    assert spooled(spool, ".pdf") == [pdf] and len(spooled(spool, ".json")) == 1
    logs = worker.logs()
    for personal in ("李娜", "+8613912345678", "浦东新区", "200120"):
        assert personal not in logs, personal


async def test_a_us_late_event_yields_a_us_letter_pdf_in_english_and_an_english_call(
        start_worker: StartWorker, broker: Broker, twilio: TwilioDouble, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    start_worker(DUNNING_LETTER_SPOOL_DIR=str(spool))
    await broker.publish(us_event("late", channels=["letter", "voice"]))
    outcomes = by_channel(await broker.wait_outcomes(2, terminal=True))
    assert {c: o["status"] for c, o in outcomes.items()} == {"letter": "sent", "voice": "sent"}
    (pdf,) = spooled(spool, ".pdf")
    assert "612 x 792 pts (letter)" in poppler("pdfinfo", str(pdf))
    text = pdf_text(pdf)
    assert "Your Account Is Seriously Past Due" in text and "Maria Gonzalez" in text
    assert outcomes["letter"]["locale"] == outcomes["voice"]["locale"] == "en-US"
    verbs = spoken(twilio.calls[0].twiml)
    assert {attrs.get("language") for tag, attrs, _ in verbs if tag == "Say"} == {"en-US"}
    assert "Please call" in verbs[0][2]


def test_render_writes_a_letter_as_pdf(tmp_path: Path) -> None:
    out = tmp_path / "out.pdf"
    result = subprocess.run(
        [sys.executable, "-m", "service", "render", "--event",
         str(SAMPLES / "escalated_m3_letter_cn.json"), "--template", "cn_m3", "--channel",
         "letter", "-o", str(out)],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("DUNNING_")},
             "DUNNING_TEMPLATES_DIR": str(ROOT / "templates")})
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(b"%PDF-") and "A4" in result.stderr
    assert "李娜" in pdf_text(out)


def parent_of(stat: str) -> int:
    # the command name in parentheses may hold spaces: the state, then the parent, follow it
    return int(stat.rsplit(")", 1)[1].split()[1])


def render_processes(pid: int) -> set[int]:
    """The multiprocessing children of ``pid`` (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if parent_of(stat.read_text()) == pid and \
                    b"multiprocessing" in (stat.parent / "cmdline").read_bytes():
                found.add(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def running(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (neither gone nor a zombie)."""
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            alive.add(pid)
    return alive


async def test_a_killed_worker_takes_its_letter_render_processes_with_it(
        start_worker: StartWorker, broker: Broker, tmp_path: Path) -> None:
    worker = start_worker(DUNNING_LETTER_SPOOL_DIR=str(tmp_path / "spool"))
    await broker.publish_sample("escalated_m3_letter_cn.json")
    await broker.wait_outcomes(2, terminal=True)  # a letter was rendered: its process runs
    assert worker.proc is not None
    renderers = render_processes(worker.proc.pid)
    assert renderers, "no render process found"
    worker.kill()
    for _ in range(100):
        if not (alive := running(renderers)):
            break
        await asyncio.sleep(0.1)
    assert not alive, f"render processes {sorted(alive)} outlived their SIGKILLed worker"
