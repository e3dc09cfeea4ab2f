"""Which HTTP and websocket requests the viewer answers: its owner's page, with this launch's token.

The viewer opens scans on the computer it runs on, so whoever can drive it can read them. A loopback
address keeps other computers out, but not other programs and users of the same computer, nor another
web site open in the same browser: a page from anywhere may open a websocket to ``ws://127.0.0.1:8080/ws``
(browsers apply no same-origin rule to websockets) or reach the port through a domain name it points at
this computer (DNS rebinding). So every request is checked before trame sees it:

* **The token.** Each launch makes a random one (`new_token`) and prints it in the URL it shows
  (``...index.html?secret=TOKEN``). A request must carry it, as that ``secret`` query field (trame's page
  reads it from there, uses it as the websocket's wslink secret and removes it from the address bar) or
  as the cookie that the first such request sets (HttpOnly, SameSite=Strict, named after the port), which
  the page's later requests - its scripts, the websocket, a download - send by themselves. Without it:
  ``403 Forbidden``, on the websocket before any state is sent. trame's public default secret
  (``wslink-secret``) is never accepted.
* ``Host`` must be a name of this computer with the viewer's port: the loopback names (``127.0.0.1``,
  ``localhost``, ``[::1]``) when it listens on loopback, plus its host name and addresses when ``--host``
  opens it to the network (`allowed_hosts`); another name is DNS rebinding, refused even with a matching
  ``Origin``.
* ``Origin``, which browsers send with every websocket and cross-site request, must be the viewer's own
  (the same host and port as ``Host``); another site's page, a sandboxed frame or a file (``Origin:
  null``) is refused.
* **One session at a time** (`SessionGate`): while one page is connected, a second websocket gets ``409
  Conflict`` saying to close the first; state is never shared between two pages at once.

What a connected page may send is bounded in `limits`.
"""

from __future__ import annotations

import hmac
import secrets
import socket
from typing import Awaitable, Callable, Optional
from urllib.parse import urlsplit

from aiohttp import web

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
TOKEN_FIELD = "secret"  # the query field trame's page reads its wslink secret from
WEBSOCKET_PATH = "/ws"
DEFAULT_WSLINK_SECRET = "wslink-secret"  # trame's public default: never this viewer's token


def new_token() -> str:
    """A random token for one launch (256 bits, URL-safe). Not all digits: trame's page would read it as a
    number."""
    while True:
        token = secrets.token_urlsafe(32)
        if not token.isdigit():
            return token


def cookie_name(port: int) -> str:
    """Cookies are per host, not per port: each viewer's cookie is named after its port."""
    return f"acat-view-{port}"


def this_computers_names(host: str) -> set[str]:
    """The names and addresses by which other computers may reach this one: ``host`` itself (unless a
    wildcard), the host name, its fully qualified name, their addresses and the outward address."""
    names = {host} if host not in ("0.0.0.0", "::", "") else set()
    hostname = socket.gethostname()
    names |= {hostname, socket.getfqdn()}
    try:
        names |= {info[4][0] for info in socket.getaddrinfo(hostname, None)}
    except OSError:
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET: a UDP connect sends no packet
            names.add(probe.getsockname()[0])
        except OSError:
            pass
    return {name.lower() for name in names if name}


def allowed_hosts(host: str, port: int, loopback: bool) -> frozenset[str]:
    """The ``Host`` header values accepted: the loopback names, and this computer's own names when
    listening beyond loopback; each with ``:port`` (and bare for port 80)."""
    names = set(LOOPBACK_NAMES) | ({host} if host else set())
    if not loopback:
        names |= this_computers_names(host)
    names = {f"[{name}]" if ":" in name and not name.startswith("[") else name for name in names}
    return frozenset(f"{name}:{port}" for name in names) | (frozenset(names) if port == 80 else frozenset())


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "replace"), b.encode("utf-8", "replace"))


def _netloc(url: str) -> Optional[str]:
    """The host and port of an ``Origin`` value; None for one Python's URL parser refuses (``http://[x``,
    found by `make fuzz`: it raised ValueError, which aiohttp answered with 500)."""
    try:
        return urlsplit(url.strip().lower()).netloc
    except ValueError:
        return None


def refusal(request: web.BaseRequest, hosts: frozenset[str], token: str, port: int) -> str:
    """Why ``request`` is refused ("" if it is not): one line for the 403 page and the tests."""
    host = request.headers.get("Host", "").strip().lower()
    if host not in hosts:
        return (f"this viewer answers only to {sorted(hosts)[0]} and this computer's other names, not to "
                f"{host!r}; open the address that acat view printed")
    origin = request.headers.get("Origin")
    if origin is not None and _netloc(origin) != host:
        return f"requests from another site ({origin!r}) are refused; open the address that acat view printed"
    offered = request.query.get(TOKEN_FIELD) or request.cookies.get(cookie_name(port)) or ""
    if not _same(offered, token):
        return "this viewer needs the address with its secret that acat view printed; open that address"
    return ""


class SessionGate:
    """One page at a time: the websocket handshake of a second page while one is connected is refused."""

    def __init__(self):
        self.open = 0

    async def admit(self, handler, request):
        if self.open:
            raise web.HTTPConflict(text="409 Conflict: the viewer is already open in another tab or browser; "
                                        "close that one, then reload this page (one session at a time)\n")
        self.open += 1
        try:
            return await handler(request)  # returns when that websocket closes
        finally:
            self.open -= 1


def request_guard(hosts: frozenset[str], token: str, port: int, gate: SessionGate) -> Callable:
    """aiohttp middleware applying `refusal` to every request (HTTP and the websocket handshake), setting
    the token cookie when the token came in the query, and letting one websocket in at a time."""
    cookie = cookie_name(port)

    def remember(response: web.StreamResponse, request: web.BaseRequest) -> None:
        if request.query.get(TOKEN_FIELD) and not response.prepared:
            response.set_cookie(cookie, token, httponly=True, samesite="Strict", path="/")

    @web.middleware
    async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        reason = refusal(request, hosts, token, port)
        if reason:
            raise web.HTTPForbidden(text=f"403 Forbidden: {reason}\n")
        if request.path == WEBSOCKET_PATH:
            return await gate.admit(handler, request)
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # a redirect (``/`` -> ``index.html?secret=...``) keeps the cookie too
            remember(exc, request)
            raise
        remember(response, request)
        return response

    return guard


def install(wslink_server, host: str, port: int, loopback: bool, token: str) -> None:
    """Add the guard to trame's aiohttp application (``ctrl.on_server_bind``: before the server starts)."""
    if token == DEFAULT_WSLINK_SECRET or len(token) < 32:
        raise ValueError("the viewer's token must be a new random one (new_token)")
    wslink_server.app.middlewares.append(request_guard(allowed_hosts(host, port, loopback), token, port,
                                                       SessionGate()))
