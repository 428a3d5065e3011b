"""The request log's writer: batches off the loop, whole lines per write, bounded memory, bodies only by choice."""

from __future__ import annotations

import asyncio
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway.errors import ConfigError
from tollway.store import UsageRecord
from tollway.telemetry import access_log
from tollway.telemetry.access_log import BODY_LIMIT, AccessLog, open_sink, pieces, request_line
from tollway.telemetry.capture import Capture


def row(**fields: object) -> UsageRecord:
    base: dict[str, object] = {
        "request_id": "req_abc", "created_at": datetime(2026, 11, 26, 3, 0, tzinfo=UTC), "key_id": "key_1",
        "endpoint": "messages", "model": "claude-sonnet-4-6", "upstream": "fake", "upstream_model": "m",
        "stream": True, "status": 200, "error_type": None, "input_tokens": 3, "output_tokens": 4,
        "latency_ms": 12.345, "ttfb_ms": 2.0, "cost_nanousd": 1_500_000}
    return UsageRecord(**{**base, **fields})  # type: ignore[arg-type]


def test_a_line_is_one_json_object_with_the_request_id_and_no_bodies_by_default() -> None:
    line = request_line(row(), client="127.0.0.1", user_agent="claude-cli/2.0", key_name="alice", tries=1)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    fields = orjson.loads(line)
    assert fields["request_id"] == "req_abc" and fields["time"] == "2026-11-26T03:00:00+00:00"
    assert fields["key_id"] == "key_1" and fields["key_name"] == "alice" and fields["status"] == 200
    assert fields["cost_usd"] == pytest.approx(0.0015) and fields["latency_ms"] == 12.35
    assert fields["user_agent"] == "claude-cli/2.0" and fields["tries"] == 1
    assert "request_body" not in fields and "response_body" not in fields


def test_bodies_go_in_as_json_when_they_are_json_and_as_text_otherwise() -> None:
    line = request_line(row(), client=None, user_agent=None, key_name=None, tries=1,
                        request_body=b'{"messages":[{"role":"user","content":"hi"}]}',
                        response_body=b"event: ping\ndata: {}\n\n")
    fields = orjson.loads(line)
    assert fields["request_body"] == {"messages": [{"role": "user", "content": "hi"}]}
    assert fields["response_body"] == "event: ping\ndata: {}\n\n"
    broken = orjson.loads(request_line(row(), client=None, user_agent=None, key_name=None, tries=1,
                                       request_body=b'{"a": \xff', response_body=b""))
    assert broken["request_body"] == '{"a": \ufffd' and broken["response_body"] == ""


def test_a_long_body_is_cut_and_says_so() -> None:
    capture = Capture()
    for _ in range(3):
        capture.add(b"x" * BODY_LIMIT)
    body = capture.body()
    assert len(body) <= 2 * BODY_LIMIT  # what is kept stops growing past the limit
    fields = orjson.loads(request_line(row(), client=None, user_agent=None, key_name=None, tries=1,
                                       response_body=body, response_size=capture.size))
    cut = fields["response_body"]
    assert cut["truncated"] is True and cut["bytes"] == 3 * BODY_LIMIT and len(cut["text"]) == BODY_LIMIT


@given(st.lists(st.binary(min_size=0, max_size=6000).map(lambda b: b.replace(b"\n", b"") + b"\n"), max_size=40))
def test_pieces_keep_every_line_whole_and_fit_pipe_buf_where_they_can(lines: list[bytes]) -> None:
    out = pieces(lines)
    assert b"".join(out) == b"".join(lines)
    for piece in out:
        assert piece.endswith(b"\n")
        # Longer than PIPE_BUF only when it is one line that long.
        assert len(piece) <= access_log.PIPE_BUF or piece.count(b"\n") == 1


async def test_lines_are_written_in_batches_off_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "requests.log"
    sink, owned = open_sink(str(path))
    log = AccessLog(sink, owns_sink=owned, interval=0.05)
    writers: set[str] = set()
    real_write = os.write

    def spy(fd: int, data: bytes | memoryview) -> int:
        writers.add(threading.current_thread().name)
        return real_write(fd, data)

    await log.start()
    try:
        os.write = spy  # type: ignore[assignment]
        for i in range(100):
            log.write(request_line(row(request_id=f"req_{i}"), client=None, user_agent=None, key_name=None, tries=1))
        assert path.read_bytes() == b""  # nothing is written on the request's path
        for _ in range(100):
            await asyncio.sleep(0.02)
            if path.read_bytes().count(b"\n") == 100:
                break
    finally:
        os.write = real_write
        await log.close()
    ids = [orjson.loads(line)["request_id"] for line in path.read_bytes().splitlines()]
    assert ids == [f"req_{i}" for i in range(100)] and log.written == 100 and log.dropped == 0
    assert writers and threading.main_thread().name not in writers


async def test_close_writes_what_is_left(tmp_path: Path) -> None:
    path = tmp_path / "requests.log"
    sink, owned = open_sink(str(path))
    log = AccessLog(sink, owns_sink=owned, interval=3600)
    await log.start()
    log.write(b'{"a":1}\n')
    await log.close()
    assert path.read_bytes() == b'{"a":1}\n'


async def test_a_sink_that_falls_behind_loses_lines_not_memory(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    monkeypatch.setattr(access_log, "MAX_BUFFERED", 1000)
    sink, owned = open_sink(str(tmp_path / "x.log"))
    log = AccessLog(sink, owns_sink=owned)
    for _ in range(30):
        log.write(b"x" * 99 + b"\n")
    assert log.pending == 10 and log.dropped == 20
    await log.close()
    assert (tmp_path / "x.log").read_bytes().count(b"\n") == 10


async def test_a_failing_sink_counts_its_lines_as_dropped(tmp_path: Path) -> None:
    directory = os.open(tmp_path, os.O_RDONLY)  # writing to a directory fails with EISDIR, an OSError

    class Dir:
        def fileno(self) -> int:
            return directory

        def close(self) -> None:
            os.close(directory)

    log = AccessLog(Dir(), owns_sink=True)  # type: ignore[arg-type]
    log.write(b"a\n")
    log.write(b"b\n")
    await log.flush()
    assert log.dropped == 2 and log.written == 0 and log.pending == 0
    await log.close()


def test_a_log_file_that_cannot_be_opened_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"log\.requests: cannot open"):
        open_sink(str(tmp_path / "missing" / "dir" / "x.log"))
