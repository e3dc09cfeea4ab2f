"""A websocket client speaking wslink (chunked msgpack RPC), as trame's page does - or a hostile program.

Used by Testing/test_web_server.py and Testing/test_web_security.py against the real ``acat view``.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import msgpack
from wslink.chunking import UnChunker, generate_chunks


class WslinkClient:
    """Just enough of the page's websocket protocol: chunked msgpack RPC (wslink 1.0). ``published``
    collects what the server publishes (state changes, view images) while calls wait."""

    def __init__(self, ws, token: str):
        self.ws, self.token, self.unchunker, self.client_id, self.n = ws, token, UnChunker(), "", 0
        self.unchunker.set_max_message_size(1 << 30)
        self.published: list[dict] = []

    async def send(self, message: dict) -> None:
        for chunk in generate_chunks(msgpack.packb(message), 1 << 20):
            await self.ws.send_bytes(chunk)

    async def receive(self, timeout_s: float):
        """The next complete message (a dict), or the aiohttp message that ended the connection."""
        deadline = time.monotonic() + timeout_s
        while True:
            message = await self.ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            if message.type != aiohttp.WSMsgType.BINARY:
                return message
            full = self.unchunker.process_chunk(message.data)
            if full is not None:
                return full

    async def call(self, method: str, *args, timeout_s: float = 30.0, kwargs=None):
        self.n += 1
        rpc_id = "system:c0:0" if method == "wslink.hello" else f"rpc:{self.client_id}:{self.n}"
        await self.send({"wslink": "1.0", "id": rpc_id, "method": method, "args": list(args), "kwargs": kwargs or {}})
        deadline = time.monotonic() + timeout_s
        while True:
            full = await self.receive(max(0.1, deadline - time.monotonic()))
            if not isinstance(full, dict):
                return full  # the server closed the connection
            if full.get("id") == rpc_id:
                return full
            self.published.append(full)

    async def hello(self, secret=None):
        reply = await self.call("wslink.hello", {"secret": self.token if secret is None else secret})
        if "result" in reply:
            self.client_id = reply["result"]["clientID"]
        return reply

    async def state(self) -> dict:
        return (await self.call("trame.state.get"))["result"]["state"]

    async def update(self, **changes) -> None:
        await self.call("trame.state.update", [{"key": k, "value": v} for k, v in changes.items()])

    async def wait_for(self, predicate, timeout_s: float = 120.0, poll_s: float = 0.5) -> dict:
        """The state once ``predicate(state)`` holds; the last state seen if it never does."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = await self.state()
            if predicate(state) or time.monotonic() > deadline:
                return state
            await asyncio.sleep(poll_s)


def closed(reply) -> bool:
    return isinstance(reply, aiohttp.WSMessage) and reply.type in (
        aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


def session_for(base_url: str, token: str, origin=None, script=None, headers=None, with_cookie=True):
    """Run ``script(client)`` on one websocket to ``base_url/ws`` carrying the token's cookie (as the page
    does) and the page's own Origin; returns what the script returns."""
    port = int(base_url.rsplit(":", 1)[1])
    cookies = {f"acat-view-{port}": token} if with_cookie else {}

    async def main():
        async with aiohttp.ClientSession(cookies=cookies) as http:
            async with http.ws_connect(f"{base_url}/ws", headers={"Origin": origin or base_url, **(headers or {})},
                                       max_msg_size=0) as ws:
                return await script(WslinkClient(ws, token))

    return asyncio.run(main())
