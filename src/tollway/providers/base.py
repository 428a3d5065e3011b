"""The seam between the gateway and the servers it relays to.

A provider turns one `UpstreamCall` into one `UpstreamReply`: either a whole body or a stream of
Anthropic SSE bytes. Usage is filled in as the reply is read, so the caller meters every kind of
upstream the same way, and a provider that translates (OpenAI) reports usage without re-parsing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

from tollway.config import UpstreamConfig
from tollway.protocol.usage import Usage


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    endpoint: str
    """``messages`` or ``count_tokens``."""
    body: bytes
    """The JSON body to send, already carrying the upstream's model name."""
    payload: dict[str, object]
    """The same body, parsed."""
    headers: Mapping[str, str]
    """Client headers to forward (anthropic-version, anthropic-beta, unknown ones); no credentials."""
    query: str
    model: str
    """The model name the upstream knows."""
    client_model: str
    """The model name the client sent, which translated answers carry."""
    stream: bool
    api_key: str


@dataclass(slots=True)
class UpstreamReply:
    status: int
    headers: dict[str, str]
    """Response headers worth passing to the client (content-type, retry-after, ...)."""
    body: bytes = b""
    chunks: AsyncIterator[bytes] | None = None
    """For a streamed 200: the SSE bytes as they arrive. Ending early raises `UpstreamError`."""
    head: bytes = b""
    """A stream's first chunk, already taken from ``chunks`` by the router: it goes out first."""
    usage: Usage = field(default_factory=Usage)
    first_byte_at: float | None = None
    """`time.monotonic()` when the upstream's first body byte arrived."""
    completed: bool = False
    """True once a stream has ended with ``message_stop``."""
    upstream_error: str | None = None
    """The Anthropic error type the upstream sent, in its error body or its stream."""
    finalizers: list[Callable[[], None]] = field(default_factory=list)
    """Run once the reply is done with (the router's bookkeeping: in-flight counts, health)."""

    async def aclose(self) -> None:
        closer = getattr(self.chunks, "aclose", None)
        try:
            if closer is not None:
                await closer()
        finally:
            for finalize in self.finalizers:
                finalize()
            self.finalizers.clear()


class Provider(ABC):
    """One configured upstream. Instances live for the whole process and are shared by all requests."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    @abstractmethod
    async def send(self, call: UpstreamCall) -> UpstreamReply:
        """Start the call; return once the upstream has answered with a status."""

    async def start(self) -> None:
        """Open pools and the like; called once the event loop runs."""

    async def close(self) -> None:
        """Release what `start` opened."""
