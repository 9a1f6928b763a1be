"""What stands in front of every route of steerlab's HTTP apps (the server and the rating app):
the Host check, the key, the body limits and the security headers.

- **Host.** A request whose ``Host`` is not a name this server answers to is refused (400): a
  page on another site that rebinds its DNS name to 127.0.0.1 cannot drive a server on this
  machine, key or no key. The names: the address it listens on, ``localhost`` and the loopback
  addresses when it listens there, any IP address when it listens on all of them, and the
  names given (``--allowed-host``).
- **Key.** With a key, every request carries it: ``Authorization: Bearer <key>``, or the
  HTTP-only same-site cookie a browser is given. A browser hands it over once, as ``?key=``
  when it opens a web page; that request is answered with a redirect to the same page without
  it (so it leaves the address bar and the history) and the cookie. No other route takes a
  key from the address, and ``key=`` is removed from every request's query before anything
  reads or logs it (uvicorn's access log included).
- **Body.** Over ``max_bytes`` is 413, not complete within ``timeout_s`` is 408.
- **Headers.** Every response forbids framing by other sites, MIME sniffing and referrers,
  and carries a strict Content-Security-Policy (scripts and styles from this server only, no
  inline script) unless a route sets its own (a run's report: no script at all, sandboxed).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from collections.abc import Iterable
from contextlib import suppress
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qsl, urlencode

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from steerlab.serve.schema import RequestError

KEY_COOKIE = "steerlab_key"
"""The cookie a browser holds the API key in, set when it opens a web page with ``?key=``."""

PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "connect-src 'self'; frame-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
               "form-action 'self'; object-src 'none'")
"""The Content-Security-Policy of every response that sets none: nothing inline, nothing from
elsewhere, never framed by another page."""

REPORT_POLICY = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                 "frame-ancestors 'self'; base-uri 'none'; form-action 'none'; sandbox")
"""A run's report page: its own inline style and embedded plots, no script of any kind, and
sandboxed even when opened outside the runs page's (sandboxed) frame."""

LOOPBACK = ("localhost", "127.0.0.1", "::1")


def allowed_hosts(bound: str, names: Iterable[str] = ()) -> tuple[frozenset[str], bool]:
    """The Host names a server listening on ``bound`` answers to, and whether any IP address
    is one (it listens on every address)."""
    bound = bound.strip("[]").lower()
    wildcard = bound in ("0.0.0.0", "::", "")
    known = {bound, *(n.strip("[]").lower() for n in names)}
    if bound in LOOPBACK or wildcard:
        known |= set(LOOPBACK)
    return frozenset(known - {""}), wildcard


def _host_name(header: str) -> str:
    """The name of a ``Host`` header, without its port (``[::1]:8000`` → ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _is_ip(name: str) -> bool:
    with suppress(ValueError):
        ipaddress.ip_address(name)
        return True
    return False


def _is_page(scope: Scope) -> bool:
    """A web page a browser opens (where a ``?key=`` may be handed over): the interface's, or
    the server's root, which sends the browser there."""
    path = scope.get("path", "")
    return scope.get("method") == "GET" and (path == "/" or path.startswith("/web/") and (
        path.endswith("/") or path.endswith(".html")))


def _cookie_key(headers: dict[bytes, bytes]) -> str | None:
    cookie = SimpleCookie()
    with suppress(CookieError):
        cookie.load(headers.get(b"cookie", b"").decode("latin-1"))
    return cookie[KEY_COOKIE].value if KEY_COOKIE in cookie else None


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    """``send`` adding ``extra`` headers to the response's start, each only where the route
    did not set it."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {name.lower() for name, _ in message.get("headers", [])}
            added = [(name, value) for name, value in extra if name not in present]
            message = {**message, "headers": [*message.get("headers", []), *added]}
        await send(message)

    return sending


class Guard:
    """ASGI middleware: the Host check, the key and the security headers (see the module)."""

    def __init__(self, app: ASGIApp, key: str | None, hosts: frozenset[str],
                 any_ip: bool) -> None:
        self.app, self.key, self.hosts, self.any_ip = app, key, hosts, any_ip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send, [
            (b"content-security-policy", PAGE_POLICY.encode()),
            (b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer")])
        headers = dict(scope["headers"])
        host = _host_name(headers.get(b"host", b"").decode("latin-1"))
        if host not in self.hosts and not (self.any_ip and _is_ip(host)):
            await RequestError(
                f"Host {host!r} is not a name this server answers to (it answers to "
                f"{', '.join(sorted(self.hosts))}; add one with --allowed-host)", "host",
                code="host_not_allowed").response()(scope, receive, send)
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                          keep_blank_values=True)
        handed = [value for name, value in query if name == "key"]
        if handed:  # gone before any route reads, or any log writes, the address
            scope["query_string"] = urlencode([(n, v) for n, v in query if n != "key"]).encode()
        if self.key is None:
            await self.app(scope, receive, send)
            return
        auth = headers.get(b"authorization", b"").decode("latin-1")
        given = auth[7:] if auth.lower().startswith("bearer ") else _cookie_key(headers)
        from_page = given is None and bool(handed) and _is_page(scope)
        if from_page:
            given = handed[0]
        if given is None or not hmac.compare_digest(given.encode(), self.key.encode()):
            message = ("incorrect API key" if given is not None else
                       "missing API key: send the header 'Authorization: Bearer <key>' (a "
                       "browser: open a web page with ?key=<key> once)" if not handed else
                       "the key is taken from the address only when a browser opens a web "
                       "page; send it as 'Authorization: Bearer <key>'")
            await RequestError(message, code="invalid_api_key", status=401).response()(
                scope, receive, send)
            return
        if from_page:  # remembered in the cookie; the address loses it
            target = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}"
                                      if scope["query_string"] else "")
            await send({"type": "http.response.start", "status": 303, "headers": [
                (b"location", target.encode("latin-1")),
                (b"set-cookie", f"{KEY_COOKIE}={given}; HttpOnly; SameSite=Strict; "
                                "Path=/".encode("latin-1")),
                (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


class BodyLimits:
    """ASGI middleware: a body over ``max_bytes`` is refused with 413 (from its Content-Length
    before anything is read, else as soon as the bytes received pass the limit), and a body
    not complete within ``timeout_s`` with 408, so neither a huge nor a stalled upload holds
    the server. Once the body is in, later reads (a disconnect) pass through untimed."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s
        self.too_large = f"request body over this server's limit of {max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            refusal = (RequestError(self.too_large, status=413) if declared.isdigit()
                       else RequestError("invalid Content-Length header"))
            await refusal.response()(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        received, complete = 0, False

        async def limited() -> Message:
            nonlocal received, complete
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except TimeoutError:
                raise HTTPException(408, f"request body not received within "
                                         f"{self.timeout_s:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise HTTPException(413, self.too_large)
            return message

        await self.app(scope, limited, send)


def guard(app, *, key: str | None, hosts: frozenset[str], any_ip: bool, max_body_bytes: int,
          body_timeout_s: float) -> None:
    """Put the guards in front of a FastAPI ``app``: headers, Host and key first (nothing of
    a refused request is read), then the body limits."""
    app.add_middleware(BodyLimits, max_bytes=max_body_bytes, timeout_s=body_timeout_s)
    app.add_middleware(Guard, key=key, hosts=hosts, any_ip=any_ip)
