"""A TCP proxy on loopback that makes a local server look far away.

Each direction of each connection is delayed by `delay` seconds (so a round
trip costs 2 × delay) and paced to `rate` bytes per second, like one TCP flow
over a long link. With `link_rate` (or a `Link` shared by several proxies) all
connections, both directions, together also pass through one link of that many
bytes per second: a chunk leaves when both its connection and the link have
sent what came before it (first come, first served; no burst allowance). The
proxy reads a connection's sender only as fast as that, so the sender is held
back by TCP as on a real link. Only forwards to 127.0.0.1; it runs in a thread
and stops with `stop()` (or when its process ends).
"""

from __future__ import annotations

import asyncio
import threading
import time

CHUNK = 64 * 1024


class Link:
    """The capacity shared by all connections of one or more proxies: `rate` bytes per second."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.sent = 0  # bytes that passed it, both directions
        self._free = 0.0  # when (time.monotonic) the link has sent all reserved so far
        self._lock = threading.Lock()  # proxies run in threads of their own

    def reserve(self, nbytes: int, ready: float) -> float:
        """When `nbytes` offered at `ready` have passed the link, once all offered before them have."""
        with self._lock:
            self._free = max(self._free, ready) + nbytes / self.rate
            self.sent += nbytes
            return self._free


class LatencyProxy:
    def __init__(self, target_port: int, delay: float = 0.040, rate: float = 16e6,
                 link_rate: float | None = None, link: Link | None = None) -> None:
        self.target_port, self.delay, self.rate = target_port, delay, rate
        self.link = link if link is not None else Link(link_rate) if link_rate else None
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "LatencyProxy":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("latency proxy did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            # the connections' coroutines end here, in their loop, not when they are garbage collected
            # after it is gone (that warned "Event loop is closed" from pytest's unraisable hook)
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w), return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue = asyncio.Queue(maxsize=max(4, int(self.rate * self.delay * 2 / CHUNK)))

        async def receive() -> None:
            sent = time.monotonic()  # when this direction has sent all before (asyncio's clock is monotonic)
            try:
                while True:
                    data = await reader.read(CHUNK)
                    now = time.monotonic()
                    ready = max(sent, now)
                    if data:
                        sent = ready + len(data) / self.rate
                        if self.link is not None:
                            sent = max(sent, self.link.reserve(len(data), ready))
                    await queue.put((max(sent, now) + self.delay, data))
                    if not data:
                        return
                    if sent > now:  # read no more until this chunk has left: the sender waits, as on the link
                        await asyncio.sleep(sent - now)
            except (ConnectionError, OSError):
                await queue.put((time.monotonic(), b""))

        async def send() -> None:
            try:
                while True:
                    due, data = await queue.get()
                    if not data:
                        break
                    wait = due - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        await asyncio.gather(receive(), send())
