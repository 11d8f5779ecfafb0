"""A TCP proxy on loopback that makes a local server look far away.

Each direction of each connection is delayed by `delay` seconds (so a round
trip costs 2 × delay) and paced to `rate` bytes per second, like one TCP flow
over a long link. Only forwards to 127.0.0.1; it runs in a thread and stops
with `stop()` (or when its process ends).
"""

from __future__ import annotations

import asyncio
import threading

CHUNK = 64 * 1024


class LatencyProxy:
    def __init__(self, target_port: int, delay: float = 0.040, rate: float = 16e6) -> None:
        self.target_port, self.delay, self.rate = target_port, delay, rate
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

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w), return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(maxsize=max(4, int(self.rate * self.delay * 2 / CHUNK)))

        async def receive() -> None:
            try:
                while True:
                    data = await reader.read(CHUNK)
                    await queue.put((loop.time() + self.delay, data))
                    if not data:
                        return
            except (ConnectionError, OSError):
                await queue.put((loop.time(), b""))

        async def send() -> None:
            link_free = loop.time()  # when the paced link has sent all before
            try:
                while True:
                    due, data = await queue.get()
                    if not data:
                        break
                    link_free = max(link_free, due - self.delay) + len(data) / self.rate
                    wait = max(due, link_free + self.delay) - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        await asyncio.gather(receive(), send())
