"""GETs to one host over a few kept-alive HTTP/1.1 connections, as a browser fetches a page's images (asyncio)."""

from __future__ import annotations

import asyncio
import time

MEDIA_CONNECTIONS = 6  # HTTP/1.1 connections a browser opens to one host
IDLE_REUSE_S = 3.0  # a kept-alive connection idle longer is not reused (uvicorn closes them after 5 s)


class Http:
    """GETs to one host over at most `connections` kept-alive HTTP/1.1 connections."""

    def __init__(self, host: str, port: int, connections: int = MEDIA_CONNECTIONS) -> None:
        self.host, self.port = host, port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []  # + when it went idle
        self._slots = asyncio.Semaphore(connections)
        self.requests = 0
        self.bytes = 0

    async def get(self, path: str, timeout_s: float = 60.0) -> int:
        """The status of GET `path` (its body read and dropped); a kept-alive connection the server closed is
        retried once on a new one."""
        async with self._slots:
            for attempt in range(2):
                conn = await self._connection(fresh=attempt > 0)
                try:
                    status, keep = await asyncio.wait_for(self._request(conn, path), timeout_s)
                except (ConnectionError, asyncio.IncompleteReadError, ValueError):
                    conn[1].close()
                    if attempt:
                        raise
                    continue
                except BaseException:
                    conn[1].close()
                    raise
                if keep:
                    self._idle.append((*conn, time.monotonic()))
                else:
                    conn[1].close()
                return status
        raise AssertionError("unreachable")

    async def _connection(self, fresh: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A kept-alive connection idle for less than IDLE_REUSE_S, else (or when `fresh`) a new one."""
        while self._idle and not fresh:
            reader, writer, since = self._idle.pop()
            if time.monotonic() - since < IDLE_REUSE_S and not reader.at_eof():
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port)

    async def _request(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], path: str) -> tuple[int, bool]:
        reader, writer = conn
        head = f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n"
        writer.write(head.encode())
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionResetError("closed before the response")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while size := int((await reader.readline()).split(b";")[0], 16):
                self.bytes += len(await reader.readexactly(size + 2)) - 2
            await reader.readline()
        else:
            self.bytes += len(await reader.readexactly(int(headers.get("content-length", "0"))))
        self.requests += 1
        return status, headers.get("connection", "").lower() != "close"

    def close(self) -> None:
        for _, writer, _ in self._idle:
            writer.close()
        self._idle.clear()
