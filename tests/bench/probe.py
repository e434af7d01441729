"""Event-loop lag of a worker, from outside: ``GET /healthz`` every ``interval`` seconds.

/healthz checks no dependency, so its latency is the time the worker's event loop takes to
get to the request (plus a loopback HTTP round trip of ~1 ms). Runs until stdin closes, then
prints the latencies in seconds as a JSON list.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request


def main(url: str, interval_s: float) -> None:
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    latencies: list[float] = []
    while not done.is_set():
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback URL
            response.read()
        latencies.append(time.perf_counter() - started)
        done.wait(interval_s)
    print(json.dumps(latencies), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.02)
