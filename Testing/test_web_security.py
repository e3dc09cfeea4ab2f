"""``acat view`` against a hostile program on the same computer (issue 17, "Security - acat view").

Each test drives the REAL server - ``python -m ACATCli view`` as a child process on a free loopback port
(Testing/web_browser.py) - over real HTTP and its real websocket (aiohttp's client speaking wslink,
Testing/wslink_client.py), as a local program or another site's page would:

1. a per-launch token: without it every HTTP request and the websocket handshake get 403, trame's public
   default secret opens nothing, and a websocket hello with a wrong secret gets no state;
2. ``--host 0.0.0.0`` keeps the Host/Origin checks: a foreign Host with a matching Origin is refused;
3. the page opens files only inside the allowed folders, symlinks and NRRD ``data file`` references
   resolved, with one message whatever lies outside;
4. bounded messages per connection (bytes in flight), bounded view images, a memory budget, no RPC that
   stops the server;
5. the ``model`` sent by the page must be one offered; one session at a time; a superseded results zip is
   deleted, and SIGTERM removes the private folder.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("trame_slicer", reason="trame-slicer is not installed (pip install -e '.[slicer]')")

import aiohttp  # noqa: E402

import web_browser  # noqa: E402
from wslink_client import WslinkClient, closed, session_for  # noqa: E402

from ACATLogic.io.itk_files import write_itk_file  # noqa: E402
from ACATLogic.volume import CTVolume  # noqa: E402
from ACATSlicerLib.selftest_case import syntheticHeadCT  # noqa: E402
from ACATSlicerLib.volume_nodes import geometryFromIjkToRas  # noqa: E402
from ACATWeb import files, limits  # noqa: E402

PRIVATE = b"private-bytes-0600-" * 64  # a file only the viewer's owner may read; never to be reached


def head_ct() -> CTVolume:
    voxels, ijk_to_ras = syntheticHeadCT()
    spacing, origin, direction = geometryFromIjkToRas(ijk_to_ras)
    return CTVolume(voxels, spacing, origin, direction)


def detached_header(nrrd: Path, header: Path, data_file: str) -> Path:
    """An .nhdr holding ``nrrd``'s header with ``data file: data_file`` (its voxels, detached)."""
    head, _, _ = nrrd.read_bytes().partition(b"\n\n")
    header.write_bytes(head + f"\ndata file: {data_file}\n\n".encode())
    return header


def detached_data(nrrd: Path, data: Path) -> Path:
    """``nrrd``'s voxel bytes (as encoded) in a file of their own."""
    data.write_bytes(nrrd.read_bytes().partition(b"\n\n")[2])
    return data


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``allowed/`` (given with --allow-dir) and ``outside/`` beside it, with what a hostile page tries."""
    root = tmp_path_factory.mktemp("files")
    allowed, outside = root / "allowed", root / "outside"
    for folder in (allowed, outside, allowed / "series", outside / "many"):
        folder.mkdir()
    volume = head_ct()
    write_itk_file(volume, allowed / "head.nrrd")
    write_itk_file(volume, outside / "head.nrrd")
    head = allowed / "head.nrrd"
    detached_data(head, allowed / "good.raw")
    good = detached_header(head, allowed / "good.nhdr", "good.raw")  # a detached header and its data, inside
    private = detached_data(head, outside / "private.raw")  # a real CT's voxels: only the folder rule stops it
    private.chmod(0o600)
    for n in range(20):
        (outside / "many" / f"file{n}").write_text("x")
    locked = outside / "locked"
    locked.mkdir()
    locked.chmod(0)
    paths = {
        "outside file": outside / "head.nrrd",
        "outside folder": outside / "many",
        "missing outside": outside / "no-such-file.nrrd",
        "unreadable folder": locked / "head.nrrd",
        "dot-dot": allowed / ".." / "outside" / "head.nrrd",
        "symlink": allowed / "link.nrrd",
        "nhdr absolute": detached_header(head, allowed / "abs.nhdr", str(private)),
        "nhdr relative": detached_header(head, allowed / "rel.nhdr", "../outside/private.raw"),
        "link in series": allowed / "series",
        "dicomdir": allowed / "series" / "DICOMDIR",  # the reader reads the folder it indexes
        "root": Path("/root"),
        "etc passwd": Path("/etc/passwd"),
    }
    (allowed / "link.nrrd").symlink_to(outside / "head.nrrd")
    (allowed / "series" / "slice.dcm").symlink_to(private)
    (allowed / "series" / "DICOMDIR").write_bytes(b"\0" * 132)
    yield {"allowed": allowed, "outside": outside, "good": good, "private": private, "paths": paths}
    locked.chmod(0o700)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from bundles import make_random_bundle

    root = tmp_path_factory.mktemp("bundles")
    return {"offered": make_random_bundle(root / "offered", size=48, slices=5, steps=2),
            "other": make_random_bundle(root / "other", size=48, slices=5, steps=2, seed=1)}


@pytest.fixture(scope="module")
def viewer(tmp_path_factory, folders, model):
    tmp = tmp_path_factory.mktemp("viewer")
    args = ("--allow-dir", str(folders["allowed"]), "--max-memory-gb", "1")
    with web_browser.viewer_server(model["offered"], tmp, extra_args=args) as (url, process, log):
        base, port, token = web_browser.split_url(url)
        yield {"url": url, "base": base, "port": port, "token": token, "process": process, "log": log, "tmp": tmp}


def http_get(port: int, path: str, host=None, **headers) -> tuple[int, bytes, str]:
    """(status, body, raw head) of one GET over a plain socket."""
    fields = {"Host": host or f"127.0.0.1:{port}", "Connection": "close", **headers}
    head = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in fields.items())
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\n{head}\r\n".encode("latin-1"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    status = head_bytes.split(b"\r\n", 1)[0].split(b" ")
    return int(status[1]), body, head_bytes.decode("latin-1")


def cookie(viewer, token=None) -> str:
    return f"acat-view-{viewer['port']}={token or viewer['token']}"


def handshake_status(base: str, headers: dict, cookies=None) -> tuple[int, str]:
    async def main():
        async with aiohttp.ClientSession(cookies=cookies or {}) as http:
            try:
                async with http.ws_connect(f"{base}/ws", headers=headers) as ws:
                    try:
                        first = await ws.receive(timeout=3)  # the server sends nothing before hello
                    except asyncio.TimeoutError:
                        return 101, "nothing"
                    return 101, str(first.type)
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status, exc.message

    return asyncio.run(main())


def assert_serving(viewer) -> None:
    assert viewer["process"].poll() is None, viewer["log"].read_text()[-2000:]
    status, body, _ = http_get(viewer["port"], "/index.html", Cookie=cookie(viewer))
    assert status == 200 and b"<html" in body


def trigger_name(state: dict, element_id: str) -> str:
    """The trame trigger behind a button of the page (what a click sends)."""
    element = re.search(rf'<[^>]*id="{element_id}"[^>]*>', state["trame__template_main"]).group(0)
    return re.search(r"trigger\('([^']+)'\)", element).group(1)


def run(viewer, script, **kwargs):
    return session_for(viewer["base"], viewer["token"], script=script, **kwargs)


# -- 1. the token --------------------------------------------------------------------------------
def test_every_http_request_needs_this_launchs_token(viewer):
    port, token = viewer["port"], viewer["token"]
    assert len(token) >= 32 and token != "wslink-secret"
    for path in ("/", "/index.html", "/loading.tpl", "/ws", "/acat-download-x/a.zip"):
        status, body, _ = http_get(port, path)
        assert status == 403 and b"secret that acat view printed" in body, (path, status)
    for wrong in ("wslink-secret", token[:-1], token + "x", ""):
        assert http_get(port, f"/index.html?secret={wrong}")[0] == 403, wrong
        assert http_get(port, "/index.html", Cookie=cookie(viewer, wrong or "x"))[0] == 403, wrong
    status, body, head = http_get(port, f"/index.html?secret={token}")
    assert status == 200 and b"<html" in body
    set_cookie = re.search(r"(?im)^set-cookie: (.*)$", head).group(1)
    assert set_cookie.startswith(f"acat-view-{port}={token};")
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    assert http_get(port, "/index.html", Cookie=cookie(viewer))[0] == 200  # the page's later requests
    status, _, head = http_get(port, f"/?secret={token}")  # the root redirects to the page, token kept
    assert status == 302 and f"index.html?secret={token}" in head


def test_the_websocket_needs_the_token_and_sends_nothing_without_it(viewer):
    base, token = viewer["base"], viewer["token"]
    assert handshake_status(base, {"Origin": base})[0] == 403
    assert handshake_status(base, {"Origin": base}, {f"acat-view-{viewer['port']}": "wslink-secret"})[0] == 403
    status, first = handshake_status(base, {"Origin": base}, {f"acat-view-{viewer['port']}": token})
    assert (status, first) == (101, "nothing")  # accepted, and nothing sent before hello

    async def wrong_hello(client):
        hello = await client.hello(secret="wslink-secret")  # trame's public default
        state = await client.call("trame.state.get")
        return hello, state, client.published

    hello, state, published = run(viewer, wrong_hello)
    assert hello["error"]["message"] == "Authentication failed"
    assert state["error"]["message"].startswith("Unauthorized") and "result" not in state
    assert published == []

    async def right_hello(client):
        await client.hello()
        return await client.state()

    assert run(viewer, right_hello)["methods"]  # the real page's state, with the token


# -- 2. beyond loopback --------------------------------------------------------------------------
def test_listening_beyond_loopback_keeps_the_host_and_origin_checks(folders, model, tmp_path):
    with web_browser.viewer_server(model["offered"], tmp_path, host="0.0.0.0") as (url, process, log):
        base, port, token = web_browser.split_url(url)
        assert base == f"http://{socket.gethostname()}:{port}"
        jar = f"acat-view-{port}={token}"
        for evil in ("evil.example", "rebound.attacker.test"):  # DNS rebinding: its Host, its own Origin
            status, body, _ = http_get(port, f"/index.html?secret={token}", host=f"{evil}:{port}",
                                       Origin=f"http://{evil}:{port}")
            assert status == 403 and b"answers only to" in body, evil
            assert handshake_status(f"http://127.0.0.1:{port}",
                                    {"Host": f"{evil}:{port}", "Origin": f"http://{evil}:{port}"},
                                    {f"acat-view-{port}": token})[0] == 403
        assert http_get(port, "/index.html", Origin="http://evil.example", Cookie=jar)[0] == 403
        assert http_get(port, "/index.html")[0] == 403  # no token
        assert http_get(port, "/index.html", Cookie=jar)[0] == 200
        assert http_get(port, "/index.html", host=f"{socket.gethostname()}:{port}", Cookie=jar)[0] == 200
        assert process.poll() is None


def test_an_origin_python_cannot_parse_is_403_not_a_server_error(viewer):
    """Found by `make fuzz` (web-guard): ``Origin: http://[`` made the guard raise ValueError, which aiohttp
    answered with 500 and a traceback; on the websocket handshake too."""
    for origin in ("http://[", f"http://127.0.0.1:{viewer['port']}["):
        status, body, _ = http_get(viewer["port"], "/index.html", Origin=origin, Cookie=cookie(viewer))
        assert status == 403 and b"another site" in body, (origin, status, body[:200])
        assert handshake_status(viewer["base"], {"Origin": origin}, {f"acat-view-{viewer['port']}": viewer["token"]})[0] \
            == 403
    assert_serving(viewer)


# -- 3. which files the page may open ------------------------------------------------------------
def test_the_page_opens_only_files_inside_the_allowed_folders(viewer, folders):
    async def script(client):
        await client.hello()
        state = await client.state()
        open_button = trigger_name(state, "open-button")
        answers = {}
        for name, path in [("allowed nrrd", folders["allowed"] / "head.nrrd"), ("allowed nhdr", folders["good"]),
                           *folders["paths"].items()]:
            await client.update(input_path=str(path), error="", input_info="")
            await client.call("trame.trigger", open_button, [], {})
            state = await client.wait_for(lambda s: not s["busy"] and (s["error"] or s["input_info"]), 60)
            answers[name] = (state["error"], state["input_info"])
        return answers

    answers = run(viewer, script)
    for name in ("allowed nrrd", "allowed nhdr"):
        error, info = answers[name]
        assert error == "" and info.startswith("48 x 48 x 12 voxels"), (name, answers[name])
    for name in folders["paths"]:
        assert answers[name] == (files.OUTSIDE, ""), (name, answers[name])
    assert_serving(viewer)


def test_allowed_folders_resolve_links_and_data_files(folders):
    """The same rule in the process, for every path above: one exception type, one message."""
    allowed = files.AllowedFolders([folders["allowed"]])
    assert allowed.check(str(folders["allowed"] / "head.nrrd")) == folders["allowed"] / "head.nrrd"
    assert allowed.check(str(folders["good"])) == folders["good"]
    for name, path in folders["paths"].items():
        with pytest.raises(files.OutsideAllowedFolders) as refused:
            allowed.check(str(path))
        assert str(refused.value) == files.OUTSIDE, name


# -- 4. bounds -----------------------------------------------------------------------------------
def vm_data_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmData")


def test_bytes_in_flight_per_connection_are_bounded(viewer):
    pid = viewer["process"].pid

    async def announce_many(client):
        await client.hello()
        before = vm_data_bytes(pid)
        sent = 0
        try:
            for n in range(100):  # 100 frames of 13 bytes, each announcing a 16 MB message
                header = (n + 1).to_bytes(4, "little") + (0).to_bytes(4, "little") + (16 << 20).to_bytes(4, "little")
                await client.ws.send_bytes(header + b"x")
                sent += 1
        except (ConnectionError, aiohttp.ClientError):
            pass
        reply = await client.receive(30)
        return before, vm_data_bytes(pid), reply

    before, after, reply = run(viewer, announce_many)
    assert closed(reply), reply
    assert after - before < limits.MAX_IN_FLIGHT_BYTES + (64 << 20), (before, after)
    assert_serving(viewer)

    # the same frames into the server's un-chunker class itself: what it holds when it refuses
    unchunker = limits.bounded_unchunker_class()()
    unchunker.set_max_message_size(4 << 30)  # what wslink asks after hello
    assert unchunker.max_message_size == limits.MAX_CLIENT_MESSAGE_BYTES
    accepted = 0
    with pytest.raises(ValueError, match="incomplete messages would hold"):
        for n in range(100):
            unchunker.process_chunk((n + 1).to_bytes(4, "little") + (0).to_bytes(4, "little")
                                    + (16 << 20).to_bytes(4, "little") + b"x")
            accepted += 1
    assert accepted == limits.MAX_IN_FLIGHT_BYTES // (16 << 20)
    assert sum(len(m["content"]) for m in unchunker.pending_messages.values()) <= limits.MAX_IN_FLIGHT_BYTES


def test_view_images_are_clamped(viewer):
    def red_frames(messages) -> list:
        return [sorted((m["result"]["meta"]["w"], m["result"]["meta"]["h"])) for m in messages
                if str(m.get("id", "")).startswith("publish:trame.rca.topic.stream") and m["result"]["name"] == "Red"]

    async def script(client):
        await client.hello()
        sizes, seen = {}, []
        for request in ({"w": 5000, "h": 300, "p": 1}, {"w": 3000, "h": 200, "p": 3}):
            seen += red_frames(client.published)  # frames of earlier sizes may still arrive: not this one's
            client.published.clear()
            await client.call("trame.rca.size", "Red", "test", request)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and request["p"] not in sizes:
                new = [size for size in red_frames(client.published) if size not in seen]
                if new:
                    sizes[request["p"]] = new[0]
                    break
                try:
                    message = await client.receive(5)
                except asyncio.TimeoutError:
                    continue
                if isinstance(message, dict):
                    client.published.append(message)
        bad = await client.call("trame.rca.size", "Red", "test", {"w": "huge", "h": 300, "p": 1})
        await client.call("trame.rca.size", "Red", "test", {"w": 400, "h": 400, "p": 1})
        return sizes, bad

    sizes, bad = run(viewer, script)
    assert sizes[1] == [300, limits.MAX_VIEW_PIXELS]  # 5000 x 300 asked
    assert sizes[3] == [200 * limits.MAX_PIXEL_RATIO, limits.MAX_VIEW_PIXELS]  # 9000 x 600 asked
    assert "must be a number" in bad["error"]["data"]["exception"]
    # and at most MAX_VIEW_AREA_PIXELS in all: 1440 x 1440 rendered
    assert limits.clamp_view_size({"w": 8000, "h": 8000, "p": 2}) == {"w": 720, "h": 720, "p": 2.0}
    assert_serving(viewer)


def test_no_rpc_from_the_page_stops_the_server(viewer):
    async def script(client):
        await client.hello()
        answers = [await client.call("application.exit"), await client.call("application.exit.later", 1)]
        answers.append(await client.call("trame.rca.push", "Red", {}, b"x"))
        answers.append(await client.call("trame.lifecycle.update", "server_exited"))
        await asyncio.sleep(3)  # past the 1 s that exit.later would have waited
        return answers

    exit_now, exit_later, push, lifecycle = run(viewer, script)
    for answer in (exit_now, exit_later, push):
        assert answer["error"]["message"] == "Unregistered method called", answer
    assert "unknown page life-cycle event" in lifecycle["error"]["data"]["exception"]
    assert_serving(viewer)


def limit_of(pid: int, name: str) -> str:
    line = next(li for li in Path(f"/proc/{pid}/limits").read_text().splitlines() if li.startswith(name))
    return line[len(name):].split()[0]


def test_the_viewer_has_a_memory_budget_and_its_explanations_do_not(viewer):
    from ACATLogic.io.limits import parse_budget_gib

    expected = limits.process_budget_bytes(int(parse_budget_gib("1") * 2**30))  # --max-memory-gb 1
    assert int(limit_of(viewer["process"].pid, "Max data size")) == expected
    # the child process of an explanation gets the limit the viewer started with back (prlimit)
    own = resource.getrlimit(resource.RLIMIT_DATA)[0]
    code = ("import resource, sys; sys.path[:0] = sys.argv[1:]; from ACATWeb import limits; "
            "before = limits.set_memory_budget(3 << 30); "
            "child = limits.unlimited_popen(before)([sys.executable, '-c', 'import time; time.sleep(2)']); "
            "time = __import__('time'); time.sleep(1); "
            "print(open(f'/proc/{child.pid}/limits').read()); print(resource.getrlimit(resource.RLIMIT_DATA)[0]); "
            "child.wait()")
    out = subprocess.run([sys.executable, "-c", code, str(web_browser.ROOT)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    child_limit = re.search(r"Max data size\s+(\S+)", out).group(1)
    assert child_limit == ("unlimited" if own == resource.RLIM_INFINITY else str(own))
    assert out.strip().splitlines()[-1] == str(3 << 30)


# -- 5. model, sessions, zips --------------------------------------------------------------------
def test_only_one_session_at_a_time(viewer):
    base, token = viewer["base"], viewer["token"]

    async def main():
        jar = {f"acat-view-{viewer['port']}": token}
        async with aiohttp.ClientSession(cookies=jar) as first_http, aiohttp.ClientSession(cookies=jar) as second:
            async with first_http.ws_connect(f"{base}/ws", headers={"Origin": base}) as ws:
                client = WslinkClient(ws, token)
                await client.hello()
                try:
                    async with second.ws_connect(f"{base}/ws", headers={"Origin": base}):
                        refused = (101, "")
                except aiohttp.WSServerHandshakeError as exc:
                    refused = (exc.status, exc.message)
                still = await client.state()
            # the first page gone, the next one is let in
            async with second.ws_connect(f"{base}/ws", headers={"Origin": base}) as ws:
                client = WslinkClient(ws, token)
                await client.hello()
                return refused, still, await client.state()

    refused, still, later = asyncio.run(main())
    assert refused[0] == 409, refused
    assert "methods" in still and "methods" in later

    async def conflict_text():
        jar = {f"acat-view-{viewer['port']}": token}
        async with aiohttp.ClientSession(cookies=jar) as a, aiohttp.ClientSession(cookies=jar) as b:
            async with a.ws_connect(f"{base}/ws", headers={"Origin": base}):
                async with b.get(f"{base}/ws", headers={"Origin": base, "Connection": "Upgrade",
                                                         "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                                                         "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as r:
                    return r.status, await r.text()

    status, text = asyncio.run(conflict_text())
    assert status == 409 and "already open in another tab or browser" in text and "one session at a time" in text


def private_folder(viewer) -> Path:
    folders = list((viewer["tmp"] / "tmp").glob("acat-view-*"))
    assert len(folders) == 1, folders
    return folders[0]


def child_pids(pid: int) -> list[int]:
    pids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return pids


def test_the_model_must_be_offered_and_superseded_zips_are_deleted(viewer, folders, model):
    downloads = private_folder(viewer) / "downloads"

    async def script(client):
        await client.hello()
        state = await client.state()
        offered = [m["value"] for m in state["models"]]
        open_button, explain_button = trigger_name(state, "open-button"), trigger_name(state, "explain-button")
        await client.update(input_path=str(folders["allowed"] / "head.nrrd"), error="")
        await client.call("trame.trigger", open_button, [], {})
        await client.wait_for(lambda s: s["input_loaded"] and not s["busy"], 60)

        await client.update(model=str(model["other"]))  # a real bundle, not in the list
        await client.call("trame.trigger", explain_button, [], {})
        await asyncio.sleep(2)
        refused = await client.state()

        await client.update(model=offered[0], error="")
        await client.call("trame.trigger", explain_button, [], {})
        done = await client.wait_for(lambda s: not s["running"] and (s["has_result"] or s["error"]), 600)
        first = (await client.call("trame.trigger", "acat_download", [], {}, timeout_s=120))["result"]
        zips_after_first = sorted(p.name for p in downloads.iterdir())
        second = (await client.call("trame.trigger", "acat_download", [], {}, timeout_s=120))["result"]
        return offered, refused, done, first, zips_after_first, second

    offered, refused, done, first, zips_after_first, second = run(viewer, script)
    assert str(model["other"]) not in offered
    assert refused["error"] == "choose a model from the list" and not refused["running"]
    assert done["has_result"] and done["error"] == "", done["error"]
    assert zips_after_first == [first.rsplit("/", 1)[1]]
    assert sorted(p.name for p in downloads.iterdir()) == [second.rsplit("/", 1)[1]]  # the first is gone
    port = viewer["port"]
    assert http_get(port, f"/{first}", Cookie=cookie(viewer))[0] == 404
    status, body, _ = http_get(port, f"/{second}", Cookie=cookie(viewer))
    assert status == 200 and body[:2] == b"PK"
    assert http_get(port, f"/{second}")[0] == 403  # not without the token


def test_sigterm_removes_the_private_folder_and_exits(viewer):
    """Last in this module: it stops the module's viewer, with a results zip and a page connected."""
    folder = private_folder(viewer)
    assert any(folder.rglob("*.zip")), "the previous test left a zip to clean up"

    async def connected_then_terminated(client):
        await client.hello()
        viewer["process"].send_signal(signal.SIGTERM)
        return await client.receive(30)

    started = time.monotonic()
    reply = run(viewer, connected_then_terminated)
    assert closed(reply)
    assert viewer["process"].wait(timeout=30) == 128 + signal.SIGTERM
    assert time.monotonic() - started < 30
    assert not folder.exists()
    assert not list((viewer["tmp"] / "tmp").glob("acat-view-*"))
