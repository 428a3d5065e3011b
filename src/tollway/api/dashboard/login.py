"""The dashboard's door: the login form, logging out, and the middleware every dashboard request passes.

The admin token is typed once into the login form and checked as the admin API checks it (its digest, compared
in constant time); a wrong one is a 401 page and counts against the address's allowance of failed attempts,
the very allowance the admin API draws on, so the form is no way around its brake. Past the allowance the form
answers 429 for the right token too. Every other page wants a session and sends the browser to the login form
without one; every POST wants the session's CSRF token and, when the browser says where the form came from
(``Origin``), this host.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from tollway.api.admin.auth import FailedAttempts, client_of, refuse_if_spent
from tollway.api.dashboard.forms import text
from tollway.api.dashboard.render import BASE, page, redirect
from tollway.api.dashboard.session import COOKIE, LOGIN_COOKIE, Session, Sessions, new_nonce, same
from tollway.api.errors import from_http_exception
from tollway.config import admin_token_digest
from tollway.errors import PermissionDenied, TollwayError

SESSIONS = web.AppKey("dashboard_sessions", Sessions)
ATTEMPTS = web.AppKey("dashboard_attempts", FailedAttempts)
DIGEST = web.AppKey("dashboard_token_sha256", bytes)
SESSION = web.RequestKey("dashboard_session", Session)
LOGIN_NONCE_AGE = 3600

routes = web.RouteTableDef()


def _cookie(response: web.StreamResponse, name: str, value: str, max_age: int) -> None:
    # Secure even on plain HTTP: browsers keep it from http://127.0.0.1 and http://localhost (trusted origins);
    # anywhere else the dashboard belongs behind TLS, and the login page says so.
    response.set_cookie(name, value, max_age=max_age, path=BASE, secure=True, httponly=True, samesite="Strict")


def _insecure(request: web.Request) -> bool:
    """Served over plain HTTP to a host that is not this machine: the browser will drop the session cookie."""
    if request.secure or request.headers.get("x-forwarded-proto", "").lower() == "https":
        return False
    host = (urlsplit(f"//{request.host}").hostname or "").lower()
    return host not in ("localhost", "::1") and not host.startswith("127.") and not host.endswith(".localhost")


def _login_page(request: web.Request, status: int = 200, error: str | None = None) -> web.Response:
    nonce = request.cookies.get(LOGIN_COOKIE) or new_nonce()
    response = page(request, "login.html", status=status, error=error, nonce=nonce, insecure=_insecure(request))
    _cookie(response, LOGIN_COOKIE, nonce, LOGIN_NONCE_AGE)
    return response


@routes.get("/login")
async def login_form(request: web.Request) -> web.Response:
    if await request.app[SESSIONS].find(request.cookies.get(COOKIE)) is not None:
        return redirect(f"{BASE}/")
    return _login_page(request)


@routes.post("/login")
async def login(request: web.Request) -> web.Response:
    attempts = request.app[ATTEMPTS]
    client = client_of(request.remote)
    refuse_if_spent(attempts, client)
    form = await request.post()
    if not same(request.cookies.get(LOGIN_COOKIE), text(form, "nonce")):
        # Not a guess at the token (the form came from elsewhere, or its cookie expired): not counted.
        return _login_page(request, 403, "The login form had expired. Please try again.")
    token = text(form, "token") or ""
    if not hmac.compare_digest(admin_token_digest(token), request.app[DIGEST]):
        attempts.failed(client)
        return _login_page(request, 401, "That is not the admin token.")
    _, cookie = request.app[SESSIONS].start()
    response = redirect(f"{BASE}/")
    _cookie(response, COOKIE, cookie, request.app[SESSIONS].lifetime)
    response.del_cookie(LOGIN_COOKIE, path=BASE)
    return response


@routes.post("/logout")
async def logout(request: web.Request) -> web.Response:
    await request.app[SESSIONS].log_out(request[SESSION])
    response = redirect(f"{BASE}/login")
    response.del_cookie(COOKIE, path=BASE)
    return response


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("origin")
    # Browsers send Origin with every POST; a client that sends none still needs the CSRF token.
    return origin is None or urlsplit(origin).netloc.lower() == request.host.lower()


OPEN = {login_form, login}


def door() -> Middleware:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.method == "POST" and not _same_origin(request):
                raise PermissionDenied("This form was sent from another site.")
            if request.match_info.handler in OPEN or request.path == f"{BASE}/static/dashboard.css":
                return await handler(request)
            session = await request.app[SESSIONS].find(request.cookies.get(COOKIE))
            if session is None:
                return redirect(f"{BASE}/login")
            request[SESSION] = session
            if request.method == "POST":
                form = await request.post()
                if not request.app[SESSIONS].csrf_ok(session, text(form, "csrf")):
                    raise PermissionDenied("The form's security token is missing or wrong: reload the page and "
                                           "try again.")
            return await handler(request)
        except TollwayError as error:
            return _error(request, error)
        except web.HTTPException as error:
            # Routing's own errors (an unknown path, a wrong method): a page, not the API's JSON.
            return _error(request, from_http_exception(error))

    return check


def _error(request: web.Request, error: TollwayError) -> web.Response:
    response = page(request, "error.html", status=error.status, error=error, session=request.get(SESSION))
    response.headers.update(error.headers)
    return response
