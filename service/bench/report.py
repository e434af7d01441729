"""The bench's results: the targets, a table for people and one JSON line for machines."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

Results = dict[str, Any]

# name -> (check, what it says); the ratios are to ceilings measured in the same run
TARGETS: dict[str, tuple[Callable[[Results], bool], str]] = {
    "intake": (lambda r: r["intake_ratio"] >= 0.6, ">= 0.6 x raw consume+ack"),
    "dispatch_sms": (lambda r: r["dispatch_sms_ratio"] >= 0.6, ">= 0.6 x raw SDK"),
    "dispatch_email": (lambda r: r["dispatch_email_ratio"] >= 0.6, ">= 0.6 x raw pooled SMTP"),
    "e2e_p99": (lambda r: r["e2e_p99_ms"] < 100, "< 100 ms at half capacity"),
    "loop_lag_p99": (lambda r: max(r["lag_dispatch_p99_ms"], r["lag_e2e_p99_ms"]) < 20,
                     "< 20 ms during dispatch and end to end"),
    "rss": (lambda r: r["rss_peak_mb"] < 250, "< 250 MB with the waiting notices"),
}


def ratio(value: float, ceiling: float) -> float:
    return round(value / ceiling, 3) if ceiling else 0.0


def judge(results: Results) -> dict[str, bool]:
    return {name: bool(check(results)) for name, (check, _) in TARGETS.items()}


def _fmt(value: Any, unit: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f} {unit}".strip()
    return f"{value:,} {unit}".strip()


def _pair(first: float | None, second: float | None, unit: str) -> str:
    if first is None or second is None:
        return "-"
    return f"{first:.1f} / {second:.1f} {unit}"


def _rows(r: Results) -> list[tuple[str, str, str, str]]:
    t = r["targets"]

    def ok(name: str) -> str:
        return ("ok" if t[name] else "MISSED") + f" ({TARGETS[name][1]})"

    def around(key: str) -> str:
        return (f"mean of {r[f'{key}_before_per_s']:,.0f} before, "
                f"{r[f'{key}_after_per_s']:,.0f} after")

    return [
        ("1 raw consume+ack (prefetch 200)", _fmt(r["raw_consume_ack_per_s"], "msg/s"),
         around("raw_consume_ack"), ""),
        ("1 raw twilio SDK (concurrency 16)", _fmt(r["raw_sdk_per_s"], "msg/s"),
         f"{around('raw_sdk')}; the SMS notice, {r['sms_body_chars']} characters", ""),
        ("1 raw aiosmtplib (pool)", _fmt(r["raw_smtp_per_s"], "msg/s"),
         f"{around('raw_smtp')}; the email notice, {r['email_message_bytes']:,} bytes", ""),
        ("2 intake queue -> ledger", _fmt(r["intake_per_s"], "events/s"),
         f"{r['intake_ratio']:.2f} x raw", ok("intake")),
        ("3 dispatch sms", _fmt(r["dispatch_sms_per_s"], "notices/s"),
         f"{r['dispatch_sms_ratio']:.2f} x raw", ok("dispatch_sms")),
        ("3 dispatch email", _fmt(r["dispatch_email_per_s"], "notices/s"),
         f"{r['dispatch_email_ratio']:.2f} x raw", ok("dispatch_email")),
        ("4 end to end email+sms", _fmt(r["e2e_per_s"], "events/s"), "", ""),
        ("4 latency p50 at half capacity", _fmt(r["e2e_p50_ms"], "ms"),
         _fmt(r["e2e_offered_per_s"], "events/s"), ""),
        ("4 latency p99 at half capacity", _fmt(r["e2e_p99_ms"], "ms"), "", ok("e2e_p99")),
        ("4 worker CPU an event, burst / half", _pair(r["e2e_cpu_ms_per_event"],
                                                      r["e2e_half_cpu_ms_per_event"], "ms"),
         f"{_fmt(r['e2e_half_cpu_percent'], '%')} of a core at half capacity", ""),
        ("5 worker RSS, idle / peak", f"{r['rss_idle_mb']:.0f} / {r['rss_peak_mb']:.0f} MB",
         f"{r['waiting_notices']:,} waiting", ok("rss")),
        ("6 loop lag p99 dispatch / e2e",
         f"{r['lag_dispatch_p99_ms']:.1f} / {r['lag_e2e_p99_ms']:.1f} ms", "",
         ok("loop_lag_p99")),
        ("scaling: 1 worker on PostgreSQL", _fmt(r["scaling_one_per_s"], "events/s"), "", ""),
        ("scaling: 2 workers on PostgreSQL", _fmt(r["scaling_two_per_s"], "events/s"),
         r["scaling_note"], ""),
    ]


def table(results: Results) -> str:
    header = ("measurement", "value", "compared", "target")
    rows = [header, *_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3]))
                     + "  " + row[3])
        if index == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
    return "\n".join(line.rstrip() for line in lines)


def json_line(results: Results) -> str:
    def rounded(value: Any) -> Any:
        return round(value, 2) if isinstance(value, float) else value

    return json.dumps({key: rounded(value) for key, value in results.items()},
                      ensure_ascii=False, sort_keys=True)
