"""Which HTTP and websocket requests the viewer answers: its own page's, no other site's.

The viewer has no login and listens on 127.0.0.1 by default. A loopback address keeps other computers
out, but not another web site open in the same browser: a page from anywhere may open a websocket to
``ws://127.0.0.1:8080/ws`` (browsers apply no same-origin rule to websockets) or reach the port through
a domain name it points at 127.0.0.1 (DNS rebinding), and then drive the viewer - open files by path,
explain them, fetch the results. So every request is checked before trame sees it:

* ``Host`` must name the loopback address the viewer listens on (``127.0.0.1``, ``localhost`` or
  ``[::1]`` with its port), when it listens on loopback; another name is DNS rebinding.
* ``Origin``, which browsers send with every websocket and cross-site request, must be the viewer's own
  (the same host and port as ``Host``); a request from another site's page, or from a sandboxed frame
  or file (``Origin: null``), is refused.

Requests from programs that send no ``Origin`` (curl, a script on this computer) pass, as they could
open the files themselves. Refused requests get ``403 Forbidden`` and reach no handler.

What a client may send over the websocket is bounded too (`cap_client_messages`): the page sends state
changes and button clicks of a few kB, so a message announced as larger than 16 MB closes that
connection instead of making the server set aside the announced size (wslink allows 4 GB).
"""

from __future__ import annotations

from typing import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
MAX_CLIENT_MESSAGE_BYTES = 16 << 20


def allowed_hosts(host: str, port: int, loopback: bool) -> frozenset[str]:
    """The ``Host`` header values accepted; empty (any) when listening beyond loopback, where the names
    that reach this computer are not known here."""
    if not loopback:
        return frozenset()
    names = set(LOOPBACK_NAMES) | ({f"[{host}]" if ":" in host else host} if host else set())
    return frozenset(f"{name}:{port}" for name in names) | (frozenset(names) if port == 80 else frozenset())


def refusal(request: web.BaseRequest, hosts: frozenset[str]) -> str:
    """Why ``request`` is refused ("" if it is not): a one-line reason for the 403 page and the tests."""
    host = request.headers.get("Host", "").strip().lower()
    if hosts and host not in hosts:
        return f"this viewer answers only to {sorted(hosts)[0]} and the other loopback names, not to {host!r}"
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin.strip().lower()).netloc != host:
        return f"requests from another site ({origin!r}) are refused"
    return ""


def request_guard(hosts: frozenset[str]) -> Callable:
    """aiohttp middleware applying `refusal` to every request (HTTP and the websocket handshake)."""

    @web.middleware
    async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        reason = refusal(request, hosts)
        if reason:
            raise web.HTTPForbidden(text=f"403 Forbidden: {reason}\n")
        return await handler(request)

    return guard


def install(wslink_server, host: str, port: int, loopback: bool) -> None:
    """Add the guard to trame's aiohttp application (``ctrl.on_server_bind``: before the server starts)."""
    wslink_server.app.middlewares.append(request_guard(allowed_hosts(host, port, loopback)))
    cap_client_messages()


def cap_client_messages(limit: int = MAX_CLIENT_MESSAGE_BYTES) -> None:
    """Bound the size a websocket client may announce for one message (wslink's ``UnChunker`` allocates it
    before the content arrives, and allows 4 GB once a client said hello). Idempotent."""
    from wslink.chunking import UnChunker

    if getattr(UnChunker.set_max_message_size, "acat_limit", None) == limit:
        return
    original = getattr(UnChunker.set_max_message_size, "acat_original", UnChunker.set_max_message_size)

    def set_max_message_size(self, size: int) -> None:
        original(self, min(int(size), limit))

    set_max_message_size.acat_limit, set_max_message_size.acat_original = limit, original
    UnChunker.set_max_message_size = set_max_message_size
