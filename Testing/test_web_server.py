"""The running web viewer (``acat view``) refuses what it should, and keeps serving its own page.

One real server on a free loopback port (Testing/web_browser.py starts it, with its temporary folder in
the test's TMPDIR), driven with raw HTTP over sockets and with a websocket client speaking wslink, the
page's protocol (Testing/wslink_client.py). Requests here carry the launch's token (as the page's cookie)
unless a test says otherwise, so that what is checked is what lies behind it; the token itself, the
allowed folders and the other bounds of issue 17 are Testing/test_web_security.py's:

* it listens on 127.0.0.1 only: the listening socket's address, and no answer on another interface;
* path traversal (``../`` plain, percent-encoded, doubled) never serves a file outside the served
  folders: neither /etc/passwd nor a file planted next to the viewer's private folder;
* malformed HTTP, oversized bodies and headers get a 4xx, and the server serves the page afterwards;
* another site's page is refused: a foreign ``Origin`` (HTTP and the websocket handshake) or ``Host``
  (DNS rebinding) gets 403;
* over the websocket: a frame over the size limit, a message announced larger than 16 MB, bytes that
  are not wslink, an unknown method - each closes or errors that one connection, nothing more; a
  state change with a bad value (a window that does not exist) becomes the panel's error line.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

pytest.importorskip("trame_slicer", reason="trame-slicer is not installed (pip install -e '.[slicer]')")

import aiohttp  # noqa: E402

from web_browser import SHIPPED_BUNDLE, split_url, viewer_server  # noqa: E402
from wslink_client import closed, session_for  # noqa: E402

SECRET = "planted-secret-7f3a"  # a file outside every served folder; no answer may contain it


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("viewer")
    (tmp / "secret.txt").write_text(SECRET)
    (tmp / "tmp").mkdir()
    (tmp / "tmp" / "secret.txt").write_text(SECRET)  # beside the viewer's private folder (in its TMPDIR)
    with viewer_server(SHIPPED_BUNDLE, tmp) as (url, process, log):
        base, port, token = split_url(url)
        COOKIE[0] = f"acat-view-{port}={token}"
        yield {"url": base, "port": port, "token": token, "process": process, "log": log, "tmp": tmp}


COOKIE = [""]  # the running viewer's token cookie, sent with every request below as the page sends it


def http(port: int, request: bytes, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """Send raw bytes, return (status code or 0 if the server closed without one, the whole answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(request)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    status = data.split(b"\r\n", 1)[0].split(b" ")
    return (int(status[1]) if len(status) > 1 and status[1].isdigit() else 0), data


def get(port: int, path: str, **headers) -> tuple[int, bytes]:
    fields = {"Host": f"127.0.0.1:{port}", "Connection": "close", "Cookie": COOKIE[0], **headers}
    lines = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in fields.items())
    return http(port, f"GET {path} HTTP/1.1\r\n{lines}\r\n".encode("latin-1"))


def assert_still_serving(viewer) -> None:
    assert viewer["process"].poll() is None, viewer["log"].read_text()[-2000:]
    status, body = get(viewer["port"], "/index.html")
    assert status == 200 and b"<html" in body


def test_it_listens_on_loopback_only(viewer):
    port = viewer["port"]
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if Path(table).exists():
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and int(local.split(":")[1], 16) == port:  # 0A: LISTEN
                    listening.append(local.split(":")[0])
    if listening:
        assert listening == ["0100007F"], listening  # 127.0.0.1, and nothing else
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # this computer's outward address
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET: no packet is sent by a UDP connect
            outward = probe.getsockname()[0]
        except OSError:
            outward = None
    if outward and not outward.startswith("127."):
        with pytest.raises(OSError):
            socket.create_connection((outward, port), timeout=5).close()


@pytest.mark.parametrize("path", [
    "/../../../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/%252e%252e/%252e%252e/etc/passwd", "//etc/passwd", "/index.html/../../../../etc/passwd",
    "/assets/../../../../../etc/passwd", "/..\\..\\..\\etc\\passwd", "/../secret.txt", "/../../secret.txt",
    "/%2e%2e/secret.txt", "/%2e%2e/%2e%2e/secret.txt", "/acat-download-x/../../secret.txt",
    "/acat-download-x/%2e%2e/%2e%2e/secret.txt", "/../tmp/secret.txt"])
def test_path_traversal_never_serves_a_file_outside_the_served_folders(viewer, path):
    status, answer = get(viewer["port"], path)
    assert status in (400, 403, 404), answer[:200]
    assert b"root:" not in answer and SECRET.encode() not in answer


@pytest.mark.parametrize("request_bytes", [
    b"\x00\x01\x02garbage\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n",
    b"POST /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nnot a chunk\r\n",
])
def test_malformed_http_requests_get_an_error_and_the_server_carries_on(viewer, request_bytes):
    request_bytes = request_bytes.replace(b"Host: 127.0.0.1", f"Host: 127.0.0.1:{viewer['port']}\r\nCookie: "
                                          f"{COOKIE[0]}".encode())
    status, answer = http(viewer["port"], request_bytes)
    assert status == 0 or 400 <= status < 500, answer[:200]
    assert_still_serving(viewer)


def test_an_oversized_upload_is_refused(viewer):
    port = viewer["port"]
    body = b"x" * (8 << 20)
    for path in ("/", "/index.html", "/ws"):
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {COOKIE[0]}\r\n"
                f"Content-Type: application/octet-stream\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        status, answer = http(port, head + body)
        assert status in (0, 403, 404, 405, 413), answer[:200]
    assert_still_serving(viewer)


def test_another_sites_page_is_refused(viewer):
    port, url = viewer["port"], viewer["url"]
    assert get(port, "/index.html")[0] == 200  # a program sending no Origin (curl), with the token: allowed
    assert get(port, "/index.html", Origin=url)[0] == 200  # the viewer's own page
    for origin in ("http://evil.example", f"http://evil.example:{port}", "null", f"http://127.0.0.1:{port + 1}"):
        status, answer = get(port, "/index.html", Origin=origin)
        assert status == 403 and b"another site" in answer, origin
    status, answer = get(port, "/index.html", Host=f"rebound.example:{port}")  # DNS rebinding
    assert status == 403 and b"answers only to" in answer
    assert get(port, "/index.html", Host=f"localhost:{port}")[0] == 200

    async def handshake(origin: str) -> int:
        async with aiohttp.ClientSession(cookies={f"acat-view-{port}": viewer["token"]}) as session:
            try:
                async with session.ws_connect(f"{url}/ws", headers={"Origin": origin}):
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    assert asyncio.run(handshake("http://evil.example")) == 403
    assert asyncio.run(handshake(url)) == 101


def run_ws(viewer, script):
    return session_for(viewer["url"], viewer["token"], script=script)


def test_a_bad_state_value_from_the_page_is_an_error_line_not_a_crash(viewer):
    async def script(client):
        await client.hello()
        await client.call("trame.state.update", [{"key": "window", "value": "rainbow"}])
        first = (await client.call("trame.state.get"))["result"]["state"]["error"]
        await client.call("trame.state.update", [{"key": "window", "value": ["not", "a", "name"]}])
        second = (await client.call("trame.state.get"))["result"]["state"]["error"]
        await client.call("trame.state.update", [{"key": "window", "value": "bone"}, {"key": "error", "value": ""}])
        unknown = await client.call("no.such.method")
        return first, second, unknown

    first, second, unknown = run_ws(viewer, script)
    assert first.startswith("unknown window 'rainbow'")
    assert second.startswith("unknown window") or "unhashable" in second
    assert unknown["error"]["message"] == "Unregistered method called"
    assert_still_serving(viewer)


async def next_close(client, timeout: float = 30.0):
    """The connection's next close message, passing over the pushes (images, state) the server had already
    sent before it read what closes the connection; the last message if none comes within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        message = await client.ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        if message.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT) or time.monotonic() > deadline:
            return message


def test_oversized_and_malformed_websocket_messages_close_only_that_connection(viewer):
    async def too_big_frame(client):
        await client.hello()
        await client.ws.send_bytes(b"\0" * (5 << 20))  # over wslink's 4 MB + 4 kB frame limit
        return await next_close(client)

    reply = run_ws(viewer, too_big_frame)
    assert closed(reply) and client_close_code(reply) in (1009, None), reply

    async def announced_2_gb(client):
        await client.hello()
        await client.ws.send_bytes((7).to_bytes(4, "little") + (0).to_bytes(4, "little")
                                   + (2 << 30).to_bytes(4, "little") + b"x")
        return await next_close(client)

    assert closed(run_ws(viewer, announced_2_gb))  # refused at once, nothing set aside for it

    async def not_wslink(client):
        await client.hello()
        await client.ws.send_str("plain text")  # ignored (wslink logs it)
        await client.ws.send_bytes(b"\x01\x02")  # not a chunk: that connection ends
        return await next_close(client)

    assert closed(run_ws(viewer, not_wslink))

    async def before_hello(client):  # no secret yet: nothing but hello is answered
        return await client.call("trame.state.get")

    reply = run_ws(viewer, before_hello)
    assert closed(reply) or reply["error"]["message"].startswith("Unauthorized")
    assert_still_serving(viewer)


def client_close_code(reply):
    return reply.data if reply.type == aiohttp.WSMsgType.CLOSE else None
