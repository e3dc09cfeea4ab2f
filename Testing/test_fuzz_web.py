"""What fuzzing the web viewer's message handling found (Testing/fuzz/web_targets.py), kept as regression
tests, and short runs of its two targets so that `make test` keeps them working (issue 17).

The long run is `make fuzz` (web-guard and web-server beside the readers' targets). Each regression test
rebuilds the input that crashed, hung or raised from the security layer, and checks the one refusal it
now gets.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from ACATData import sample_data

os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(sample_data.cache_dir() / "hypothesis"))

pytest.importorskip("aiohttp", reason="the viewer's packages are not installed (pip install -e '.[slicer]')")
pytest.importorskip("wslink", reason="the viewer's packages are not installed (pip install -e '.[slicer]')")

from aiohttp.test_utils import make_mocked_request  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402

from ACATLogic import ACATInputError  # noqa: E402
from ACATWeb import files, guard  # noqa: E402
from fuzz import web_targets  # noqa: E402

QUICK = settings(max_examples=150, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PORT = web_targets.PORT
TOKEN = web_targets.TOKEN


# ---- what the fuzzers found ---------------------------------------------------------------------
@pytest.mark.parametrize("origin", ["http://[", "http://127.0.0.1:8765[", "ws://[::1"])
def test_an_origin_python_cannot_parse_is_refused_not_a_server_error(origin):
    """``urlsplit`` raises ValueError ("Invalid IPv6 URL") for these: the guard let it out, and aiohttp
    answered 500 with a traceback in the log instead of 403."""
    request = make_mocked_request("GET", f"/index.html?secret={TOKEN}",
                                  headers={"Host": f"127.0.0.1:{PORT}", "Origin": origin})
    reason = guard.refusal(request, guard.allowed_hosts("127.0.0.1", PORT, True), TOKEN, PORT)
    assert reason.startswith("requests from another site")


@pytest.fixture
def allowed(tmp_path):
    folder = tmp_path / "allowed"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("name, match", [("a\0b.nrrd", "NUL byte"), ("\ud800.nrrd", "characters that no file name"),
                                         ("x" * 300 + ".nrrd", r"cannot open this path \(File name too long\)"),
                                         ("x" * 300 + "/head.nrrd", r"cannot open this path \(File name too long\)")])
def test_paths_no_file_can_have_are_one_line(allowed, name, match):
    """Were ValueError ("embedded null byte"), UnicodeEncodeError and OSError (ENAMETOOLONG) from the
    folder check: the page showed a library's message, and any other caller got a traceback."""
    with pytest.raises(ACATInputError, match=match) as refused:
        files.AllowedFolders([allowed]).check(f"{allowed}/{name}")
    assert "\n" not in str(refused.value)
    assert not isinstance(refused.value, files.OutsideAllowedFolders)


def test_a_nul_byte_in_a_data_file_name_is_not_inside(allowed):
    header = allowed / "head.nhdr"
    header.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\nencoding: raw\ndata file: a\0b.raw\n\n")
    assert not files.AllowedFolders([allowed]).inside(allowed / "a\0b.raw")
    with pytest.raises(files.OutsideAllowedFolders):
        files.AllowedFolders([allowed]).check(str(header))


def test_a_named_pipe_inside_the_allowed_folder_is_refused_at_once(allowed):
    """``check`` opened an NRRD header to find its data file: on a named pipe (``scan.nrrd``) that blocks
    until someone writes to it, so the page's reading thread hung and the viewer stayed busy for good."""
    os.mkfifo(allowed / "scan.nrrd")
    outcome = []

    def check():
        try:
            files.AllowedFolders([allowed]).check(str(allowed / "scan.nrrd"))
            outcome.append("accepted")
        except ACATInputError as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=check, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "AllowedFolders.check blocked on a named pipe"
    assert outcome and "neither a file nor a folder" in outcome[0]


# ---- short runs of the two targets ------------------------------------------------------------------
def _work(tmp_path_factory) -> Path:
    return Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))


@QUICK
@given(example=web_targets.guard_example)
def test_web_guard_target(tmp_path_factory, example):
    """Headers, query strings, paths, view sizes, chunk sequences and RPC arguments through the security
    layer in-process: refused or accepted, and the target's oracles hold."""
    work = _work(tmp_path_factory)
    assert web_targets.WebGuardTarget().run(example, work) in ("read", "input error")
    shutil.rmtree(work)


@pytest.fixture(scope="module")
def server_target():
    pytest.importorskip("trame_slicer", reason="trame-slicer is not installed (pip install -e '.[slicer]')")
    target = web_targets.WebServerTarget()
    target.setup()
    yield target
    target.viewer.stop()


def test_web_server_target(server_target, tmp_path_factory):
    """A few fuzzed wslink conversations with a real ``acat view``: each answered or closed, and the server
    still answers afterwards with its memory bounded."""
    started = time.monotonic()

    @settings(max_examples=15, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(example=web_targets.server_example())
    def one(example):
        assert server_target.run(example, _work(tmp_path_factory)) in ("read", "input error")

    one()
    assert server_target.viewer.process.poll() is None
    assert 0 < server_target.peak_mb < web_targets.SERVER_RSS_LIMIT_MB
    assert time.monotonic() - started < 120


def test_every_view_at_its_largest_stays_within_memory(server_target):
    """Found by `make fuzz` (web-server): a view clamped only per side (4096 x 4096 rendered) held about
    1 GB, and three of them took the viewer past its memory budget, which killed it. Each view is now
    clamped to `MAX_VIEW_AREA_PIXELS` as well: all of them at their largest cost about 125 MB each."""
    import asyncio

    from ACATWeb import limits

    viewer = server_target.viewer
    before = viewer.memory_mb()[0]

    async def script(client):
        await client.hello()
        for view in ("Red", "Green", "Yellow", "ThreeD", "Counterfactual"):
            await client.call("trame.rca.size", view, "page", {"w": 8000, "h": 8000, "p": 2})
            await asyncio.sleep(1.5)  # rendered at that size by now
        return await client.call("trame.state.get")

    reply = viewer.session(script)
    assert viewer.process.poll() is None and "result" in reply
    grown = viewer.memory_mb()[0] - before
    assert grown < 5 * 180, f"the views took {grown:.0f} MB"
    assert limits.clamp_view_size({"w": 8000, "h": 8000, "p": 2})["w"] == 720
