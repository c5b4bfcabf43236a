"""A minimal keep-alive HTTP/1.1 client for the load process: one connection per worker, requests back to back.

The load shares the machine's two cores with the stack it measures, so every microsecond it spends is taken from
the API. aiohttp's client costs about 0.3 ms of CPU per request here; this one (a StreamReader on uvloop, the
request head built once per URL) a fraction of that, the way wrk or h2load would. It understands exactly what the
API answers: a status line, headers, and a body framed by Content-Length or chunked encoding.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


class HttpError(Exception):
    """The server answered something this client does not understand, or closed the connection."""


class Connection:
    """One keep-alive connection to the host and port of ``url``; reconnects after the server closes it."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"only plain http is supported: {url}")
        self.host = parts.hostname
        self.port = parts.port or 80
        fixed = {"Host": f"{self.host}:{self.port}", **headers}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._heads: dict[tuple[str, str, bool], bytes] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    def _head(self, method: str, url: str, has_body: bool) -> bytes:
        """The request line and fixed headers for ``url`` (built on first use, then looked up)."""
        key = (method, url, has_body)
        head = self._heads.get(key)
        if head is None:
            parts = urlsplit(url)
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            extra = "Content-Type: application/json\r\n" if has_body else ""
            head = f"{method} {target} HTTP/1.1\r\n{self._fixed}{extra}".encode()
            self._heads[key] = head
        return head

    async def request(self, method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Send one request and read its whole answer: (status, body)."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        length = f"Content-Length: {len(body)}\r\n\r\n".encode() if body is not None else b"Content-Length: 0\r\n\r\n"
        self._writer.write(self._head(method, url, body is not None) + length + (body or b""))
        try:
            status, data, keep = await self._read_response(self._reader)
        except (asyncio.IncompleteReadError, ConnectionError, HttpError):
            await self.close()
            raise
        if not keep:
            await self.close()
        return status, data

    @staticmethod
    async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        try:
            status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise HttpError(f"bad status line {lines[0]!r}") from None
        length, chunked, keep = None, False, True
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and value.strip().lower() == b"close":
                keep = False
        if chunked:
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            return status, b"".join(parts), keep
        if length is None:
            raise HttpError("an answer without Content-Length or chunked encoding")
        return status, await reader.readexactly(length), keep

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass
