"""The deadline watchdog of client.py, at unit level (no FUSE): each try of a request has a total
deadline, and a watchdog thread shuts the try's socket when it passes, on a new connection, a
kept-alive one or one through a proxy alike. The mount-level tests are in tests/test_deadlines.py."""

from __future__ import annotations

import signal
import socket
import threading
import time

import pytest

from desfs.client import WATCH_GRACE, Client, _Watch, _Watchdog
from desfs.errors import Timeout
from desfs.settings import MIN_RATE


def in_thread(fn):
    """fn() run in a thread of its own (a watch belongs to the thread that began it); its result."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(5)
    return out[0]


def eof_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until `sock` reads its end (shut by the watchdog); fails if it is still open after `seconds`."""
    started = time.monotonic()
    sock.settimeout(seconds)
    assert sock.recv(1) == b""
    return time.monotonic() - started


def test_a_watch_is_given_its_timeout_and_its_bytes_at_the_minimum_rate():
    w = _Watch(2.0, MIN_RATE)
    assert (w.timeout, w.nbytes, w.peak, w.sock, w.fired) == (2.0, MIN_RATE, 1, None, False)
    assert w.seconds == 3.0 and w.deadline == pytest.approx(w.started + 3.0 + WATCH_GRACE)
    assert abs(w.started - time.monotonic()) < 1
    w.allow(MIN_RATE // 2)  # a smaller size learnt later never shortens it
    assert w.nbytes == MIN_RATE and w.seconds == 3.0
    w.allow(3 * MIN_RATE)
    assert w.nbytes == 3 * MIN_RATE and w.seconds == 5.0
    assert WATCH_GRACE == 0.5


def test_the_share_counts_the_most_tries_at_once_and_a_try_that_ended_leaves_it():
    dog = _Watchdog()
    first = dog.begin(1.0, MIN_RATE)
    assert dog.current() is first and first.peak == 1 and first.seconds == 2.0
    second = in_thread(lambda: dog.begin(1.0, MIN_RATE))
    third = in_thread(lambda: dog.begin(1.0, MIN_RATE))
    assert (first.peak, second.peak, third.peak) == (3, 3, 3) and first.seconds == 4.0
    dog.end(third)
    assert dog.current() is None and first.peak == 3  # the peak of its life, not of now
    fourth = in_thread(lambda: dog.begin(1.0, MIN_RATE))
    assert fourth.peak == 3  # first, second and itself: the ended one is not counted
    for w in (first, second, fourth):
        dog.end(w)
    alone = dog.begin(1.0, MIN_RATE)
    assert alone.peak == 1 and alone.seconds == 2.0
    dog.end(alone)


def test_a_socket_is_shut_when_its_deadline_passes_and_not_before():
    dog = _Watchdog()
    mine, peer = socket.socketpair()
    with mine, peer:
        watch = dog.begin(0.2, 0)  # deadline: 0.2 s + the grace
        dog.attach(mine)
        assert watch.sock is mine
        took = eof_within(mine, 5)
        assert watch.fired and 0.2 + WATCH_GRACE - 0.05 <= took < 0.2 + WATCH_GRACE + 0.28
        after = in_thread(lambda: dog.begin(1.0, 0))
        assert after.peak == 1  # a try whose deadline passed is no longer counted in flight
        dog.end(after)
        dog.end(watch)
        assert watch.sock is None and dog.current() is None


def test_the_watchdog_goes_on_after_a_deadline_passed_with_no_other_try_in_flight():
    dog = _Watchdog()
    first = dog.begin(0.0, 0)
    deadline = time.monotonic() + 5
    while not first.fired and time.monotonic() < deadline:
        time.sleep(0.01)
    dog.end(first)
    mine, peer = socket.socketpair()
    with mine, peer:
        second = dog.begin(0.0, 0)
        dog.attach(mine)
        assert eof_within(mine, 5) >= WATCH_GRACE - 0.05 and second.fired
        dog.end(second)


def test_a_short_deadline_begun_after_a_long_one_is_kept_on_time():
    dog = _Watchdog()
    long = dog.begin(30.0, 0)
    time.sleep(0.05)  # the watchdog now sleeps until the long deadline
    mine, peer = socket.socketpair()
    with mine, peer:
        def short():
            watch = dog.begin(0.0, 0)
            dog.attach(mine)
            return watch, eof_within(mine, 5)

        watch, took = in_thread(short)
        assert watch.fired and took < 2.5 and not long.fired
    dog.end(long)


def test_a_socket_attached_after_its_deadline_is_shut_at_once_and_an_ended_try_is_never_shut():
    dog = _Watchdog()
    late = dog.begin(0.0, 0)
    deadline = time.monotonic() + 5
    while not late.fired and time.monotonic() < deadline:
        time.sleep(0.01)
    assert late.fired
    mine, peer = socket.socketpair()
    with mine, peer:
        dog.attach(mine)
        assert eof_within(mine, 0.5) < 0.5
    dog.end(late)
    dog.attach(socket.socket())  # no try under way in this thread: nothing to attach to
    ended = dog.begin(0.0, 0)
    mine, peer = socket.socketpair()
    with mine, peer:
        dog.attach(mine)
        dog.end(ended)  # done before its deadline: its socket is the pool's again, never shut
        time.sleep(WATCH_GRACE + 0.3)
        peer.sendall(b"x")
        mine.settimeout(1)
        assert mine.recv(1) == b"x" and not ended.fired
        dog.attach(None)


def test_the_watchdog_thread_never_takes_the_stop_signals():
    dog = _Watchdog()
    dog.end(dog.begin(1.0, 0))
    with open(f"/proc/self/task/{dog._thread.native_id}/status") as f:
        blocked = int(next(line for line in f if line.startswith("SigBlk:")).split()[1], 16)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        assert blocked & (1 << (sig - 1)), sig
    assert dog._thread.daemon and dog._thread.name == "desfs-deadlines"


# -- through a Client: new, kept-alive and proxied connections ----------------------


@pytest.fixture
def small(server, sample):
    """A file of the sample small enough to drip, and its entry."""
    client = Client(sample.url(server.base_url), timeout=0.6, retries=0)
    for entry in client.list_dir("/"):
        if not entry.is_dir and entry.size >= 200:
            return "/" + entry.name, entry
    raise AssertionError("no small file in the sample")


def timed_fetch(client, path, entry, n=200):
    started = time.monotonic()
    with pytest.raises(Timeout, match=r"no complete answer within 1 s \(--timeout 0.6 s plus the size"):
        client.fetch(path, 0, n, entry, lambda piece: None)
    return time.monotonic() - started


def test_a_dripping_answer_is_cut_at_its_deadline(server, sample, small):
    path, entry = small
    client = Client(sample.url(server.base_url), timeout=0.6, retries=0)
    server.faults.drip_seconds = 0.05  # 200 bytes: 10 s, never a pause of 0.6 s
    took = timed_fetch(client, path, entry)
    assert 0.6 + WATCH_GRACE - 0.05 <= took < 3


def test_a_kept_alive_connection_is_watched_too(server, sample, small):
    path, entry = small
    client = Client(sample.url(server.base_url), timeout=0.6, retries=0)
    client.fetch(path, 0, 10, entry, lambda piece: None)  # the connection is kept for the next
    server.faults.drip_seconds = 0.05
    took = timed_fetch(client, path, entry)
    assert took < 3 and server.count(contains=path) == 2


def test_a_connection_through_a_proxy_is_watched_too(server, sample, small):
    path, entry = small
    # the fault server serves absolute URLs too: it is its own proxy here, for a host that does not exist
    url = sample.url(server.base_url).replace("127.0.0.1", "desfs-proxied.invalid")
    client = Client(url, timeout=0.6, retries=0)
    client.session.proxies = {"http": server.base_url}
    assert client.list_dir("/")  # through the proxy
    server.faults.drip_seconds = 0.05
    assert timed_fetch(client, path, entry) < 3
