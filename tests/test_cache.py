"""The cache layer on its own: no server, no sleeping (an injected timer)."""

import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from conftest import has_block

from desfs.cache import BlockCache, LoadingCache


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_ttl_expiry_with_fake_timer():
    clock = Clock()
    cache = LoadingCache(100, ttl=10, timer=clock)
    loads = []
    load = lambda: loads.append(1) or len(loads)  # noqa: E731
    assert cache.get("k", load) == 1
    clock.now += 9.9
    assert cache.get("k", load) == 1
    clock.now += 0.2
    assert cache.get("k", load) == 2
    assert len(loads) == 2


def run_threads(target, count: int, gate: threading.Event) -> None:
    """Start `count` threads on `target`, let them all block on `gate`, then open it and join them."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join(5)


def test_concurrent_misses_make_one_load():
    cache = LoadingCache(100, ttl=60)
    calls = []
    gate = threading.Event()

    def slow_load():
        calls.append(1)
        gate.wait(5)
        return "value"

    results = []
    run_threads(lambda: results.append(cache.get("k", slow_load)), 16, gate)
    assert results == ["value"] * 16
    assert len(calls) == 1


def test_failed_load_is_shared_and_not_cached():
    cache = LoadingCache(100, ttl=60)
    gate = threading.Event()
    attempts = []

    def failing():
        attempts.append(1)
        gate.wait(5)
        raise OSError(5, "boom")

    errors = []

    def reader():
        try:
            cache.get("k", failing)
        except OSError as exc:
            errors.append(exc.errno)

    run_threads(reader, 8, gate)
    assert errors == [5] * 8 and len(attempts) == 1
    assert cache.get("k", lambda: "fine") == "fine"


def test_byte_budget_evicts_and_oversized_values_are_served_not_kept():
    cache = LoadingCache(1000, ttl=60, getsizeof=len)
    for i in range(10):
        cache.get(i, lambda: b"x" * 300)
    assert cache.current_size <= 1000
    assert cache.get("huge", lambda: b"y" * 5000) == b"y" * 5000
    assert "huge" not in cache


def test_discard_where_and_racing_load_not_stored():
    cache = LoadingCache(100, ttl=60)
    cache.put(("/a", 1), 1)
    cache.put(("/b", 1), 2)
    assert cache.discard_where(lambda k: k[0] == "/a") == 1
    assert ("/a", 1) not in cache and ("/b", 1) in cache

    def load_during_discard():
        cache.discard_where(lambda k: True)  # a forget() that races this load
        return "old"

    assert cache.get("c", load_during_discard) == "old"
    assert "c" not in cache


def test_discard_of_one_key_and_a_racing_load_of_it_not_stored():
    cache = LoadingCache(100, ttl=60)
    cache.put("/a", 1)
    cache.put("/b", 2)
    assert cache.discard("/a") and not cache.discard("/a")
    assert "/a" not in cache and "/b" in cache

    def load_during_discard():
        cache.discard("/c")  # the listing is forgotten while it is being fetched
        return "old"

    assert cache.get("/c", load_during_discard) == "old"
    assert "/c" not in cache


def make_file(size, seed=1):
    import random

    return random.Random(seed).randbytes(size)


class CountingFetcher:
    def __init__(self, data):
        self.data = data
        self.calls = []

    def __call__(self, start, stop, write):
        self.calls.append((start, stop))
        for i in range(start, stop, 333):  # in odd chunks, as a network delivers them
            write(self.data[i:min(stop, i + 333)])


@settings(max_examples=300, deadline=None)
@given(size=st.integers(0, 5000), block=st.integers(1, 700), offset=st.integers(0, 6000), length=st.integers(0, 3000))
def test_block_reads_match_bytes(size, block, offset, length):
    data = make_file(size)
    cache = BlockCache(max_bytes=4096, block_size=block, ttl=60)
    got = cache.read(("f", size), size, offset, length, CountingFetcher(data))
    assert got == data[offset:offset + length]


def test_blocks_fetched_once_and_only_the_needed_ones():
    data = make_file(10_000)
    fetch = CountingFetcher(data)
    cache = BlockCache(max_bytes=1 << 20, block_size=1000, ttl=60)
    assert cache.read("f", 10_000, 2500, 100, fetch) == data[2500:2600]
    assert fetch.calls == [(2000, 3000)]
    cache.read("f", 10_000, 2000, 1000, fetch)
    assert fetch.calls == [(2000, 3000)]
    assert cache.read("f", 10_000, 9500, 5000, fetch) == data[9500:]
    assert fetch.calls[-1] == (9000, 10_000)


def test_new_version_key_never_mixes_bytes():
    old, new = b"a" * 3000, b"b" * 3000
    cache = BlockCache(max_bytes=1 << 20, block_size=1000, ttl=60)
    cache.read(("f", 3000, 1.0), 3000, 0, 1000, CountingFetcher(old))
    assert cache.read(("f", 3000, 2.0), 3000, 0, 3000, CountingFetcher(new)) == new


def test_short_fetch_is_an_error_not_short_bytes():
    cache = BlockCache(max_bytes=1 << 20, block_size=1000, ttl=60)
    with pytest.raises(RuntimeError, match=r"^fetch of blocks 0..0 ended 1 blocks short$"):
        cache.read("f", 3000, 0, 10, lambda a, b, write: write(b"short"))


def test_view_of_one_block_is_the_cached_block_itself():
    data = make_file(3 * 300_000)
    cache = BlockCache(max_bytes=1 << 22, block_size=300_000, ttl=60)
    fetch = CountingFetcher(data)
    first = cache.view("f", len(data), 1000, 5000, fetch)
    again = cache.view("f", len(data), 2000, 100, fetch)
    assert first == data[1000:6000] and again == data[2000:2100]
    assert first.obj is again.obj  # no copy: both are views of one cached block
    across = cache.view("f", len(data), 299_000, 302_000, fetch)  # three blocks: joined once
    assert across == data[299_000:601_000] and not across.readonly
    assert len(fetch.calls) == 3


def test_blocks_of_a_mapped_size_are_memory_maps_and_small_ones_bytearrays():
    import mmap

    from desfs.cache import MAPPED_MIN

    data = make_file(MAPPED_MIN + 10)
    cache = BlockCache(max_bytes=1 << 22, block_size=MAPPED_MIN, ttl=60)
    assert isinstance(cache.view("f", len(data), 0, 1, CountingFetcher(data)).obj, mmap.mmap)
    assert isinstance(cache.view("f", len(data), MAPPED_MIN, 1, CountingFetcher(data)).obj, bytearray)  # 10-byte tail
    assert cache.read("f", len(data), MAPPED_MIN - 5, 15, CountingFetcher(data)) == data[MAPPED_MIN - 5:]


def test_fetcher_delivering_too_much_is_an_error_and_stores_nothing():
    cache = BlockCache(max_bytes=1 << 20, block_size=1000, ttl=60)
    too_much = "fetcher delivered more bytes than the blocks asked for"
    with pytest.raises(RuntimeError, match=f"^{too_much}$"):
        cache.read("f", 3000, 0, 10, lambda a, b, write: write(b"x" * 1500))
    assert not has_block(cache, "f", 0)
    with pytest.raises(RuntimeError, match=f"^{too_much}$"):
        cache.fetch_run("f", 3000, 1, 2, lambda a, b, write: write(b"x" * 1500))


def test_spares_reuse_a_map_only_once_nothing_refers_to_it():
    from desfs.cache import MAPPED_MIN, Spares

    spares = Spares(4 * MAPPED_MIN)
    block = spares.take(MAPPED_MIN)
    first = id(block)
    view = memoryview(block)[10:20]  # a reader still copying from it
    spares.give(block)
    del block
    other = spares.take(MAPPED_MIN)
    assert id(other) != first and spares.reused == 0  # held by the view: new memory instead
    del view
    again = spares.take(MAPPED_MIN)
    assert id(again) == first and spares.reused == 1
    assert isinstance(spares.take(100), bytearray)  # small blocks are never maps


def test_evicted_blocks_lend_their_memory_within_the_budget():
    from desfs.cache import MAPPED_MIN

    data = make_file(40 * MAPPED_MIN)
    cache = BlockCache(max_bytes=32 * MAPPED_MIN, block_size=MAPPED_MIN, ttl=60)
    assert cache.blocks.max_size + cache.spares.max_bytes == 32 * MAPPED_MIN
    for i in range(40):
        assert cache.read("f", len(data), i * MAPPED_MIN, MAPPED_MIN, CountingFetcher(data)) == \
            data[i * MAPPED_MIN:(i + 1) * MAPPED_MIN]
    assert cache.spares.reused > 0
    assert cache.blocks.current_size + cache.spares.spare_bytes <= 32 * MAPPED_MIN


def test_peek_and_put():
    cache = LoadingCache(100, ttl=60)
    assert cache.peek("k") is None
    cache.put("k", 5)
    assert cache.peek("k") == 5 and cache.get("k", lambda: 6) == 5


def test_fetch_run_fetches_only_the_blocks_asked_for_and_stops_at_the_end_of_the_file():
    data = make_file(2500)
    fetch = CountingFetcher(data)
    cache = BlockCache(max_bytes=1 << 20, block_size=1000, ttl=60)
    assert cache.fetch_run("f", 2500, 1, 2, fetch) == 1
    assert fetch.calls == [(1000, 2000)] and not has_block(cache, "f", 0)
    assert cache.fetch_run("f", 2500, 0, 10, fetch) == 2  # block 1 is cached; past the end there is none
    assert fetch.calls[1:] == [(0, 1000), (2000, 2500)]
    assert cache.read("f", 2500, 0, 2500, fetch) == data and len(fetch.calls) == 3


def test_discard_file_drops_the_blocks_of_matching_files_only():
    data = make_file(3000)
    cache = BlockCache(max_bytes=1 << 20, block_size=1000, ttl=60)
    for key in (("a", 1), ("b", 1)):
        cache.read(key, 3000, 0, 3000, CountingFetcher(data))
    assert cache.discard_file(lambda k: k[0] == "a") == 3
    assert not any(has_block(cache, ("a", 1), i) for i in range(3))
    assert all(has_block(cache, ("b", 1), i) for i in range(3))


def test_spares_keep_the_newest_maps_within_their_budget():
    import mmap

    from desfs.cache import MAPPED_MIN as M, Spares

    spares = Spares(2 * M)
    spares.give(bytearray(M))  # only maps are kept: a bytearray is not reused
    spares.give(mmap.mmap(-1, 3 * M))  # larger than the whole budget
    assert spares.spare_bytes == 0
    ids = []
    for n in range(3):
        block = mmap.mmap(-1, M)
        ids.append(id(block))
        spares.give(block)
        del block
        assert spares.spare_bytes == min(n + 1, 2) * M  # the third pushes the oldest out
    taken = [spares.take(M), spares.take(M)]
    assert [id(b) for b in taken] == [ids[2], ids[1]] and spares.reused == 2 and spares.spare_bytes == 0
    one = Spares(M)
    one.give(mmap.mmap(-1, M))  # exactly the budget
    assert one.spare_bytes == M


def test_spares_of_mixed_sizes_push_out_the_oldest_until_the_new_one_fits():
    import mmap

    from desfs.cache import MAPPED_MIN as M, Spares

    spares = Spares(3 * M)
    for size in (2 * M, M, 2 * M):  # the third pushes out the first only: the second stays
        spares.give(mmap.mmap(-1, size))
    assert spares.spare_bytes == 3 * M
    spares.take(M)
    assert spares.reused == 1 and spares.spare_bytes == 2 * M


def test_a_run_fetched_short_keeps_the_blocks_delivered_and_says_how_many_are_missing():
    cache = BlockCache(max_bytes=1 << 20, block_size=1000, ttl=60)
    with pytest.raises(RuntimeError) as info:
        cache.fetch_run("f", 3000, 0, 3, lambda a, b, write: write(b"x" * 2500))
    assert str(info.value) == "fetch of blocks 0..2 ended 1 blocks short"
    assert has_block(cache, "f", 0) and has_block(cache, "f", 1) and not has_block(cache, "f", 2)


def test_a_failed_run_releases_every_block_it_claimed_and_its_waiters_get_the_error():
    data = make_file(5000)
    cache = BlockCache(max_bytes=1 << 20, block_size=1000, ttl=60)
    cache.read("f", 5000, 1000, 10, CountingFetcher(data))  # block 1 cached: the run splits in [0] and [2, 3, 4]
    started, release = threading.Event(), threading.Event()

    def failing(start, stop, write):
        started.set()
        release.wait(5)
        raise OSError(5, "gone")

    errors, outcome = [], []

    def run():
        try:
            cache.fetch_run("f", 5000, 0, 5, failing)
        except OSError as exc:
            errors.append(exc.errno)

    def reader():
        try:
            outcome.append(cache.read("f", 5000, 3000, 10, CountingFetcher(data)))
        except OSError as exc:
            outcome.append(exc.errno)

    runner = threading.Thread(target=run)
    runner.start()
    assert started.wait(5)
    waiter = threading.Thread(target=reader)
    began = time.monotonic()
    waiter.start()
    time.sleep(0.2)  # the reader now waits for block 3, claimed by the run
    release.set()
    runner.join(5)
    waiter.join(5)
    assert time.monotonic() - began < 5
    assert errors == [5] and outcome == [5]
    assert all(cache.blocks.claim(("f", i)) for i in (0, 2, 3, 4))  # none left claimed by the failed run


@pytest.mark.parametrize("block_size", [0, -1000])
def test_a_block_size_must_be_positive(block_size):
    with pytest.raises(ValueError, match="^block_size must be positive$"):
        BlockCache(max_bytes=1 << 20, block_size=block_size, ttl=60)


def test_the_spares_budget_comes_out_of_the_cache_size_for_mapped_blocks_only():
    from desfs.cache import MAPPED_MIN

    small = BlockCache(max_bytes=1 << 20, block_size=MAPPED_MIN - 1, ttl=60)
    assert small.spares.max_bytes == 0 and small.blocks.max_size == 1 << 20
    odd = 64 * 1024 * 1024 + 5
    mapped = BlockCache(max_bytes=odd, block_size=MAPPED_MIN, ttl=60)
    assert mapped.spares.max_bytes == odd // 16 == 4 * 1024 * 1024 and type(mapped.spares.max_bytes) is int
    assert mapped.blocks.max_size == odd - odd // 16
    assert BlockCache(max_bytes=1 << 30, block_size=1 << 20, ttl=60).spares.max_bytes == BlockCache.SPARES_MAX


def test_blocks_expire_by_the_timer_given():
    clock = Clock()
    data = make_file(3000)
    fetch = CountingFetcher(data)
    cache = BlockCache(max_bytes=1 << 20, block_size=1000, ttl=10, timer=clock)
    cache.read("f", 3000, 0, 10, fetch)
    clock.now += 9.9
    assert has_block(cache, "f", 0)
    clock.now += 0.2
    assert not has_block(cache, "f", 0)
    assert cache.read("f", 3000, 0, 10, fetch) == data[:10] and len(fetch.calls) == 2


def test_spares_look_past_a_map_still_held_for_an_older_free_one():
    import mmap

    from desfs.cache import MAPPED_MIN as M, Spares

    spares = Spares(4 * M)
    older, newer = mmap.mmap(-1, M), mmap.mmap(-1, M)
    first = id(older)
    spares.give(older)
    spares.give(newer)
    del older
    held = memoryview(newer)  # a reader still copies from the newer one
    assert id(spares.take(M)) == first and spares.reused == 1
    del held


def test_expired_blocks_lend_their_memory_too():
    from desfs.cache import MAPPED_MIN

    clock = Clock()
    data = make_file(2 * MAPPED_MIN)
    cache = BlockCache(max_bytes=64 * MAPPED_MIN, block_size=MAPPED_MIN, ttl=10, timer=clock)
    cache.read("f", len(data), 0, len(data), CountingFetcher(data))
    assert cache.spares.spare_bytes == 0
    clock.now += 11
    assert cache.blocks.current_size == 0  # expired
    assert cache.spares.spare_bytes == 2 * MAPPED_MIN


# -- small reads: pieces of PIECE bytes instead of whole blocks (BlockCache.view(small=True)) --

@settings(max_examples=200, deadline=None)
@given(offset=st.integers(0, 9000), length=st.integers(0, 4000), cached=st.sets(st.integers(0, 9), max_size=4))
def test_small_reads_match_bytes_with_blocks_and_pieces_mixed(offset, length, cached):
    from desfs import cache as cache_module

    data = make_file(10_000)
    cache = BlockCache(max_bytes=1 << 20, block_size=1000, ttl=60)
    cache.piece = 300  # (the module's PIECE is 64 KiB: the same code, with a size the test can cross)
    fetch = CountingFetcher(data)
    for b in cached:  # some whole blocks cached already: used as they are
        cache.read("f", 10_000, b * 1000, 1, fetch)
    before = len(fetch.calls)
    assert bytes(cache.view("f", 10_000, offset, length, fetch, small=True)) == data[offset:offset + length]
    for start, stop in fetch.calls[before:]:  # only pieces fetched, none inside a cached block
        assert start % 300 == 0 and (stop % 300 == 0 or stop == 10_000)
        assert not any(start < (b + 1) * 1000 and b * 1000 < stop and (start >= b * 1000 and stop <= (b + 1) * 1000)
                       for b in cached)
    assert cache_module.PIECE == 64 * 1024


def test_a_small_read_fetches_only_the_pieces_it_touches_in_one_request_and_once():
    data = make_file(10_000)
    fetch = CountingFetcher(data)
    cache = BlockCache(max_bytes=1 << 20, block_size=4000, ttl=60)
    cache.piece = 500
    assert bytes(cache.view("f", 10_000, 1400, 700, fetch, small=True)) == data[1400:2100]
    assert fetch.calls == [(1000, 2500)]  # pieces 2..4: one request
    assert bytes(cache.view("f", 10_000, 1000, 1500, fetch, small=True)) == data[1000:2500]
    assert fetch.calls == [(1000, 2500)]  # cached pieces
    assert bytes(cache.view("f", 10_000, 9900, 500, fetch, small=True)) == data[9900:]
    assert fetch.calls[-1] == (9500, 10_000)  # the last piece stops at the end of the file
    assert cache.read("f", 10_000, 1400, 700, fetch) == data[1400:2100]  # a sequential read: the whole block
    assert fetch.calls[-1] == (0, 4000)
    assert has_block(cache, "f", 0)


def test_small_reads_with_a_piece_as_large_as_the_block_read_blocks():
    data = make_file(5000)
    fetch = CountingFetcher(data)
    cache = BlockCache(max_bytes=1 << 20, block_size=1000, ttl=60)
    cache.piece = 1000
    assert bytes(cache.view("f", 5000, 1500, 10, fetch, small=True)) == data[1500:1510]
    assert fetch.calls == [(1000, 2000)] and has_block(cache, "f", 1)


def test_a_failed_small_read_raises_and_caches_nothing():
    data = make_file(10_000)
    cache = BlockCache(max_bytes=1 << 20, block_size=4000, ttl=60)
    cache.piece = 500

    def failing(start, stop, write):
        write(data[start:start + 600])  # one piece in, then the connection breaks
        raise OSError(5, "injected")

    with pytest.raises(OSError):
        cache.view("f", 10_000, 0, 1500, failing, small=True)
    fetch = CountingFetcher(data)
    assert bytes(cache.view("f", 10_000, 0, 1500, fetch, small=True)) == data[:1500]
    assert fetch.calls == [(500, 1500)]  # the piece delivered before the failure was kept, the others fetched


def test_many_threads_reading_the_same_pieces_fetch_each_once():
    data = make_file(100_000)
    fetch = CountingFetcher(data)
    cache = BlockCache(max_bytes=1 << 20, block_size=10_000, ttl=60)
    cache.piece = 1000
    wrong = []

    def reader(seed):
        import random

        rnd = random.Random(seed)
        for _ in range(200):
            off = rnd.randrange(100_000)
            if bytes(cache.view("f", 100_000, off, 1500, fetch, small=True)) != data[off:off + 1500]:
                wrong.append(off)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not wrong
    fetched = sorted(n for start, stop in fetch.calls for n in range(start // 1000, -(-stop // 1000)))
    assert fetched == sorted(set(fetched))  # no piece fetched twice


def test_the_piece_is_PIECE_or_the_block_when_smaller():
    from desfs.cache import PIECE

    assert BlockCache(1 << 20, 1 << 20, ttl=60).piece == PIECE
    assert BlockCache(1 << 20, 1000, ttl=60).piece == 1000


def test_small_reads_count_misses_and_hits():
    from desfs.stats import COUNTERS

    data = make_file(10_000)
    cache = BlockCache(max_bytes=1 << 20, block_size=4000, ttl=60)
    cache.piece = 500
    fetch = CountingFetcher(data)
    cache.read("f", 10_000, 0, 4000, fetch)  # block 0 whole
    counts = [COUNTERS.snapshot()]
    cache.view("f", 10_000, 4100, 10, fetch, small=True)  # a piece: a miss
    counts.append(COUNTERS.snapshot())
    cache.view("f", 10_000, 100, 10, fetch, small=True)  # in the cached block: a hit
    counts.append(COUNTERS.snapshot())
    steps = [(b.get("block_misses", 0) - a.get("block_misses", 0), b.get("block_hits", 0) - a.get("block_hits", 0))
             for a, b in zip(counts, counts[1:], strict=False)]
    assert steps == [(1, 0), (0, 1)]  # (misses, hits) of each read


def test_a_small_read_inside_one_block_or_piece_is_a_view_of_it_not_a_copy():
    data = make_file(10_000)
    cache = BlockCache(max_bytes=1 << 20, block_size=4000, ttl=60)
    cache.piece = 500
    fetch = CountingFetcher(data)
    block = cache.blocks.get(("f", 0, 4000), lambda: bytearray(data[:4000]))
    assert cache.view("f", 10_000, 100, 10, fetch, small=True).obj is block
    view = cache.view("f", 10_000, 4100, 10, fetch, small=True)
    assert view.obj is cache.blocks.peek(("f", 8, 500)) and bytes(view) == data[4100:4110]
