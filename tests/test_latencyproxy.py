"""The benchmark's latency proxy (tests/latencyproxy.py): each connection paced to its own rate, and all
connections of one link, both directions, together held to the link's rate. Scaled down (4 MB/s a
connection, 10 MB/s the link, 10 ms each way) so that it runs in a few seconds; generous bounds, since
the machine is shared."""

import socket
import threading
import time

import pytest

from latencyproxy import LatencyProxy, Link

RATE, LINK, DELAY = 4e6, 10e6, 0.010


class Sink:
    """A TCP server on loopback: a client that sends b"get N\\n" gets N bytes, one that sends b"put N\\n" sends
    N bytes and gets b"ok" once they arrived."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        with conn:
            f = conn.makefile("rb")
            verb, n = f.readline().split()
            n = int(n)
            if verb == b"get":
                block = b"x" * 65536
                while n > 0:
                    conn.sendall(block[:n])
                    n -= min(n, len(block))
            else:
                while n > 0:
                    n -= len(f.read(min(n, 65536)))
                conn.sendall(b"ok")


def transfer(port: int, verb: str, n: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"{verb} {n}\n".encode())
        if verb == "get":
            got = 0
            while got < n:
                data = s.recv(1 << 20)
                assert data, f"connection closed after {got} of {n} bytes"
                got += len(data)
        else:
            block = b"y" * 65536
            left = n
            while left > 0:
                s.sendall(block[:left])
                left -= min(left, len(block))
            assert s.recv(2) == b"ok"


def timed(jobs: list[tuple[int, str, int]]) -> float:
    """Seconds for all the transfers (port, verb, bytes) together, each on a connection of its own, all at once."""
    errors = []

    def run(port, verb, n):
        try:
            transfer(port, verb, n)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return time.monotonic() - started


@pytest.fixture
def proxy():
    sink = Sink()
    p = LatencyProxy(sink.port, DELAY, RATE, link_rate=LINK).start()
    yield p
    p.stop()
    sink.sock.close()


def test_one_connection_gets_its_own_rate(proxy):
    n = 4_000_000
    rate = n / timed([(proxy.port, "get", n)])
    assert 0.6 * RATE < rate < 1.15 * RATE, f"{rate / 1e6:.2f} MB/s alone (per-connection rate {RATE / 1e6:g})"


def test_parallel_connections_share_the_link(proxy):
    n, k = 2_500_000, 8  # 8 × 4 MB/s would be 32 MB/s without the link
    rate = n * k / timed([(proxy.port, "get", n)] * k)
    assert 0.6 * LINK < rate < 1.15 * LINK, f"{rate / 1e6:.2f} MB/s for {k} (link {LINK / 1e6:g})"


def test_both_directions_share_the_link(proxy):
    n = 2_500_000
    rate = n * 8 / timed([(proxy.port, "get", n)] * 4 + [(proxy.port, "put", n)] * 4)
    assert 0.6 * LINK < rate < 1.15 * LINK, f"{rate / 1e6:.2f} MB/s for 4 down + 4 up (link {LINK / 1e6:g})"
    assert proxy.link.sent >= 8 * n


def test_proxies_can_share_one_link():
    sinks = [Sink(), Sink()]
    link = Link(LINK)
    proxies = [LatencyProxy(s.port, DELAY, RATE, link=link).start() for s in sinks]
    try:
        n = 2_500_000
        rate = n * 8 / timed([(p.port, "get", n) for p in proxies for _ in range(4)])
        assert 0.6 * LINK < rate < 1.15 * LINK, f"{rate / 1e6:.2f} MB/s through two proxies (link {LINK / 1e6:g})"
    finally:
        for p in proxies:
            p.stop()
        for s in sinks:
            s.sock.close()
