"""``python -m service.bench.worker``: the real worker, plus a lag monitor on its event loop.

Exactly what ``dunning worker`` runs (``service.app.Worker`` on uvloop when installed); the
lag samples go to ``DUNNING_BENCH_LAG_FILE`` as JSON ``[[unix_time, lag_s], …]`` at exit.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from service.app import StartupError, Worker
from service.bench.common import LagMonitor, run_loop
from service.config import Settings
from service.logs import configure


async def main(lag: LagMonitor) -> int:
    settings = Settings()
    configure(settings.log_level, settings.log_format)
    lag.start()
    try:
        await Worker(settings).run()
    except StartupError as exc:
        print(f"dunning: {exc}", file=sys.stderr)
        return 2
    finally:
        await lag.stop()
    return 0


def run() -> int:
    lag = LagMonitor()
    try:
        return run_loop(main(lag))
    finally:
        target = os.environ.get("DUNNING_BENCH_LAG_FILE")
        if target:
            Path(target).write_text(json.dumps(lag.samples), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(run())
