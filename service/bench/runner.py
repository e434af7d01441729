"""``dunning bench``: run every measurement in order and print the table and the JSON line."""

from __future__ import annotations

import asyncio
import gc
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from service.bench import ceilings, stages
from service.bench.common import FULL, QUICK, Sizes, lag_p99_ms, loop_kind, run_loop
from service.bench.e2e import OutcomeWatcher, WorkerProcess, capacity, latency, seed_waiting
from service.bench.env import BenchEnv
from service.bench.report import Results, json_line, judge, ratio, table
from service.bench.responders import Responders
from service.bench.scaling import measure_scaling
from service.policy import PolicyError, load_policy
from service.rendering import Renderer

Say = Callable[[str], None]
E2E_WARM_UP = 20  # events through the fresh worker before its capacity is measured


async def _ceilings(env: BenchEnv, sizes: Sizes, results: Results, say: Say) -> None:
    settings = env.settings("raw")
    say(f"raw ceilings: {sizes.raw} messages each")
    results["raw_consume_ack_per_s"] = await ceilings.raw_consume(settings, sizes.raw)
    results["raw_sdk_per_s"] = await ceilings.raw_sdk(settings, sizes.raw)
    results["raw_smtp_per_s"] = await ceilings.raw_smtp(settings, sizes.raw)


async def _stages(env: BenchEnv, sizes: Sizes, results: Results, say: Say) -> None:
    settings = env.settings("intake")
    policy = load_policy(settings.policy_path)
    renderer = Renderer(settings.templates_dir, policy.default_locale)
    say(f"intake: a backlog of {sizes.intake} events")
    results["intake_per_s"] = await stages.intake_stage(settings, policy, env.run, sizes.intake)
    results["intake_ratio"] = ratio(results["intake_per_s"], results["raw_consume_ack_per_s"])
    lags = []
    for channel, ceiling in (("sms", "raw_sdk_per_s"), ("email", "raw_smtp_per_s")):
        say(f"dispatch: {sizes.dispatch} {channel} notices")
        found = await stages.dispatch_stage(env.settings(f"dispatch-{channel}"), policy,
                                            renderer, f"{env.run}-{channel}", channel,
                                            sizes.dispatch)
        if found.sent != sizes.dispatch:
            raise RuntimeError(f"dispatch sent {found.sent} of {sizes.dispatch} {channel}")
        results[f"dispatch_{channel}_per_s"] = found.per_s
        results[f"dispatch_{channel}_ratio"] = ratio(found.per_s, results[ceiling])
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
        results["e2e_per_s"] = found = await capacity(watcher, f"{env.run}-cap", sizes.e2e)
        timed = await latency(watcher, f"{env.run}-lat", found / 2, sizes.latency_s)
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
            for step in (_ceilings, _stages, _end_to_end, _scaling):
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
