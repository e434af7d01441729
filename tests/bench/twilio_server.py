"""The Twilio REST double as a process of its own (so the benchmark's own work does not share
a CPU with what it measures). Prints its port, serves until stdin closes, then prints how many
messages and calls it accepted as JSON."""

from __future__ import annotations

import asyncio
import json
import sys

from tests.helpers.twilio_double import TwilioDouble


async def serve() -> None:
    async with TwilioDouble() as double:
        print(json.dumps({"port": double.port, "account_sid": double.account_sid,
                          "auth_token": double.auth_token}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        print(json.dumps({"messages": len(double.messages), "calls": len(double.calls)}),
              flush=True)


if __name__ == "__main__":
    asyncio.run(serve())
