"""Bytes copied from one stream to another until it ends: the inside of the tests' TCP proxies."""

from __future__ import annotations

import asyncio
import contextlib


async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            sink.close()
