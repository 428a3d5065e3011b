"""A form-posting HTTP client for the dashboard tests: keeps cookies as a browser on 127.0.0.1 does (Secure
ones included, which httpx's jar would hold back over plain HTTP), and reads the tokens pages carry."""

from __future__ import annotations

import re
from http.cookies import SimpleCookie
from typing import Any

import httpx

TOKEN_FIELD = re.compile(r'name="(csrf|nonce)" value="([^"]+)"')


class Operator:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30, follow_redirects=False)
        self.cookies: dict[str, str] = {}
        self.set_cookies: dict[str, str] = {}
        """The last Set-Cookie header of each cookie, whole, to check its attributes."""

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if self.cookies:
            headers.setdefault("cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        r = self.http.request(method, path, headers=headers, **kwargs)
        for header in r.headers.get_list("set-cookie"):
            for name, morsel in SimpleCookie(header).items():
                self.set_cookies[name] = header
                if morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return r

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, data: dict[str, str], **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, data=data, **kwargs)

    def login(self, token: str) -> httpx.Response:
        return self.post("/dashboard/login", {"nonce": field(self.get("/dashboard/login"), "nonce"), "token": token})

    def csrf(self) -> str:
        return field(self.get("/dashboard/keys"), "csrf")

    def close(self) -> None:
        self.http.close()


def field(page: httpx.Response, name: str) -> str:
    for found, value in TOKEN_FIELD.findall(page.text):
        if found == name:
            return str(value)
    raise AssertionError(f"no {name} field on the page: {page.status_code} {page.text[:300]}")
