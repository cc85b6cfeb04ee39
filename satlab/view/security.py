"""Who may see the page, and which requests may ask a run to stop.

Without ``--allow-remote`` only this machine is served: the client must connect from a
loopback address and name a loopback host (the Host header), so a web page elsewhere
cannot read runs through the browser by pointing its own name at 127.0.0.1 (DNS
rebinding). With ``--allow-remote --token`` any other request must carry the token.
The stop request also needs the page's per-server CSRF token in a header, which a
cross-site form or script cannot send.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketClose

COOKIE = "satlab_view_token"
CSRF_HEADER = "x-satlab-csrf"
MIN_TOKEN_LENGTH = 16
# The page needs nothing from elsewhere; no other site may frame it (a hidden Stop button)
SECURITY_HEADERS = [
    (b"content-security-policy",
     (b"default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
      b"script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
      b"form-action 'none'")),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),  # a token in the address never leaves in a Referer
]
NO_STORE = (b"cache-control", b"no-store")  # live data: unless a response says otherwise


def is_loopback(host: str) -> bool:
    """An address or name of this machine only: 127.0.0.0/8, ::1, localhost."""
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def host_of(host_header: str) -> str:
    """The host of a Host header, without its port (``[::1]:8765`` -> ``::1``)."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def new_secret() -> str:
    """A fresh random token (the per-server CSRF token)."""
    return secrets.token_urlsafe(32)


def same_token(given: str | None, expected: str | None) -> bool:
    """``given`` is ``expected``, compared in constant time; never true without both."""
    return bool(given and expected) and hmac.compare_digest(given.encode(), expected.encode())


def same_origin(headers: Headers, scheme: str) -> bool:
    """The request comes from a page of this server: an Origin, if sent, is this host's, and
    the browser's Sec-Fetch-Site, if sent, says same-origin."""
    origin = headers.get("origin")
    if origin is not None and origin != f"{scheme}://{headers.get('host', '')}":
        return False
    return headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


class AccessGuard:
    """ASGI middleware: refuses (403) every request and websocket not admitted as the module
    says, and adds the security headers to every response."""

    def __init__(self, app: ASGIApp, token: str | None = None) -> None:
        self.app = app
        self.token = token  # set only with --allow-remote

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan
            return
        headers = Headers(scope=scope)
        client = (scope.get("client") or ("", 0))[0]
        local = is_loopback(client) and is_loopback(host_of(headers.get("host", "")))
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        in_address = self.token is not None and same_token(dict(query).get("token"), self.token)
        if scope["type"] == "websocket":  # no page uses one: admitted as a request would be,
            # and only from a page of this server (a browser lets any site open one)
            scheme = "https" if scope.get("scheme") == "wss" else "http"
            admitted = local or in_address or self._carries_token(headers)
            if admitted and same_origin(headers, scheme):
                await self.app(scope, receive, send)
            else:
                await WebSocketClose(code=1008)(scope, receive, send)  # refused: 403 to the client
            return
        if not local and in_address:
            # the token once in the address: kept in a cookie, and taken out of the address
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")  # as sent: encoded
            # one leading '/' only: //host/... or /\host/... would send the browser to another site
            path = "/" + path.lstrip("/\\")
            response = RedirectResponse(path + (f"?{rest}" if rest else ""), status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            await self._secured(response, scope, receive, send)
            return
        if not local and not self._carries_token(headers):
            why = ("this server admits other machines only with its token" if self.token else
                   "this server serves only this machine (see docs/lab-view.md for remote access)")
            await self._secured(PlainTextResponse(f"forbidden: {why}\n", 403), scope, receive, send)
            return
        await self._secured(self.app, scope, receive, send)

    def _carries_token(self, headers: Headers) -> bool:
        if not self.token:
            return False
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and same_token(auth[7:].strip(), self.token):
            return True
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except CookieError:  # a malformed Cookie header carries no token
            return False
        return COOKIE in cookie and same_token(cookie[COOKIE].value, self.token)

    @staticmethod
    async def _secured(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), *SECURITY_HEADERS]
                if not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append(NO_STORE)
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_secured)
