"""What a connected page may make the viewer do, bounded: message bytes, image sizes, RPCs, memory.

The page sends state changes and clicks of a few kB; a hostile client on the same computer could send
anything the protocol allows. So, for each websocket connection and the process as a whole:

* **Message bytes** (`BoundedUnChunker`): wslink's un-chunker sets aside a message's announced size when
  its first chunk arrives (4 GB allowed once a client said hello). Here one message may announce
  `MAX_CLIENT_MESSAGE_BYTES` and all the incomplete messages of one connection together
  `MAX_IN_FLIGHT_BYTES`; past that the connection is closed. (So 100 frames of 13 bytes each announcing
  16 MB cost at most 32 MB, not 1.6 GB.)
* **Image sizes** (`clamp_view_size`): a view's size request (``trame.rca.size``: width, height, pixel
  ratio) is clamped so the image rendered is at most `MAX_VIEW_PIXELS` on each side and
  `MAX_VIEW_AREA_PIXELS` in all (scaled down, its shape kept), with a pixel ratio of at most
  `MAX_PIXEL_RATIO`; a value that is not a number is refused.
* **RPCs** (`restrict_rpcs`): ``application.exit`` and ``application.exit.later`` (which stop the server)
  and ``trame.rca.push`` (which the server calls itself, never the page) are not reachable from a page;
  ``trame.lifecycle.update`` runs only the three page life-cycle events trame's page sends.
* **Memory** (`set_memory_budget`): the process's data size limit (``RLIMIT_DATA``: heap and private
  mappings) is `process_budget_bytes`, so a leak or an attack that slips past the bounds above ends with a
  MemoryError in the viewer, not with the computer swapping. The explanation's own child process is not
  under it (`unlimited_popen`): it has the reader's budget and the model's needs.
"""

from __future__ import annotations

import math
import resource
import subprocess
from typing import Callable

MAX_CLIENT_MESSAGE_BYTES = 16 << 20
MAX_IN_FLIGHT_BYTES = 32 << 20
MAX_VIEW_PIXELS = 4096
#: rendered pixels of one view (a full-HD screen's worth): the views cost about 60 bytes per pixel
#: (render window, its buffers, the encoded frames), so one 4096 x 4096 view held 1 GB and three of them
#: took the viewer past its memory budget, killing it (found by `make fuzz`, web-server)
MAX_VIEW_AREA_PIXELS = 1920 * 1080
MAX_PIXEL_RATIO = 2.0
MIN_VIEW_PIXELS = 10  # trame-rca's own minimum
#: page life-cycle events that trame's page sends (``trame.lifecycle.update``)
PAGE_LIFECYCLE_EVENTS = frozenset({"client_connected", "client_exited", "client_unmounted"})
SERVER_STOPPING_RPCS = ("application.exit", "application.exit.later")
SERVER_ONLY_RPCS = ("trame.rca.push",)
#: the viewer's own needs (libraries, rendering, page state) on top of the scans it holds
BASE_BUDGET_BYTES = 2 << 30
#: copies of a scan's budget the viewer may hold at once (the CT and the result volumes shown with it)
SCANS_HELD = 2


# -- message bytes -------------------------------------------------------------------------------
def bounded_unchunker_class():
    """wslink's `UnChunker` with the per-message and per-connection bounds above."""
    from wslink.chunking import HEADER_LENGTH, UnChunker, _decode_header

    class BoundedUnChunker(UnChunker):
        def set_max_message_size(self, size: int) -> None:
            super().set_max_message_size(min(int(size), MAX_CLIENT_MESSAGE_BYTES))

        def process_chunk(self, chunk: bytes):
            message_id, _, total_size = _decode_header(chunk[:HEADER_LENGTH])
            if message_id not in self.pending_messages:
                in_flight = sum(len(m["content"]) for m in self.pending_messages.values())
                if in_flight + total_size > MAX_IN_FLIGHT_BYTES:
                    raise ValueError(f"incomplete messages would hold {in_flight + total_size} bytes, over "
                                     f"{MAX_IN_FLIGHT_BYTES}; closing this connection")
            return super().process_chunk(chunk)

    BoundedUnChunker.acat_bounded = True
    return BoundedUnChunker


def bound_client_messages() -> None:
    """Make every new websocket connection use `BoundedUnChunker` (wslink's handler makes one per
    connection from the ``UnChunker`` name in ``wslink.protocol``). Idempotent."""
    import wslink.protocol

    if not getattr(wslink.protocol.UnChunker, "acat_bounded", False):
        wslink.protocol.UnChunker = bounded_unchunker_class()


# -- image sizes ---------------------------------------------------------------------------------
def _finite(value, name: str) -> float:
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an integer past float's range (JSON allows it; msgpack stops at 64 bits)
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"a view's {name} must be a number, not {value!r}")
    return number


def clamp_view_size(size) -> dict:
    """A view's size request ``{"w": css px, "h": css px, "p": pixel ratio}`` bounded so the image
    rendered, ``w * p`` by ``h * p``, is at most `MAX_VIEW_PIXELS` on each side and ``p`` at most
    `MAX_PIXEL_RATIO`. Raises ValueError for a value that is not a number."""
    if not isinstance(size, dict):
        raise ValueError("a view's size must be {w, h, p}")
    width = _finite(size.get("w", 300), "width")
    height = _finite(size.get("h", 300), "height")
    ratio = min(max(_finite(size.get("p", 1), "pixel ratio"), 0.25), MAX_PIXEL_RATIO)
    limit = MAX_VIEW_PIXELS / ratio
    width, height = min(max(width, MIN_VIEW_PIXELS), limit), min(max(height, MIN_VIEW_PIXELS), limit)
    area = width * height * ratio * ratio
    if area > MAX_VIEW_AREA_PIXELS:  # the same shape, fewer pixels
        scale = math.sqrt(MAX_VIEW_AREA_PIXELS / area)
        width, height = max(width * scale, MIN_VIEW_PIXELS), max(height * scale, MIN_VIEW_PIXELS)
    return {**{k: v for k, v in size.items() if k not in ("w", "h", "p")}, "w": int(width), "h": int(height),
            "p": ratio}


# -- RPCs ----------------------------------------------------------------------------------------
def restrict_rpcs(function_map: dict) -> None:
    """Apply the RPC rules above to one wslink handler's ``functionMap`` (uri -> (object, function))."""
    for uri in SERVER_STOPPING_RPCS + SERVER_ONLY_RPCS:
        function_map.pop(uri, None)
    if "trame.lifecycle.update" in function_map:
        owner, update = function_map["trame.lifecycle.update"]

        def life_cycle_update(self, name, *args, **kwargs):
            if name not in PAGE_LIFECYCLE_EVENTS:
                raise ValueError(f"unknown page life-cycle event {name!r}")
            return update(self, name, *args, **kwargs)

        function_map["trame.lifecycle.update"] = (owner, life_cycle_update)
    if "trame.rca.size" in function_map:
        owner, resize = function_map["trame.rca.size"]

        def update_size(self, area_name, origin, size, *args, **kwargs):
            return resize(self, area_name, origin, clamp_view_size(size), *args, **kwargs)

        function_map["trame.rca.size"] = (owner, update_size)


def install(wslink_server) -> None:
    """All of the above on trame's wslink server (``ctrl.on_server_bind``: before it starts). Fails rather
    than serving without them, should wslink's handlers not be where this code expects them."""
    bound_client_messages()
    handlers = getattr(wslink_server, "_ws_handlers", None)
    if not handlers:
        raise RuntimeError("this wslink version keeps its websocket handlers elsewhere; ACATWeb/limits.py "
                           "cannot restrict what a page may call")
    for handler in handlers:
        restrict_rpcs(handler.functionMap)


# -- memory --------------------------------------------------------------------------------------
def process_budget_bytes(scan_budget_bytes: int) -> int:
    """The viewer's data size limit: `BASE_BUDGET_BYTES` plus `SCANS_HELD` scans of the reader's memory
    budget (``--max-memory-gb``, ``ACAT_MAX_MEMORY_GB``)."""
    return BASE_BUDGET_BYTES + SCANS_HELD * int(scan_budget_bytes)


def set_memory_budget(budget_bytes: int) -> tuple[int, int]:
    """Lower this process's ``RLIMIT_DATA`` soft limit to ``budget_bytes`` (never above the hard limit);
    returns the limits as they were, for `unlimited_popen`."""
    before = resource.getrlimit(resource.RLIMIT_DATA)
    hard = before[1]
    soft = budget_bytes if hard == resource.RLIM_INFINITY else min(budget_bytes, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
    return before


def unlimited_popen(limits: tuple[int, int]) -> Callable[..., subprocess.Popen]:
    """``subprocess.Popen`` whose child gets back the data size limit ``limits`` (the one the viewer had
    before `set_memory_budget`): the explanation is not bound by the viewer's budget. Set right after the
    child starts (``prlimit``), before it has loaded anything large."""

    def popen(*args, **kwargs) -> subprocess.Popen:
        process = subprocess.Popen(*args, **kwargs)
        try:
            resource.prlimit(process.pid, resource.RLIMIT_DATA, limits)
        except (OSError, ValueError):  # it already ended
            pass
        return process

    return popen
