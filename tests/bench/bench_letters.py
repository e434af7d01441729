"""Benchmark: do letters (WeasyPrint, CPU-bound) slow the worker's event loop or its SMS?

    .venv/bin/python -m tests.bench.bench_letters [--sms 40000] [--letters 50] [--repeat 2]

Needs what the integration tests need (RabbitMQ on 127.0.0.1, WeasyPrint, fonts-noto-cjk).
It prints figures and asserts nothing (timings depend on the machine and its load).

Each run is a fresh worker (`dunning worker` as a subprocess, SQLite ledger, no rate limits,
letters to a spool, the Twilio double in a process of its own). ``--sms`` CN SMS notices are
published; once the worker has taken every event in and sent SMS steadily for ``STEADY_S``,
``--letters`` CN M3 letters are published. Two windows of each run are compared: the steady
flow before the letters, and while they render (from their publication to the last one
written). A control run without letters, measured over the same windows, follows each run and
shows what changes in the second window anyway (a growing ledger). Per window: SMS
throughput (sent SMS a second, from the outcomes' timestamps) and the worker's event-loop lag:
``lagmon/sitecustomize.py``, put on the worker's PYTHONPATH, samples every 10 ms how late the
loop wakes up from a sleep, and times the worker's full garbage collections. Before the runs:
the render time per page in one warm render process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.channels.pdf import PdfRenderer
from tests.helpers.notices import TEMPLATES_URL, rendered_notice, sample_event
from tests.helpers.worker import Broker, WorkerProcess, offset_to, sample, unique_prefix

LAGMON = Path(__file__).with_name("lagmon")
NOON_IN_SHANGHAI = datetime.now(UTC).replace(hour=4, minute=0, second=0, microsecond=0)
STEADY_S = 15.0  # of steady SMS flow, after every event was taken in, before the letters


@dataclass
class Window:
    label: str
    start: float
    end: float

    def sms_per_s(self, sent: list[float]) -> float:
        return sum(1 for at in sent if self.start <= at < self.end) / (self.end - self.start)

    def lag_ms(self, lag: list[tuple[float, float]]) -> list[float]:
        return sorted(ms for at, ms in lag if self.start <= at < self.end)


@dataclass
class Run:
    """What one run measured; times are Unix seconds, lag samples (time, milliseconds)."""

    sms_sent: list[float]
    steady_from: float
    letters_published: float
    letters_done: float  # the last letter written; in a run without letters, the same moment
    lag: list[tuple[float, float]]
    gc_pauses: list[tuple[float, float]]  # full garbage collections of the worker: (time, s)

    def windows(self) -> tuple[Window, Window]:
        """The steady SMS flow before the letters, and while they render and SMS still flow."""
        end = min(self.letters_done, self.sms_sent[-1])
        return (Window("before letters", self.steady_from, self.letters_published),
                Window("letters render", self.letters_published, end))

    def report(self, label: str) -> float:
        """Print both windows; return SMS throughput while letters render / before them."""
        rates = []
        print(label, flush=True)
        for window in self.windows():
            lag = window.lag_ms(self.lag)
            pauses = window.lag_ms([(at, s * 1000) for at, s in self.gc_pauses]) or [0.0]
            rates.append(window.sms_per_s(self.sms_sent))
            print(f"  {window.label:>14} ({window.end - window.start:4.1f} s): SMS "
                  f"{rates[-1]:5.1f}/s; loop lag p50 {statistics.median(lag):4.1f} ms, p99 "
                  f"{lag[round(0.99 * (len(lag) - 1))]:5.1f} ms, max {lag[-1]:5.1f} ms, "
                  f"{sum(1 for ms in lag if ms > 50)} of {len(lag)} samples over 50 ms; "
                  f"{len(pauses) if pauses != [0.0] else 0} full GCs, the longest "
                  f"{pauses[-1]:.0f} ms", flush=True)
        if self.letters_done > self.sms_sent[-1]:
            print("  (the SMS ran out before the letters were done: publish more SMS)")
        return rates[1] / rates[0]


def sms_events(count: int) -> list[dict[str, Any]]:
    base = sample("escalated_m1_cn.json")
    return [{**base, "event_id": f"bench-sms-{i}", "channels": ["sms"],
             "account": {**base["account"], "account_id": f"CC-B-S{i}"},
             "debtor": {**base["debtor"], "debtor_id": f"D-B-S{i}", "phone": f"+86139{i:08d}"}}
            for i in range(count)]


def letter_events(count: int) -> list[dict[str, Any]]:
    base = sample("escalated_m3_letter_cn.json")
    return [{**base, "event_id": f"bench-letter-{i}", "channels": ["letter"],
             "account": {**base["account"], "account_id": f"CC-B-L{i}"},
             "debtor": {**base["debtor"], "debtor_id": f"D-B-L{i}"}} for i in range(count)]


async def render_time_per_page(letters: int = 10) -> tuple[float, int]:
    """Seconds per page in one warm render process (the process's start not counted)."""
    renderer = PdfRenderer(1, base_url=TEMPLATES_URL)
    notice = rendered_notice(sample_event("escalated_m3_letter_cn.json"), "cn_m3", "letter")
    try:
        await renderer.health()  # starts the process and warms it up
        started, pages = time.perf_counter(), 0
        for _ in range(letters):
            pages += (await renderer.render_notice(notice)).pages
        return (time.perf_counter() - started) / pages, pages
    finally:
        await renderer.aclose()


def start_twilio_double() -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """The Twilio double in a process of its own; returns it and its port and credentials."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.bench.twilio_server"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def worker_settings(workdir: Path, processes: int, offset_s: float,
                    double: dict[str, Any]) -> dict[str, str]:
    return {
        "DUNNING_LETTER_SPOOL_DIR": str(workdir / "spool"),
        "DUNNING_LETTER_PROCESSES": str(processes), "DUNNING_RATE_SMS": "off",
        "DUNNING_CLOCK_OFFSET_S": str(offset_s),
        "DUNNING_TWILIO_ACCOUNT_SID": double["account_sid"],
        "DUNNING_TWILIO_AUTH_TOKEN": double["auth_token"], "DUNNING_TWILIO_FROM": "+15005550006",
        "DUNNING_TWILIO_API_BASE": f"http://127.0.0.1:{double['port']}",
        "BENCH_LAG_FILE": str(workdir / "lag.json"), "PYTHONPATH": str(LAGMON)}


async def taken_in(broker: Broker) -> None:
    """Until the worker's queue has no ready message: every event is in the ledger, or about to."""
    while True:  # aio-pika's robust channel remembers a declaration: ask the broker itself
        channel = await broker.channel.get_underlay_channel()
        declared = await channel.queue_declare(broker.names["DUNNING_QUEUE"], passive=True)
        if not declared.message_count:
            return
        await asyncio.sleep(0.5)


async def until(broker: Broker, channel: str, count: int) -> None:
    # polling a count 5 times a second costs less than waking up on every outcome
    while sum(1 for o in broker.outcomes if o["channel"] == channel  # noqa: ASYNC110
              and o["status"] != "deferred") < count:
        await asyncio.sleep(0.2)


async def one_run(sms: int, letters: int, processes: int, workdir: Path,
                  hold_s: float = 0.0) -> Run:
    """One worker, ``sms`` SMS, then ``letters`` letters (none: it waits ``hold_s`` instead)."""
    twilio, double = start_twilio_double()
    offset_s = offset_to(NOON_IN_SHANGHAI)
    async with Broker(unique_prefix()) as broker:
        prefix = broker.names["DUNNING_EXCHANGE"].removesuffix(".events")
        worker = WorkerProcess(workdir, prefix,
                               **worker_settings(workdir, processes, offset_s, double)).start()
        try:
            events = sms_events(sms)
            for start in range(0, sms, 500):
                await broker.publish(*events[start:start + 500])
            await taken_in(broker)
            steady_from = time.time() + 2.0  # the last prefetched events go into the ledger
            await asyncio.sleep(2.0 + STEADY_S)
            letters_published = time.time()
            if letters:
                await broker.publish(*letter_events(letters))
            await until(broker, "letter", letters)
            await asyncio.sleep(max(letters_published + hold_s - time.time(), 0))
            await until(broker, "sms", sms)
        finally:
            worker.terminate()
            twilio.communicate("", timeout=60)
    written = sent_at(broker.outcomes, "letter", offset_s)
    measured = json.loads((workdir / "lag.json").read_text())
    lag = [(at, lag_s * 1000) for at, lag_s in measured["lag"]]
    return Run(sent_at(broker.outcomes, "sms", offset_s), steady_from, letters_published,
               max(written) if written else letters_published + hold_s, lag,
               [(at, pause_s) for at, pause_s in measured["gc"]])


def sent_at(outcomes: list[dict[str, Any]], channel: str, offset_s: float) -> list[float]:
    """When the worker sent each notice of ``channel``, in Unix seconds (its clock is shifted)."""
    return sorted(datetime.fromisoformat(o["at"]).timestamp() - offset_s for o in outcomes
                  if o["channel"] == channel and o["status"] == "sent")


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sms", type=int, default=40000)
    parser.add_argument("--letters", type=int, default=50)
    parser.add_argument("--processes", type=int, default=2, help="DUNNING_LETTER_PROCESSES")
    parser.add_argument("--repeat", type=int, default=2, help="pairs of runs")
    args = parser.parse_args()
    for noisy in ("aiormq", "aio_pika"):  # the test helper's teardown reconnects: not a finding
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    per_page_s, pages = await render_time_per_page()
    print(f"render time: {per_page_s * 1000:.0f} ms a page ({pages} pages, one warm process)")
    effects = []
    for number in range(1, args.repeat + 1):
        with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second:
            mixed = await one_run(args.sms, args.letters, args.processes, Path(first))
            hold_s = mixed.letters_done - mixed.letters_published
            alone = await one_run(args.sms, 0, args.processes, Path(second), hold_s)
        with_letters = mixed.report(
            f"run {number}: {args.sms} SMS, {args.letters} letters published after "
            f"{STEADY_S:g} s of steady SMS flow, {args.processes} render process(es)")
        without = alone.report(f"run {number} without letters (the same windows): the control")
        effects.append(with_letters / without)
        print(f"  SMS in the second window / the first: {with_letters:.0%} with letters, "
              f"{without:.0%} without; letters cost {1 - with_letters / without:.0%} of the "
              f"SMS throughput", flush=True)
    print(f"SMS throughput while letters render: {statistics.mean(effects):.0%} of what it is "
          f"without letters (mean of {args.repeat} pair(s) of runs)")

if __name__ == "__main__":
    asyncio.run(main())
