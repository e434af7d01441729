"""``dunning bench``: run every measurement in order and print the table and the JSON line."""

from __future__ import annotations

import asyncio
import gc
import sys
import tempfile
from collections.abc import Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from service.bench import ceilings, stages
from service.bench.common import (
    FULL,
    QUICK,
    Sizes,
    core_percent,
    lag_p99_ms,
    loop_kind,
    per_event_ms,
    run_loop,
)
from service.bench.e2e import OutcomeWatcher, WorkerProcess, capacity, latency, seed_waiting
from service.bench.env import BenchEnv
from service.bench.report import Results, json_line, judge, ratio, table
from service.bench.responders import Responders
from service.bench.scaling import measure_scaling
from service.channels.email import message_bytes
from service.clock import make_clock
from service.policy import PolicyError, load_policy
from service.rendering import Renderer

Say = Callable[[str], None]
T = TypeVar("T")
E2E_WARM_UP = 20  # events through the fresh worker before its capacity is measured


CEILINGS = {  # stage -> its ceiling's key
    "intake": "raw_consume_ack",
    "dispatch_sms": "raw_sdk",
    "dispatch_email": "raw_smtp",
}


async def _between_ceilings(results: Results, stage: str,
                            ceiling: Callable[[], Coroutine[Any, Any, float]],
                            run: Coroutine[Any, Any, T]) -> T:
    """Run a stage between two measurements of its ceiling, right before and right after."""
    key = CEILINGS[stage]
    try:
        results[f"{key}_before_per_s"] = await ceiling()
    except BaseException:
        run.close()  # never started
        raise
    found = await run
    results[f"{key}_after_per_s"] = await ceiling()
    return found


def _compare(results: Results, stage: str, per_s: float) -> None:
    """The stage's rate and its ratio to the mean of its two ceilings: a machine that
    speeds up or slows down during the run moves both sides alike."""
    key = CEILINGS[stage]
    ceiling = results[f"{key}_per_s"] = (
        results[f"{key}_before_per_s"] + results[f"{key}_after_per_s"]) / 2
    results[f"{stage}_per_s"] = per_s
    results[f"{stage}_ratio"] = ratio(per_s, ceiling)


async def _stages(env: BenchEnv, sizes: Sizes, results: Results, say: Say) -> None:
    settings, raw = env.settings("intake"), env.settings("raw")
    policy = load_policy(settings.policy_path)
    renderer = Renderer(settings.templates_dir, policy.default_locale)
    say(f"intake: a backlog of {sizes.intake} events, between two raw consumes of "
        f"{sizes.raw} messages")
    _compare(results, "intake", await _between_ceilings(
        results, "intake", partial(ceilings.raw_consume, raw, sizes.raw),
        stages.intake_stage(settings, policy, env.run, sizes.intake)))
    sample = {channel: stages.sample_notice(policy, renderer, make_clock(raw.clock_offset_s)(),
                                            channel) for channel in ("sms", "email")}
    results["sms_body_chars"] = len(sample["sms"].parts["text"])
    results["email_message_bytes"] = len(message_bytes(sample["email"], raw.email_from))
    lags = []
    for channel, ceiling in (("sms", ceilings.raw_sdk), ("email", ceilings.raw_smtp)):
        say(f"dispatch: {sizes.dispatch} {channel} notices, between two raw sends of "
            f"{sizes.raw} messages")
        found = await _between_ceilings(results, f"dispatch_{channel}",
                                        partial(ceiling, raw, sizes.raw, sample[channel]),
                                        stages.dispatch_stage(
                                            env.settings(f"dispatch-{channel}"), policy,
                                            renderer, f"{env.run}-{channel}", channel,
                                            sizes.dispatch))
        if found.sent != sizes.dispatch:
            raise RuntimeError(f"dispatch sent {found.sent} of {sizes.dispatch} {channel}")
        _compare(results, f"dispatch_{channel}", found.per_s)
        results[f"lag_dispatch_{channel}_p99_ms"] = found.lag_p99_ms
        lags.append(found.lag_p99_ms)
    results["lag_dispatch_p99_ms"] = max(lags)


async def _end_to_end(env: BenchEnv, sizes: Sizes, results: Results, say: Say) -> None:
    settings = env.settings("e2e")
    say(f"end to end: {sizes.waiting:,} deferred notices in the ledger, then "
        f"{sizes.e2e} events, then {sizes.latency_s:g} s at half capacity")
    await seed_waiting(settings, sizes.waiting, env.run)
    worker = WorkerProcess(env.worker_env(settings, env.workdir / "lag-e2e.json"),
                           env.workdir, settings.http_port).start()
    watcher = OutcomeWatcher(settings)
    try:
        await worker.ready()
        await asyncio.sleep(1.0)
        results["rss_idle_mb"] = worker.rss_mb()[0]
        await watcher.open()
        await capacity(watcher, f"{env.run}-warm", E2E_WARM_UP)
        started = worker.cpu_s()
        results["e2e_per_s"] = found = await capacity(watcher, f"{env.run}-cap", sizes.e2e)
        between = worker.cpu_s()  # the burst's end is the half-capacity run's start
        results["e2e_cpu_ms_per_event"] = per_event_ms(started, between, sizes.e2e)
        timed = await latency(watcher, f"{env.run}-lat", found / 2, sizes.latency_s)
        ended = worker.cpu_s()
        results["e2e_half_cpu_ms_per_event"] = per_event_ms(between, ended, timed.events)
        # while the load was offered, and until its last outcomes came
        results["e2e_half_cpu_percent"] = core_percent(between, ended, timed.ended - timed.started)
        results["rss_peak_mb"] = worker.rss_mb()[1]
    finally:
        await watcher.close()
        samples = worker.stop()
    results.update(e2e_offered_per_s=timed.offered_per_s, e2e_p50_ms=timed.p50_ms,
                   e2e_p99_ms=timed.p99_ms, waiting_notices=sizes.waiting,
                   lag_e2e_p99_ms=lag_p99_ms(samples, timed.started, timed.ended))


async def _scaling(env: BenchEnv, sizes: Sizes, results: Results, say: Say) -> None:
    if sizes.scaling:
        say(f"scaling: {sizes.scaling} events through one, then two workers on PostgreSQL")
    found = await measure_scaling(env, sizes.scaling)
    results.update(scaling_one_per_s=found.one_per_s, scaling_two_per_s=found.two_per_s,
                   scaling_ratio=ratio(found.two_per_s, found.one_per_s)
                   if found.one_per_s and found.two_per_s else None,
                   scaling_note=found.note)


async def measure(sizes: Sizes, quick: bool, say: Say) -> Results:
    results: Results = {"quick": quick, "loop": loop_kind()}
    # the bench's own imports frozen, as the worker freezes its own: a full collection here
    # paused this process for 50-190 ms, and an outcome it was about to time waited as long
    gc.collect()
    gc.freeze()
    with tempfile.TemporaryDirectory(prefix="dunning-bench-") as tmp:
        responders = Responders().start()
        env = BenchEnv(Path(tmp), responders)
        try:
            for step in (_stages, _end_to_end, _scaling):
                await step(env, sizes, results, say)
        finally:
            await env.cleanup()
            counts = responders.stop()
    results["responder_counts"] = counts
    results["targets"] = judge(results)
    results["all_targets_met"] = all(results["targets"].values())
    return results


def run_bench(*, quick: bool, json_only: bool) -> int:
    """Measure, print the table (unless ``json_only``) and the JSON line; 0 unless it broke."""
    def say(text: str) -> None:
        if not json_only:
            print(f"bench: {text}", file=sys.stderr, flush=True)

    try:
        results = run_loop(measure(QUICK if quick else FULL, quick, say))
    except (PolicyError, ConnectionError, RuntimeError, OSError) as exc:
        print(f"dunning bench: {exc}", file=sys.stderr)
        return 1
    if not json_only:
        print(table(results))
    print(json_line(results), flush=True)
    return 0
