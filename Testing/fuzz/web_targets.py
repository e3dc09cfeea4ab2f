"""Fuzz targets for the web viewer's message handling (issue 17): ``web-guard`` and ``web-server``.

``web-guard`` runs the viewer's security layer in-process, each example one of:

* ``request``: an HTTP request (``Host``, ``Origin``, ``Cookie`` headers of any bytes a header may carry,
  a query string of any bytes, percent-escaped or raw) through `ACATWeb.guard.refusal`, checked against
  an independent oracle: accepted only with this launch's token, an allowed ``Host`` and an ``Origin``
  (if any) naming that host; refused otherwise, with one line.
* ``path``: a path string of any bytes (``..``, ``.``, ``~``, symbolic links in and out of the allowed
  folder, links in a folder, NUL, lone surrogates, names past NAME_MAX and paths past PATH_MAX, an
  ``.nhdr`` whose ``data file`` is random) through `ACATWeb.files.AllowedFolders.check` on a temporary
  tree. Only `ACATInputError` may be raised; a path accepted must resolve inside the allowed folder, and
  so must every link under it and an NRRD header's data file; a refusal of something outside says
  `files.OUTSIDE` and nothing else.
* ``size``: a view size request holding any JSON values through `ACATWeb.limits.clamp_view_size`: a
  number out, within the bounds, or ValueError.
* ``chunks``: a sequence of websocket frames (wslink chunk headers with any id, offset and announced
  size, short frames, frames of a real message) into the viewer's `BoundedUnChunker`, before or after
  the client's hello: only ValueError (which closes the connection), and the bytes it holds never above
  `MAX_CLIENT_MESSAGE_BYTES` per message nor `MAX_IN_FLIGHT_BYTES` in all.
* ``rpc``: the page-reachable RPC wrappers of `ACATWeb.limits.restrict_rpcs` called with any
  arguments: the removed RPCs are gone, life-cycle events outside the page's three are refused, a size
  reaches trame clamped; only ValueError or TypeError (wrong arguments) come out.

``web-server`` starts a real ``acat view`` once per worker process and sends each example's wslink
messages (method names from the server's registered RPCs, the removed ones and random ones; random
arguments; state updates of the page's own keys with random values; clicks of the page's buttons but
Explain and Demo) over its websocket with the launch's token (Testing/wslink_client.py). Each call
must be answered (a result or an error) or the connection closed; afterwards the server must answer a
valid call on a new connection, and its resident memory stay under `SERVER_RSS_LIMIT_MB`. The
server's peak resident memory (``VmHWM``) is reported as the target's peak memory.
"""

from __future__ import annotations

import asyncio
import atexit
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
TOKEN = "fuzz-token-" + "x" * 40  # the in-process guard's token (>= 32 characters, not trame's default)
PORT = 8765
SERVER_RSS_LIMIT_MB = 2048


class InvariantViolation(AssertionError):
    """The code under test accepted or returned what it must not."""


# ------------------------------------------------------------------------------------------------
# shared strategies
# ------------------------------------------------------------------------------------------------
#: bytes an HTTP header value may carry through aiohttp's parser (no CR, LF or NUL), decoded as aiohttp does
header_bytes = st.binary(max_size=64).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b""))
HOSTS = ["127.0.0.1", "localhost", "[::1]", "evil.example", "127.0.0.1.evil.example", "0.0.0.0", "[::ffff:7f00:1]",
         "LOCALHOST", "127.1", "", " ", "[", "]", "[::1", "::1"]
PORTS = ["", f":{PORT}", f":{PORT + 1}", ":80", ":", f":{PORT}:{PORT}", ":-1", ":99999999999", f":0{PORT}"]
ORIGIN_SCHEMES = ["http://", "https://", "ws://", "", "null", "file://", "//", "http:///", "http://user@"]


@st.composite
def host_header(draw) -> str:
    if draw(st.integers(0, 4)) == 0:
        return draw(header_bytes).decode("utf-8", "surrogateescape")
    return draw(st.sampled_from(HOSTS)) + draw(st.sampled_from(PORTS))


@st.composite
def origin_header(draw):
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return None
    if kind == 1:
        return draw(header_bytes).decode("utf-8", "surrogateescape")
    return (draw(st.sampled_from(ORIGIN_SCHEMES)) + draw(host_header())
            + draw(st.sampled_from(["", "/", "/index.html", "?x", "#", "[", "%00"])))


@st.composite
def query_bytes(draw) -> bytes:
    value = draw(st.one_of(st.just(TOKEN.encode()), st.just(TOKEN[:-1].encode()), st.just((TOKEN + "x").encode()),
                           st.just(b"wslink-secret"), st.just(b""), st.binary(max_size=48),
                           st.just(TOKEN.encode()).map(lambda t: t + b"\0"),
                           st.just(TOKEN.encode()).map(lambda t: t.upper())))
    name = draw(st.sampled_from([b"secret", b"SECRET", b"secret[]", b"secre", b"", b"secret\0"]))
    extra = draw(st.binary(max_size=24))
    parts = [name + b"=" + value, extra]
    if draw(st.booleans()):
        parts.reverse()
    return draw(st.sampled_from([b"&", b";", b"&&"])).join(parts)


@st.composite
def request_example(draw) -> dict:
    cookie = draw(st.one_of(st.none(), header_bytes.map(lambda b: b.decode("utf-8", "surrogateescape")),
                            st.sampled_from([f"acat-view-{PORT}={TOKEN}", f"acat-view-{PORT + 1}={TOKEN}",
                                             f"acat-view-{PORT}=wslink-secret", f"acat-view-{PORT}={TOKEN}; x=\"",
                                             f"acat-view-{PORT}=\"{TOKEN}\"", f"a=b; acat-view-{PORT}={TOKEN}"])))
    example = {"case": "request", "host": draw(host_header()), "origin": draw(origin_header()), "cookie": cookie,
               "query": draw(query_bytes()), "escape": draw(st.booleans()),
               "path": draw(st.sampled_from(["/", "/index.html", "/ws", "/acat-download-x/a.zip", "//", "/%2e%2e/"]))}
    if draw(st.booleans()):  # the owner's own page, then perhaps one field changed
        host = draw(st.sampled_from(["127.0.0.1", "localhost", "[::1]"])) + f":{PORT}"
        own = {"host": host, "origin": draw(st.sampled_from([None, f"http://{host}", f"http://{host}/"])),
               "cookie": draw(st.sampled_from([None, f"acat-view-{PORT}={TOKEN}"])),
               "query": draw(st.sampled_from([b"secret=" + TOKEN.encode(), b"", b"x=1"]))}
        keep = draw(st.sampled_from([None, "host", "origin", "cookie", "query"]))
        example.update({k: v for k, v in own.items() if k != keep})
    return example


# -- paths -----------------------------------------------------------------------------------------
PATH_PARTS = ["..", ".", "", "allowed", "outside", "sub", "head.nrrd", "secret.raw", "link_out", "link_in",
              "link_dir_out", "link_loop", "series", "evil.nhdr", "good.nhdr", "DICOMDIR", "dicomdir", "~", "~root",
              "x" * 255, "x" * 256, "y" * 5000, "a\0b", "\0", "\udcff", "\ud800", "é", " ", "\\..", "..\\..",
              "fuzz_link", "fuzz.nhdr", "nonexistent", "locked", "fifo"]
ROOTS = ["{root}/allowed", "{root}", "{root}/outside", "/", "", "~", "{root}/allowed/..", "/proc/self/root{root}/allowed",
         "/proc/self/cwd", "//{root}/allowed"]


@st.composite
def path_text(draw) -> str:
    parts = draw(st.lists(st.one_of(st.sampled_from(PATH_PARTS), st.text(max_size=12),
                                    st.binary(max_size=12).map(lambda b: b.decode("utf-8", "surrogateescape"))),
                          max_size=6))
    start = draw(st.sampled_from(ROOTS))
    text = "/".join([start, *parts]) if start else "/".join(parts)
    return draw(st.sampled_from(["", " ", "\t", "\n"])) + text + draw(st.sampled_from(["", "/", " ", "//", "/."]))


@st.composite
def path_example(draw) -> dict:
    link_target = draw(st.one_of(st.none(), path_text()))
    data_file = draw(st.one_of(st.none(), path_text(), st.sampled_from(["LIST", "secret%d.raw 0 2 1", "../outside/secret.raw",
                                                                         "head.raw", "/etc/passwd", "/dev/zero"])))
    return {"case": "path", "path": draw(path_text()), "link": link_target, "data_file": data_file,
            "link_where": draw(st.sampled_from(["allowed", "allowed/series", "allowed/sub"]))}


# -- sizes, chunks, RPC arguments ---------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 64 - 1) | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12) | st.binary(max_size=12)
    | st.sampled_from([0, -1, 1, 10, 4096, 4097, 8000, 1e308, -1e308, 5e-324, 2 ** 53 + 1, 10 ** 30, "300", "1e9"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=10)
size_value = st.one_of(json_values, st.sampled_from([0, 1, 9, 10, 11, 2047, 2048, 2049, 4095, 4096, 4097, 8000,
                                                     10 ** 9, -5, 0.5, 0.24, 0.25, 2.0, 2.01, 3, 1e-300,
                                                     float("inf"), float("nan"), True, None]))


@st.composite
def size_example(draw) -> dict:
    if draw(st.integers(0, 5)) == 0:
        return {"case": "size", "size": draw(json_values)}
    size = draw(st.dictionaries(st.sampled_from(["w", "h", "p", "x", "origin"]), size_value, max_size=5))
    return {"case": "size", "size": size}


ANNOUNCED = [0, 1, 2, 11, 12, 13, 511, 512, 513, (16 << 20) - 1, 16 << 20, (16 << 20) + 1, 32 << 20,
             (32 << 20) + 1, 2 ** 31, 2 ** 32 - 1]
frame = st.one_of(
    st.tuples(st.just("frame"), st.integers(0, 5) | st.integers(0, 2 ** 32 - 1),
              st.sampled_from([0, 1, 12, 100, 511, 512]) | st.integers(0, 2 ** 32 - 1),
              st.sampled_from(ANNOUNCED) | st.integers(0, 64), st.binary(max_size=40)),
    st.tuples(st.just("raw"), st.binary(max_size=20)),
    st.tuples(st.just("message"), st.integers(0, 5), json_values, st.integers(1, 64)),
)


@st.composite
def chunks_example(draw) -> dict:
    return {"case": "chunks", "hello": draw(st.booleans()), "frames": draw(st.lists(frame, max_size=8))}


@st.composite
def rpc_example(draw) -> dict:
    uri = draw(st.sampled_from(["trame.lifecycle.update", "trame.rca.size", "trame.state.get"]))
    args = draw(st.lists(st.one_of(json_values, st.sampled_from(["client_connected", "client_exited",
                                                                 "client_unmounted", "server_exited", "Red"])),
                         max_size=4))
    if uri == "trame.rca.size" and draw(st.booleans()):
        args = ["Red", "page", draw(size_example())["size"]]
    return {"case": "rpc", "uri": uri, "args": args, "kwargs": draw(st.dictionaries(st.text(max_size=6), json_values,
                                                                                     max_size=2))}


guard_example = st.one_of(request_example(), path_example(), size_example(), chunks_example(), rpc_example())


# ------------------------------------------------------------------------------------------------
# web-guard: running one example
# ------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def hosts() -> frozenset:
    from ACATWeb import guard

    return guard.allowed_hosts("127.0.0.1", PORT, loopback=True)


def _run_request(example: dict) -> str:
    from aiohttp.test_utils import make_mocked_request

    from ACATWeb import guard

    query = example["query"]
    query = quote(query, safe="=&;%") if example["escape"] else query.decode("latin-1")
    headers = {"Host": example["host"]}
    if example["origin"] is not None:
        headers["Origin"] = example["origin"]
    if example["cookie"] is not None:
        headers["Cookie"] = example["cookie"]
    try:
        request = make_mocked_request("GET", f"{example['path']}?{query}", headers=headers)
        request.query  # noqa: B018 - a target aiohttp itself cannot parse never reaches the guard
    except (ValueError, UnicodeError):
        return "input error"
    reason = guard.refusal(request, hosts(), TOKEN, PORT)
    if not isinstance(reason, str) or "\n" in reason:
        raise InvariantViolation(f"refusal returned {reason!r}")
    # the oracle, written independently of guard.refusal
    host = example["host"].strip().lower()
    origin_ok = True
    if example["origin"] is not None:
        # the host and port an Origin names: what follows "scheme://" (or "//") up to the path, query or
        # fragment; tabs and line breaks dropped, as Python's URL parser drops them
        origin = "".join(c for c in example["origin"].strip().lower() if c not in "\t\r\n")
        authority = origin.split("://", 1)[1] if "://" in origin else origin[2:] if origin.startswith("//") else None
        origin_ok = authority is not None and \
            authority.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0] == host
    offered = request.query.get("secret") or request.cookies.get(f"acat-view-{PORT}") or ""
    should_accept = host in hosts() and origin_ok and offered == TOKEN
    if reason == "" and not should_accept:
        raise InvariantViolation(f"accepted host {host!r}, origin {example['origin']!r}, secret {offered!r}")
    if reason == "" and offered != TOKEN:
        raise InvariantViolation("accepted without this launch's token")
    if reason != "" and should_accept and origin_ok:
        raise InvariantViolation(f"refused the owner's own request: {reason}")
    return "read" if reason == "" else "input error"


@lru_cache(maxsize=1)
def path_tree() -> Path:
    """root/allowed (the folder the page may open) and root/outside, with links each way."""
    from fuzz.targets import seed_dir

    root = Path(tempfile.mkdtemp(prefix="acat-fuzz-web-"))
    atexit.register(_remove_tree, root)
    allowed, outside = root / "allowed", root / "outside"
    for folder in (allowed / "sub", allowed / "series", outside / "sub"):
        folder.mkdir(parents=True)
    shutil.copy(seed_dir() / "head_raw.nrrd", allowed / "head.nrrd")
    shutil.copy(seed_dir() / "head.nhdr", allowed / "good.nhdr")
    shutil.copy(seed_dir() / "head.raw", allowed / "head.raw")
    shutil.copy(seed_dir() / "head_raw.nrrd", outside / "head.nrrd")
    (outside / "secret.raw").write_bytes(b"secret" * 100)
    header = (seed_dir() / "head.nhdr").read_bytes().replace(b"data file: head.raw", b"data file: ../outside/secret.raw")
    (allowed / "evil.nhdr").write_bytes(header)
    (allowed / "link_out").symlink_to(outside / "head.nrrd")
    (allowed / "link_in").symlink_to(allowed / "head.nrrd")
    (allowed / "link_dir_out").symlink_to(outside)
    (allowed / "link_loop").symlink_to(allowed / "link_loop")
    (allowed / "series" / "slice.dcm").write_bytes(b"\0" * 132)
    (allowed / "series" / "DICOMDIR").write_bytes(b"\0" * 132)
    (outside / "DICOMDIR").write_bytes(b"\0" * 132)
    locked = allowed / "locked"
    locked.mkdir()
    (locked / "head.nrrd").write_bytes(b"x")
    locked.chmod(0)
    os.mkfifo(allowed / "fifo.nrrd")
    return root


def _remove_tree(root: Path) -> None:
    for folder in root.rglob("locked"):
        folder.chmod(0o700)
    shutil.rmtree(root, ignore_errors=True)


def _name_bytes(text: str) -> bytes:
    """A name's bytes: undecodable bytes given back, lone surrogates as their (invalid) UTF-8 bytes."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _inside(resolved: str, folder: str) -> bool:
    return resolved == folder or resolved.startswith(folder.rstrip("/") + "/")


def _run_path(example: dict, work: Path) -> str:
    from ACATLogic.errors import ACATInputError
    from ACATLogic.io.itk_guards import nrrd_data_file
    from ACATWeb import files

    root = path_tree()
    allowed_dir = os.path.realpath(root / "allowed")
    made = []
    try:
        where = root / example["link_where"]
        if example["link"] is not None:
            link = where / "fuzz_link"
            try:
                link.symlink_to(example["link"].replace("{root}", str(root)))
                made.append(link)
            except (OSError, ValueError):
                pass
        if example["data_file"] is not None:
            header = where / "fuzz.nhdr"
            text = example["data_file"].replace("{root}", str(root)).replace("\n", " ")
            header.write_bytes((root / "allowed" / "good.nhdr").read_bytes().replace(
                b"data file: head.raw", b"data file: " + _name_bytes(text)))
            made.append(header)
        text = example["path"].replace("{root}", str(root))
        allowed = files.AllowedFolders([root / "allowed"])
        try:
            path = allowed.check(text)
        except files.OutsideAllowedFolders as exc:
            if str(exc) != files.OUTSIDE:
                raise InvariantViolation(f"an outside path was refused with {exc}")
            return "input error"
        except ACATInputError as exc:
            message = str(exc)
            if "\n" in message:
                raise InvariantViolation(f"a refusal of more than one line: {message!r}")
            return "input error"
        # accepted: it, every link under it and an NRRD header's data file must lie inside
        resolved = os.path.realpath(os.path.expanduser(os.fspath(path)))
        if not _inside(resolved, allowed_dir):
            raise InvariantViolation(f"accepted {text!r}, which resolves to {resolved}")
        if os.path.isdir(path):
            for dirpath, dirs, names in os.walk(path):
                for name in dirs + names:
                    entry = os.path.join(dirpath, name)
                    if os.path.islink(entry) and not _inside(os.path.realpath(entry), allowed_dir):
                        raise InvariantViolation(f"accepted {text!r}, under which {entry} leads outside")
        elif path.name.lower().endswith((".nhdr", ".nrrd")):
            data = nrrd_data_file(Path(resolved))
            if data is not None and not _inside(os.path.realpath(data), allowed_dir):
                raise InvariantViolation(f"accepted {text!r}, whose data file {data} lies outside")
        return "read"
    finally:
        for item in made:
            item.unlink(missing_ok=True)


def _run_size(example: dict) -> str:
    from ACATWeb import limits

    try:
        out = limits.clamp_view_size(example["size"])
    except ValueError:
        return "input error"
    w, h, p = out["w"], out["h"], out["p"]
    if not (isinstance(w, int) and isinstance(h, int) and isinstance(p, float) and math.isfinite(p)):
        raise InvariantViolation(f"clamped size {out!r} is not numbers")
    if not (0.25 <= p <= limits.MAX_PIXEL_RATIO):
        raise InvariantViolation(f"pixel ratio {p} out of bounds")
    for side in (w, h):
        if side < 1 or side * p > limits.MAX_VIEW_PIXELS + 1e-9:
            raise InvariantViolation(f"clamped size {out!r} renders past {limits.MAX_VIEW_PIXELS} pixels")
    if w * h * p * p > limits.MAX_VIEW_AREA_PIXELS + 1e-6 and min(w, h) > limits.MIN_VIEW_PIXELS:
        raise InvariantViolation(f"clamped size {out!r} renders more than {limits.MAX_VIEW_AREA_PIXELS} pixels")
    return "read"


def _frame_bytes(item) -> list[bytes]:
    import msgpack
    from wslink.chunking import generate_chunks

    kind = item[0]
    if kind == "frame":
        _, mid, offset, size, content = item
        return [int(mid).to_bytes(4, "little") + int(offset).to_bytes(4, "little") + int(size).to_bytes(4, "little")
                + bytes(content)]
    if kind == "raw":
        return [bytes(item[1])]
    _, mid, value, chunk = item
    try:
        packed = msgpack.packb({"wslink": "1.0", "id": f"rpc:c0:{mid}", "method": "trame.state.get", "args": [value]})
    except (ValueError, TypeError, OverflowError):  # an integer past 64 bits: msgpack has no such thing
        packed = msgpack.packb(None)
    return list(generate_chunks(packed, chunk + 12))


def _run_chunks(example: dict) -> str:
    from ACATWeb import limits

    unchunker = limits.bounded_unchunker_class()()
    if example["hello"]:
        unchunker.set_max_message_size(4 * 1024 * 1024 * 1024)  # what wslink asks once a client said hello
    outcome = "read"
    for item in example["frames"]:
        for chunk in _frame_bytes(item):
            try:
                unchunker.process_chunk(chunk)
            except ValueError:  # wslink's answer to a bad frame: the connection is closed
                return "input error"
            finally:
                pending = [len(m["content"]) for m in unchunker.pending_messages.values()]
                if sum(pending) > limits.MAX_IN_FLIGHT_BYTES or max(pending, default=0) > limits.MAX_CLIENT_MESSAGE_BYTES:
                    raise InvariantViolation(f"the un-chunker holds {sum(pending)} bytes ({pending})")
    return outcome


def _run_rpc(example: dict) -> str:
    from ACATWeb import limits

    calls = []

    class Owner:
        def lifecycle(self, name, *args, **kwargs):
            calls.append(("lifecycle", name))

        def size(self, area, origin, size, *args, **kwargs):
            calls.append(("size", size))

        def state(self, *args, **kwargs):
            calls.append(("state", args))

        def stop(self, *args, **kwargs):
            raise InvariantViolation("a removed RPC was reached")

    owner = Owner()
    function_map = {"trame.lifecycle.update": (owner, Owner.lifecycle), "trame.rca.size": (owner, Owner.size),
                    "trame.state.get": (owner, Owner.state), "application.exit": (owner, Owner.stop),
                    "application.exit.later": (owner, Owner.stop), "trame.rca.push": (owner, Owner.stop)}
    limits.restrict_rpcs(function_map)
    for gone in (*limits.SERVER_STOPPING_RPCS, *limits.SERVER_ONLY_RPCS):
        if gone in function_map:
            raise InvariantViolation(f"{gone} is still reachable")
    obj, func = function_map[example["uri"]]
    try:
        func(obj, *example["args"], **example["kwargs"])
    except (ValueError, TypeError):  # refused, or called with the wrong arguments: wslink answers an error
        return "input error"
    for kind, value in calls:
        if kind == "lifecycle" and value not in limits.PAGE_LIFECYCLE_EVENTS:
            raise InvariantViolation(f"life-cycle event {value!r} reached trame")
        if kind == "size" and _run_size({"size": value}) != "read":
            raise InvariantViolation(f"size {value!r} reached trame unclamped")
        if kind == "size" and value != limits.clamp_view_size(value):
            raise InvariantViolation(f"size {value!r} reached trame unclamped")
    return "read"


class WebGuardTarget:
    name = "web-guard"
    strategy = guard_example

    def run(self, example: dict, work: Path) -> str:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        case = example["case"]
        if case == "request":
            return _run_request(example)
        if case == "path":
            return _run_path(example, work)
        if case == "size":
            return _run_size(example)
        if case == "chunks":
            return _run_chunks(example)
        return _run_rpc(example)


# ------------------------------------------------------------------------------------------------
# web-server: wslink messages to a real `acat view`
# ------------------------------------------------------------------------------------------------
#: every RPC the viewer's wslink server registers (wslink, trame-server, trame-rca) and the ones it removes
REGISTERED_RPCS = ["trame.error.client", "trame.force.push", "trame.lifecycle.update", "trame.rca.drop",
                   "trame.rca.event", "trame.rca.reset", "trame.rca.size", "trame.rca.video.codecs",
                   "trame.rca.video.negotiate", "trame.state.get", "trame.state.update", "trame.trigger"]
REMOVED_RPCS = ["application.exit", "application.exit.later", "trame.rca.push"]
#: the page's own state keys (ACATWeb/app.py) and trame's
STATE_KEYS = ["input_path", "model", "method", "window", "overlay", "right_view", "opacity", "percentile",
              "dicom_results", "deidentify", "has_result", "busy", "running", "input_loaded", "result", "models",
              "methods", "windows", "overlays", "rights", "error", "status", "download_url", "trame__title",
              "trame__template_main", "layout_id"]
#: buttons a fuzzed page may not click: Explain (a model run in a child process, minutes of CPU; its
#: inputs are the state values fuzzed here, and its child is tested by test_web_security) and Demo (a
#: generated CT, ~15 s of CPU)
UNCLICKED = ("explain-button", "demo-button")
VIEWS = ["Red", "Green", "Yellow", "ThreeD", "Counterfactual", "", "nope"]
CALL_TIMEOUT_S = 15.0


@st.composite
def rpc_call(draw):
    kind = draw(st.sampled_from(["rpc", "rpc", "state", "state", "click", "size", "frames", "text"]))
    if kind == "rpc":
        method = draw(st.one_of(st.sampled_from(REGISTERED_RPCS + REMOVED_RPCS + ["wslink.hello"]),
                                st.text(max_size=20)))
        args = draw(st.lists(st.one_of(json_values, st.sampled_from(VIEWS)), max_size=4))
        return ["rpc", method, args, draw(st.dictionaries(st.text(max_size=6), json_values, max_size=2))]
    if kind == "state":
        key = draw(st.one_of(st.sampled_from(STATE_KEYS), st.text(max_size=10)))
        value = draw(st.one_of(json_values, path_text(), st.sampled_from(["{root}/allowed/head.nrrd",
                                                                            "{root}/allowed/good.nhdr"])))
        return ["state", key, value]
    if kind == "click":
        return ["click", draw(st.integers(0, 63)), draw(st.lists(json_values, max_size=2))]
    if kind == "size":
        return ["rpc", "trame.rca.size", [draw(st.sampled_from(VIEWS)), "page", draw(size_example())["size"]], {}]
    if kind == "frames":
        return ["frames", draw(st.lists(frame, max_size=4))]
    return ["text", draw(st.text(max_size=40))]


@st.composite
def server_example(draw) -> dict:
    return {"hello": draw(st.sampled_from([True, True, True, False])),
            "calls": draw(st.lists(rpc_call(), min_size=1, max_size=5))}


class ViewerProcess:
    """One ``acat view`` on a free loopback port, its allowed folder the web-guard tree's ``allowed/``."""

    def __init__(self, heartbeat=lambda: None, start_timeout_s: float = 300.0):
        import re

        sys.path.insert(0, str(REPO / "Testing"))
        import web_browser

        self.tree = path_tree()
        self.tmp = Path(tempfile.mkdtemp(prefix="acat-fuzz-viewer-"))
        port = web_browser.free_port()
        env = dict(os.environ, TMPDIR=str(self.tmp), PYTHONUNBUFFERED="1")
        env.pop("DISPLAY", None)
        command = [sys.executable, "-m", "ACATCli", "view", "--port", str(port), "--model",
                   str(web_browser.SHIPPED_BUNDLE), "--allow-dir", str(self.tree / "allowed"), "--max-memory-gb", "1"]
        self.log = self.tmp / "acat-view.log"
        with open(self.log, "w") as stderr:
            self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr,
                                            text=True, stdin=subprocess.DEVNULL)
        atexit.register(self.stop)
        url = web_browser.wait_for_url(self.process, self.log, start_timeout_s, heartbeat)
        self.base, self.port, self.token = web_browser.split_url(url)
        state = self.session(self._state_script)
        template = state["trame__template_main"]
        self.triggers = sorted(set(re.findall(r"trigger\('([^']+)'", template)))
        self.unclicked = set()
        for element_id in UNCLICKED:
            element = re.search(rf'<[^>]*id="{element_id}"[^>]*>', template).group(0)
            self.unclicked |= set(re.findall(r"trigger\('([^']+)'", element))
        self.triggers = [t for t in self.triggers if t not in self.unclicked]

    @staticmethod
    async def _state_script(client):
        await client.hello()
        return await client.state()

    def session(self, script, attempts: int = 50):
        """``script(client)`` on a new websocket; retried while the last one is still being closed (409)."""
        import aiohttp
        from wslink_client import session_for

        for attempt in range(attempts):
            try:
                return session_for(self.base, self.token, script=script)
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status != 409 or attempt == attempts - 1:
                    raise
                time.sleep(0.2)

    def memory_mb(self) -> tuple[float, float]:
        """(resident now, peak resident) in MB, from /proc."""
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
        return fields["VmRSS"], fields["VmHWM"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _replace_root(value, root: str):
    if isinstance(value, str):
        return value.replace("{root}", root)
    if isinstance(value, list):
        return [_replace_root(v, root) for v in value]
    if isinstance(value, dict):
        return {k: _replace_root(v, root) for k, v in value.items()}
    return value


class WebServerTarget:
    name = "web-server"
    strategy = server_example()

    def __init__(self):
        self.viewer: ViewerProcess | None = None
        self.peak_mb = 0.0

    def setup(self, heartbeat=lambda: None) -> None:
        if self.viewer is None:
            self.viewer = ViewerProcess(heartbeat)

    def run(self, example: dict, work: Path) -> str:
        import aiohttp
        import msgpack

        from wslink_client import closed

        self.setup()
        viewer = self.viewer
        root = str(viewer.tree)
        outcomes = []

        async def script(client):
            if example["hello"]:
                await client.hello()
            for call in example["calls"]:
                kind = call[0]
                try:
                    if kind == "frames":
                        for item in call[1]:
                            for chunk in _frame_bytes(item):
                                await client.ws.send_bytes(chunk)
                        continue
                    if kind == "text":
                        await client.ws.send_str(call[1])
                        continue
                    if kind == "state":
                        reply = await client.call("trame.state.update",
                                                  [{"key": call[1], "value": _replace_root(call[2], root)}],
                                                  timeout_s=CALL_TIMEOUT_S)
                    elif kind == "click":
                        name = viewer.triggers[call[1] % len(viewer.triggers)]
                        reply = await client.call("trame.trigger", name, call[2], {}, timeout_s=CALL_TIMEOUT_S)
                    else:
                        reply = await client.call(call[1], *_replace_root(call[2], root), timeout_s=CALL_TIMEOUT_S,
                                                  kwargs=_replace_root(call[3], root))
                except (ConnectionError, aiohttp.ClientError, msgpack.PackException, ValueError, TypeError,
                        OverflowError):
                    outcomes.append("closed")  # the server closed it, or msgpack cannot send the value
                    return
                except asyncio.TimeoutError:
                    raise InvariantViolation(f"no answer to {call!r} within {CALL_TIMEOUT_S} s") from None
                if closed(reply):
                    outcomes.append("closed")
                    return
                if not isinstance(reply, dict) or not ("result" in reply or "error" in reply):
                    raise InvariantViolation(f"{call!r} was answered {reply!r}")
                outcomes.append("error" if "error" in reply else "result")

        viewer.session(script)
        if viewer.process.poll() is not None:
            raise InvariantViolation(f"acat view exited with {viewer.process.returncode}: "
                                     f"{viewer.log.read_text(errors='replace')[-2000:]}")

        async def alive(client):
            hello = await client.hello()
            reply = await client.call("trame.state.get", timeout_s=CALL_TIMEOUT_S)
            return hello, reply

        hello, reply = viewer.session(alive)
        if not (isinstance(reply, dict) and "result" in reply and "input_path" in reply["result"]["state"]):
            raise InvariantViolation(f"acat view no longer answers a valid call: {hello!r}, {reply!r}")
        rss, peak = viewer.memory_mb()
        self.peak_mb = max(self.peak_mb, peak)
        if rss > SERVER_RSS_LIMIT_MB:
            raise InvariantViolation(f"acat view holds {rss:.0f} MB, over {SERVER_RSS_LIMIT_MB} MB")
        return "read" if "result" in outcomes else "input error"
