"""A streamed answer kept for the request log of a key that logs bodies, up to the log's limit."""

from __future__ import annotations

from tollway.telemetry.access_log import BODY_LIMIT


class Capture:
    __slots__ = ("_chunks", "_kept", "size")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._kept = 0
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        # One byte past the limit is enough for the log to see that it was cut.
        if self._kept <= BODY_LIMIT:
            self._chunks.append(chunk)
            self._kept += len(chunk)

    def body(self) -> bytes:
        return b"".join(self._chunks)
