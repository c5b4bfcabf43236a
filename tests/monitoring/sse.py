"""A small server-sent events reader for the tests (and the benchmark)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass
class Message:
    id: int | None
    event: str
    data: str
    comment: bool = False

    @property
    def json(self) -> Any:
        return json.loads(self.data)


async def messages(resp: aiohttp.ClientResponse) -> AsyncIterator[Message]:
    """Each SSE message (and each comment line, as a ``comment`` message) until the server closes the stream."""
    fields: dict[str, str] = {}
    async for raw in resp.content:
        line = raw.decode().rstrip("\n").rstrip("\r")
        if line == "":
            if "data" in fields or "event" in fields:
                ident = fields.get("id")
                yield Message(int(ident) if ident else None, fields.get("event", "message"), fields.get("data", ""))
            fields = {}
        elif line.startswith(":"):
            yield Message(None, "", line[1:].strip(), comment=True)
        else:
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            fields[key] = f"{fields[key]}\n{value}" if key == "data" and key in fields else value
