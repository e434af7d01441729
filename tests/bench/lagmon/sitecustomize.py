"""Put on PYTHONPATH of a worker by ``bench_letters``: samples the worker's event-loop lag.

When ``BENCH_LAG_FILE`` is set, ``asyncio.run`` runs a task beside the program that sleeps
``INTERVAL_S`` and records how much later than asked it woke up (the time the loop was busy
with something else); at exit the samples go to that file as JSON ``[[unix_time, lag_s], …]``.
Nothing of the worker is changed; the render processes import this too and ignore it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

INTERVAL_S = 0.01
_target = os.environ.get("BENCH_LAG_FILE")
_run = asyncio.run


async def _sample(samples: list[tuple[float, float]]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        expected = loop.time() + INTERVAL_S
        await asyncio.sleep(INTERVAL_S)
        samples.append((time.time(), loop.time() - expected))


def _write(samples: list[tuple[float, float]]) -> None:
    Path(str(_target)).write_text(json.dumps(samples), encoding="utf-8")


def _measured_run(main: Coroutine[Any, Any, Any], **kwargs: Any) -> Any:
    async def measured() -> Any:
        samples: list[tuple[float, float]] = []
        sampler = asyncio.create_task(_sample(samples))
        try:
            return await main
        finally:
            sampler.cancel()
            _write(samples)

    return _run(measured(), **kwargs)


if _target:
    asyncio.run = _measured_run
