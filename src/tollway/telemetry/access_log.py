"""One JSON line per request, written in batches off the event loop.

A line is built with orjson as the request ends and appended to a buffer; a background task hands what has
gathered to a thread every ``interval`` seconds, which writes it. So the request path does no I/O of its own
(a write to a pipe that a slow log collector has filled would block the whole loop), and a busy gateway
makes one write call per batch instead of one per request.

Writes are cut at line ends into pieces of at most ``PIPE_BUF`` bytes where the lines allow: the kernel
writes such a piece to a pipe in one go, so the lines of several worker processes sharing stderr do not
interleave mid-line. A line longer than that (a logged body) is written alone.

Lines never carry a key's secret. The request and the answer are logged only for keys that the operator
marked with ``log_bodies``, and then cut at ``BODY_LIMIT`` bytes each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import sys
from typing import Any, BinaryIO

import orjson

from tollway.errors import ConfigError
from tollway.store import UsageRecord

log = logging.getLogger("tollway.access")

BODY_LIMIT = 1024 * 1024
MAX_BUFFERED = 64 * 1024 * 1024
"""Bytes kept waiting for a sink that does not keep up; lines past this are dropped and counted."""
PIPE_BUF = getattr(select, "PIPE_BUF", 4096)


def body_value(raw: bytes, size: int | None = None) -> Any:
    """A body as the log line carries it: the JSON itself when it is JSON, else its text. ``size``: the whole
    body's length, when ``raw`` is what was kept of a longer one."""
    size = len(raw) if size is None else size
    if size > BODY_LIMIT:
        return {"truncated": True, "bytes": size, "text": raw[:BODY_LIMIT].decode("utf-8", "replace")}
    return orjson.Fragment(raw) if _is_json(raw) else raw.decode("utf-8", "replace")


def _is_json(raw: bytes) -> bool:
    # A fragment is copied into the line unchecked: only what parses may go in as one.
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


def request_line(row: UsageRecord, *, client: str | None, user_agent: str | None, key_name: str | None,
                 tries: int, request_body: bytes | None = None, response_body: bytes | None = None,
                 response_size: int | None = None) -> bytes:
    fields: dict[str, Any] = {
        "time": row.created_at, "level": "info", "logger": "tollway.request", "request_id": row.request_id,
        "endpoint": row.endpoint, "key_id": row.key_id, "key_name": key_name, "model": row.model,
        "upstream": row.upstream, "upstream_model": row.upstream_model, "stream": row.stream, "status": row.status,
        "error_type": row.error_type, "input_tokens": row.input_tokens, "output_tokens": row.output_tokens,
        "cache_creation_input_tokens": row.cache_creation_input_tokens,
        "cache_read_input_tokens": row.cache_read_input_tokens,
        "cost_usd": None if row.cost_nanousd is None else row.cost_nanousd / 1e9,
        "latency_ms": _hundredths(row.latency_ms), "ttfb_ms": None if row.ttfb_ms is None else _hundredths(row.ttfb_ms),
        "tries": tries, "client": client, "user_agent": user_agent,
    }
    if request_body is not None:
        fields["request_body"] = body_value(request_body)
    if response_body is not None:
        fields["response_body"] = body_value(response_body, response_size)
    return orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)


def _hundredths(ms: float) -> float:
    # round() goes through a decimal string, ten times this; the times are never negative.
    return int(ms * 100 + 0.5) / 100


def open_sink(where: str) -> tuple[BinaryIO, bool]:
    """The stream named by ``[log] requests`` and whether it is the log's own to close."""
    if where == "stderr":
        return sys.stderr.buffer, False
    if where == "stdout":
        return sys.stdout.buffer, False
    try:
        return open(where, "ab", buffering=0), True  # closed by AccessLog.close
    except OSError as exc:
        raise ConfigError(f"log.requests: cannot open {where}: {exc.strerror or exc}") from None


def pieces(lines: list[bytes], size: int = PIPE_BUF) -> list[bytes]:
    """The lines joined into as few writes as fit ``size`` each, every write ending at a line end (a line longer
    than ``size`` goes alone). Cut by searching the joined bytes, one step per write rather than per line: this
    runs in the writer thread holding the GIL, and every step of Python there is time the event loop may wait."""
    data = b"".join(lines)
    out: list[bytes] = []
    start, total = 0, len(data)
    while total - start > size:
        cut = data.rfind(b"\n", start, start + size) + 1
        if cut <= start:  # the next line alone is longer than size: it goes whole
            cut = data.find(b"\n", start) + 1 or total
        out.append(data[start:cut])
        start = cut
    if start < total:
        out.append(data[start:])
    return out


class AccessLog:
    def __init__(self, sink: BinaryIO, *, owns_sink: bool = False, interval: float = 0.2) -> None:
        self._sink = sink
        self._owns_sink = owns_sink
        self._interval = interval
        self._lines: list[bytes] = []
        self._buffered = 0
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.dropped = 0
        self.written = 0

    def write(self, line: bytes) -> None:
        if self._buffered + len(line) > MAX_BUFFERED:
            self.dropped += 1
            return
        self._lines.append(line)
        self._buffered += len(line)

    @property
    def pending(self) -> int:
        return len(self._lines)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tollway-access-log")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            if not self._lines:
                return
            lines, self._lines, self._buffered = self._lines, [], 0
            try:
                await asyncio.to_thread(self._write, lines)
            except OSError as exc:
                # A log that cannot be written must not take requests down with it: say so once per batch.
                self.dropped += len(lines)
                log.error("request log: %d lines not written: %s", len(lines), exc)
            else:
                self.written += len(lines)

    def _write(self, lines: list[bytes]) -> None:
        fd = self._sink.fileno()
        for piece in pieces(lines):
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view):]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
        if self._owns_sink:
            self._sink.close()
