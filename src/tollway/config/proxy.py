"""Which HTTP forward proxy an upstream is reached through: its own ``proxy`` setting, else the environment's.

Relays often run where the provider cannot be reached directly, and send upstream traffic through a forward
proxy. An upstream's ``proxy`` names one (``http://user:password@proxy:3128``), or is ``direct`` for none;
without it, the environment decides, as curl reads it: ``HTTPS_PROXY`` or ``HTTP_PROXY`` by the upstream's
scheme, else ``ALL_PROXY``, unless ``NO_PROXY`` lists the host. Worked out once, when the config is read.
Proxies are reached over plain TCP (`tollway.providers.proxy` opens the tunnel): ``https://`` (TLS to the proxy
itself) and SOCKS proxies are refused, as is a proxy URL with a path or a query.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)
    """The ``Proxy-Authorization`` value, from the URL's user and password; kept out of the repr."""

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def parse_proxy(url: str) -> Proxy:
    """A proxy from its URL, or ValueError saying what is wrong with it (the URL itself is not repeated: it may
    carry a password)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http":
        raise ValueError(f"only http:// proxies are supported, not {parts.scheme}://")
    if not parts.hostname:
        raise ValueError("the proxy URL has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("a proxy URL is a scheme, a host and a port, with no path or query")
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError("the proxy URL's port is not a port number") from None
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return Proxy(parts.hostname, port, authorization)


def proxy_for(base_url: str, setting: str | None, environ: Mapping[str, str]) -> Proxy | None:
    """The proxy an upstream at ``base_url`` is reached through: its own ``setting`` (a URL, or ``direct``),
    else the environment's; None to connect directly. ValueError says which of the two is wrong, and how."""
    if setting == "direct":
        return None
    if setting:
        return _parsed(setting, "proxy")
    url = urlsplit(base_url)

    def env(name: str) -> str:
        return environ.get(name) or environ.get(name.upper()) or ""

    found = env(f"{url.scheme}_proxy") or env("all_proxy")
    if not found or _bypassed(url.hostname or "", url.port or (443 if url.scheme == "https" else 80),
                              env("no_proxy")):
        return None
    return _parsed(found, "the environment's proxy (HTTPS_PROXY and the like)")


def _parsed(url: str, where: str) -> Proxy:
    try:
        return parse_proxy(url)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` lists the host: ``*``; a name, itself or any name under it (``example.com`` and
    ``.example.com`` both take ``api.example.com``); an address or a CIDR block; each with an optional port."""
    host = host.lower().rstrip(".")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, wanted_port = entry, None
        if entry.startswith("["):  # [::1]:8080
            name, _, rest = entry[1:].partition("]")
            wanted_port = rest[1:] if rest.startswith(":") else None
        elif entry.count(":") == 1:
            name, wanted_port = entry.split(":")
        if wanted_port is not None and wanted_port != str(port):
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = name.lstrip(".").rstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False
