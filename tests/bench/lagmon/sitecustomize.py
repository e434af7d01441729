"""Put on PYTHONPATH of a worker by ``bench_letters``: samples the worker's event-loop lag.

When ``BENCH_LAG_FILE`` is set, ``asyncio.run`` runs a task beside the program that sleeps
``INTERVAL_S`` and records how much later than asked it woke up (the time the loop was busy
with something else), and a ``gc`` callback records how long each full (generation 2) garbage
collection took, since those stop the loop too. At exit the file gets
``{"lag": [[unix_time, lag_s], …], "gc": [[unix_time, pause_s], …]}``.
Nothing of the worker is changed; the render processes import this too and ignore it.
An experiment: ``BENCH_GC_FREEZE=<seconds>`` calls ``gc.freeze()`` that long after start, so
full collections skip what the worker built while starting.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

INTERVAL_S = 0.01
_target = os.environ.get("BENCH_LAG_FILE")
_run = asyncio.run
_gc_pauses: list[tuple[float, float]] = []
_gc_started = 0.0


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    global _gc_started
    if info.get("generation") != 2:
        return
    if phase == "start":
        _gc_started = time.perf_counter()
    else:
        _gc_pauses.append((time.time(), time.perf_counter() - _gc_started))


async def _sample(samples: list[tuple[float, float]]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        expected = loop.time() + INTERVAL_S
        await asyncio.sleep(INTERVAL_S)
        samples.append((time.time(), loop.time() - expected))


def _write(samples: list[tuple[float, float]]) -> None:
    document = {"lag": samples, "gc": _gc_pauses}
    Path(str(_target)).write_text(json.dumps(document), encoding="utf-8")


def _measured_run(main: Coroutine[Any, Any, Any], **kwargs: Any) -> Any:
    async def measured() -> Any:
        samples: list[tuple[float, float]] = []
        sampler = asyncio.create_task(_sample(samples))
        if os.environ.get("BENCH_GC_FREEZE"):  # an experiment: what gc.freeze() after start does
            asyncio.get_running_loop().call_later(float(os.environ["BENCH_GC_FREEZE"]), gc.freeze)
        try:
            return await main
        finally:
            sampler.cancel()
            _write(samples)

    return _run(measured(), **kwargs)


if _target:
    asyncio.run = _measured_run
    gc.callbacks.append(_on_gc)
