"""The outbox: what a channel with no provider configured would send, written as files.

``<outbox_dir>/<channel>/<notice_id>.<ext>``: email as ``.eml`` (the same MIME the SMTP
adapter sends), SMS and voice as ``.json``, a letter as ``.html`` with a ``.json`` beside it.
Each file is written to a temporary file in the same directory and renamed over the target,
so a reader never sees half a file, and re-sending a notice rewrites the same file. File
writes are blocking, so they run in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

from service.channels.base import CHANNELS, Channel, Receipt, RenderedNotice
from service.channels.email import build_message


def file_stem(notice_id: str) -> str:
    """A file name for a notice id: the same id always maps to the same, safe name."""
    stem = quote(notice_id, safe="-_.~@+=")
    return "%2E" + stem[1:] if stem.startswith(".") else stem


def write_atomically(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (blocking)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"


class OutboxAdapter:
    """``OutboxAdapter(channel, outbox_dir, email_from="collections@localhost")``.

    One class serves all four channels.
    """

    name = "outbox"
    max_body_chars: ClassVar[int | None] = None
    default_rate: ClassVar[str | None] = None

    def __init__(
        self,
        channel: Channel,
        outbox_dir: Path | str,
        *,
        email_from: str = "collections@localhost",
    ) -> None:
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}")
        self.channel: Channel = channel
        self.directory = Path(outbox_dir) / channel
        self._email_from = email_from

    async def send(self, notice: RenderedNotice) -> Receipt:
        files = self._files(notice)
        await asyncio.to_thread(self._write_all, files)
        return Receipt(provider=self.name, provider_id=next(iter(files)).name)

    def _files(self, notice: RenderedNotice) -> dict[Path, bytes]:
        """What to write, the main file first."""
        stem = self.directory / file_stem(notice.notice_id)
        if self.channel == "email":
            message = build_message(notice, self._email_from)
            return {stem.with_name(stem.name + ".eml"): message.as_bytes()}
        if self.channel == "letter":
            manifest = self._manifest(notice)
            manifest["recipient_name"] = notice.recipient_name
            manifest["address"] = asdict(notice.address) if notice.address else None
            html = notice.parts.get("html", "").encode("utf-8")
            return {
                stem.with_name(stem.name + ".html"): html,
                stem.with_name(stem.name + ".json"): _json_bytes(manifest),
            }
        manifest = self._manifest(notice)
        manifest["body"] = notice.parts.get("text", "")
        return {stem.with_name(stem.name + ".json"): _json_bytes(manifest)}

    @staticmethod
    def _manifest(notice: RenderedNotice) -> dict[str, Any]:
        return {
            "notice_id": notice.notice_id,
            "event_id": notice.event_id,
            "to": notice.destination,
            "locale": notice.locale,
            "template": notice.template,
        }

    @staticmethod
    def _write_all(files: dict[Path, bytes]) -> None:
        # The main file last: once it exists, everything beside it does too.
        for path, data in reversed(files.items()):
            write_atomically(path, data)

    async def aclose(self) -> None:
        return None
