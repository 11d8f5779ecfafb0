"""LoadingCache at unit level: how long a thread waits for another's load (its patience), and
which loads a discard keeps out of the cache."""

from __future__ import annotations

import errno
import threading
import time

import pytest

from desfs.cache import LoadingCache


def waiting_for_a_load(cache: LoadingCache, patience=None):
    """Start a load of "k" that lasts until the returned event is set; returns (event, loader thread)."""
    loading, release = threading.Event(), threading.Event()
    load = lambda: (loading.set(), release.wait(10), "v")[2]  # noqa: E731
    loader = threading.Thread(target=cache.get, args=("k", load, patience), daemon=True)
    loader.start()
    assert loading.wait(5)
    return release, loader


def gives_up(wait, between):
    """`wait()` raises ETIMEDOUT after a time within `between` (seconds)."""
    started = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        wait()
    took = time.monotonic() - started
    assert info.value.errno == errno.ETIMEDOUT and info.value.strerror == (
        "gave up waiting for a load under way in another thread")
    assert between[0] <= took < between[1], took


@pytest.mark.parametrize("per_call", [False, True])
def test_a_waiter_gives_up_once_the_load_has_run_its_patience(per_call):
    cache = LoadingCache(10, 60, patience=None if per_call else 0.3)
    release, loader = waiting_for_a_load(cache, 0.3 if per_call else None)
    gives_up(lambda: cache.get("k", lambda: "never called"), (0.15, 0.9))
    gives_up(lambda: cache.cached_or_waited("k"), (0.0, 0.2))  # its patience is spent: no wait at all
    release.set()
    loader.join(5)
    assert cache.get("k", lambda: "again") == "v"  # the load went on and was kept


def test_patience_is_counted_from_the_start_of_the_load_not_of_the_wait():
    cache = LoadingCache(10, 60, patience=0.6)
    release, loader = waiting_for_a_load(cache)
    time.sleep(0.4)
    gives_up(lambda: cache.cached_or_waited("k"), (0.05, 0.5))
    release.set()
    loader.join(5)


def test_without_patience_a_waiter_waits_for_the_end_of_the_load():
    cache = LoadingCache(10, 60)
    release, loader = waiting_for_a_load(cache)
    threading.Timer(0.3, release.set).start()
    assert cache.get("k", lambda: "never called") == "v"
    loader.join(5)


def test_a_load_that_raced_two_discards_of_either_kind_is_not_stored():
    cache = LoadingCache(10, 60)
    assert cache.claim("k")
    cache.discard("k")
    cache.discard_where(lambda key: False)
    cache.fulfil("k", "old")
    assert cache.peek("k") is None
    assert cache.claim("k")
    cache.discard_where(lambda key: False)
    cache.discard("k")
    cache.fulfil("k", "old")
    assert cache.peek("k") is None
    assert cache.get("k", lambda: "new") == "new" and cache.peek("k") == "new"


def test_a_claimed_load_gives_its_waiters_the_patience_it_was_claimed_with():
    cache = LoadingCache(10, 60)  # no patience of its own
    assert cache.claim("k", 0.3) and not cache.claim("k", 0.3)
    gives_up(lambda: cache.cached_or_waited("k"), (0.15, 0.9))
    cache.fulfil("k", "v")
    assert cache.cached_or_waited("k") == "v"


def test_a_time_to_live_given_by_a_function_is_that_of_each_value():
    from desfs.cache import MemoryStore

    class Clock:
        now = 1000.0

        def __call__(self):
            return self.now

    clock = Clock()
    store = MemoryStore(100, lambda value: len(value), getsizeof=len, timer=clock)
    store.put("short", b"xx")  # 2 s
    store.put("long", b"xxxxx")  # 5 s
    clock.now += 3
    assert store.get("short") is None and store.get("long") == b"xxxxx"
    clock.now += 3
    assert store.get("long") is None
