"""The readahead layer on its own: fake fetchers, no server, no FUSE."""

import math
import random
import threading
import time

from hypothesis import given, settings, strategies as st

from conftest import has_block
from desfs.cache import BlockCache
from desfs.readahead import Prefetcher, ReadStream, staggered

KiB, MiB = 1024, 1024 * 1024


class Fetcher:
    def __init__(self, data, delay=0.0, fail_every=0):
        self.data, self.delay, self.fail_every = data, delay, fail_every
        self.calls = []
        self.lock = threading.Lock()

    def __call__(self, start, stop, write):
        with self.lock:
            self.calls.append((start, stop))
            n = len(self.calls)
        if self.fail_every and n % self.fail_every == 0:
            raise OSError(5, "injected")
        time.sleep(self.delay)
        for i in range(start, stop, 64 * KiB):
            write(self.data[i:min(stop, i + 64 * KiB)])

    def fetched(self):
        return sum(b - a for a, b in self.calls)


def make(size, block=256 * KiB, max_window=4 * MiB, workers=4, cache=64 * MiB, min_window=None, **kw):
    data = random.Random(size).randbytes(size)
    fetch = Fetcher(data, **kw)
    blocks = BlockCache(cache, block, ttl=60)
    pre = Prefetcher(blocks, workers)
    stream = ReadStream(blocks, pre, ("f", size), size, fetch, min_window=min_window or block, max_window=max_window)
    return data, fetch, stream, pre


def test_sequential_read_is_prefetched_in_parallel_parts_without_duplicates():
    size = 16 * MiB + 123
    data, fetch, stream, pre = make(size, delay=0.01)
    out = bytearray()
    for off in range(0, size, 128 * KiB):
        out += stream.read(off, 128 * KiB)
    pre.close()
    assert bytes(out) == data
    assert fetch.fetched() == size  # every byte fetched once
    assert max(b - a for a, b in fetch.calls) > 256 * KiB  # parts of several blocks
    assert stream.window == 4 * MiB  # grew to the cap


def test_random_reads_fetch_only_what_they_touch():
    size = 32 * MiB
    data, fetch, stream, pre = make(size)
    rng = random.Random(1)
    for _ in range(50):
        off = rng.randrange(size - 1000)
        assert stream.read(off, 1000) == data[off:off + 1000]
    pre.close()
    assert stream.window == 0
    assert fetch.fetched() <= 50 * 2 * 256 * KiB


def test_header_read_then_far_seek_resets_the_window():
    size = 64 * MiB
    data, fetch, stream, pre = make(size)
    for off in range(0, 4 * MiB, 128 * KiB):
        stream.read(off, 128 * KiB)
    assert stream.window > 0
    assert stream.read(40 * MiB, 2880) == data[40 * MiB:40 * MiB + 2880]
    assert stream.window == 0
    pre.close()


def test_out_of_order_reads_within_the_window_stay_sequential():
    size = 16 * MiB
    data, fetch, stream, pre = make(size)
    offsets = list(range(0, 8 * MiB, 128 * KiB))
    for i in range(0, len(offsets) - 1, 2):  # pairs swapped, as parallel kernel readahead arrives
        for off in (offsets[i + 1], offsets[i]):
            assert stream.read(off, 128 * KiB) == data[off:off + 128 * KiB]
    assert stream.window > 0
    pre.close()


def test_failing_prefetch_never_gives_wrong_bytes():
    size = 8 * MiB
    data, fetch, stream, pre = make(size, fail_every=3)
    out, errors = bytearray(), 0
    for off in range(0, size, 128 * KiB):
        for _ in range(5):  # a reader that retries a failed read
            try:
                out += stream.read(off, 128 * KiB)
                break
            except OSError:
                errors += 1
    pre.close()
    assert bytes(out) == data and errors > 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3 * MiB), st.integers(1, 400 * KiB)), min_size=1, max_size=40),
       st.booleans())
def test_any_read_pattern_gives_the_right_bytes(reads, sequentialize):
    size = 3 * MiB + 777
    data, fetch, stream, pre = make(size, block=64 * KiB, max_window=1 * MiB, cache=2 * MiB)
    pos = 0
    for off, length in reads:
        if sequentialize:
            off, pos = pos, pos + length
        assert stream.read(off, length) == data[off:off + length]
    pre.close()


def test_many_threads_and_streams_under_a_small_cache():
    size = 8 * MiB
    data = random.Random(3).randbytes(size)
    fetch = Fetcher(data)
    blocks = BlockCache(2 * MiB, 128 * KiB, ttl=60)  # far smaller than what is read: constant eviction
    pre = Prefetcher(blocks, 4)
    errors = []

    def reader(seed):
        rng = random.Random(seed)
        stream = ReadStream(blocks, pre, ("f", size), size, fetch, 128 * KiB, 512 * KiB)
        off = rng.randrange(size)
        for _ in range(60):
            if rng.random() < 0.2:
                off = rng.randrange(size)
            n = rng.randrange(1, 200 * KiB)
            if stream.read(off, n) != data[off:off + n]:
                errors.append((seed, off, n))
            off = min(size - 1, off + n)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    pre.close()
    assert errors == []
    assert blocks.blocks.current_size <= 2 * MiB


def test_a_reader_that_overtakes_readahead_gets_more_fetches_at_once():
    size = 16 * MiB
    data = random.Random(5).randbytes(size)
    fetch = Fetcher(data, delay=0.02)
    blocks = BlockCache(64 * MiB, 256 * KiB, ttl=60)
    pre = Prefetcher(blocks, 4, target_rate=1)  # the measured rate alone would never ask for more than 1
    stream = ReadStream(blocks, pre, ("f", size), size, fetch, min_window=256 * KiB, max_window=4 * MiB)
    seen = []
    out = bytearray()
    for off in range(0, size, 128 * KiB):
        out += stream.read(off, 128 * KiB)
        seen.append(pre.limit)
    pre.close()
    assert bytes(out) == data
    assert max(seen) > 1


def test_a_reader_slower_than_readahead_never_overtakes_it():
    size = 8 * MiB
    data = random.Random(6).randbytes(size)
    blocks = BlockCache(64 * MiB, 256 * KiB, ttl=60)
    pre = Prefetcher(blocks, 4, target_rate=1)
    stream = ReadStream(blocks, pre, ("f", size), size, Fetcher(data), min_window=256 * KiB, max_window=4 * MiB)
    seen = []
    for off in range(0, size, 128 * KiB):
        stream.read(off, 128 * KiB)
        seen.append(pre.limit)
        time.sleep(0.005)  # ~25 MB/s: the (instant) fetches stay ahead
    pre.close()
    assert set(seen) == {1}


def test_a_file_read_through_stays_in_the_block_cache():
    """Re-reads must not depend on the kernel's page cache alone: machines reclaim it (this one
    within seconds, with DAMON). A sequential read longer than the window keeps its blocks too."""
    size = 24 * MiB
    data, fetch, stream, pre = make(size, max_window=4 * MiB, cache=64 * MiB)
    for off in range(0, size, 128 * KiB):
        stream.read(off, 128 * KiB)
    pre.close()
    bs = stream.blocks.block_size
    assert all(has_block(stream.blocks, stream.key, i) for i in range(size // bs))
    assert fetch.fetched() == size


def test_the_rate_of_a_lone_fetch_sets_how_many_fetches_run_at_once():
    pre = Prefetcher(BlockCache(MiB, 64 * KiB, ttl=60), 4, target_rate=200e6)
    assert (pre.workers, pre.limit) == (4, 1)
    pre.overtaken()
    assert pre.limit == 1  # no rate measured yet: overtaking alone opens nothing
    for rate, limit in ((200e6, 1), (100e6, 2), (99e6, 3), (66e6, 4), (1e3, 4), (400e6, 1), (201e6, 1)):
        pre._adapt(rate)
        assert pre.limit == limit, rate
    for limit in (2, 3, 4, 4):  # a reader that overtakes: one more each time, up to the workers
        pre.overtaken()
        assert pre.limit == limit
    pre.close()
    assert Prefetcher(BlockCache(MiB, 64 * KiB, ttl=60), 0).workers == 1


def test_prefetcher_fetches_the_blocks_asked_for_and_nothing_once_closed():
    size = 1 * MiB
    data = random.Random(9).randbytes(size)
    fetch = Fetcher(data)
    blocks = BlockCache(4 * MiB, 64 * KiB, ttl=60)
    pre = Prefetcher(blocks, 2)
    pre.submit("f", size, 3, 3, fetch)  # an empty run
    pre.submit("f", size, 2, 5, fetch)
    deadline = time.monotonic() + 10
    while not all(has_block(blocks, "f", i) for i in (2, 3, 4)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fetch.calls == [(2 * 64 * KiB, 5 * 64 * KiB)]
    pre.close()
    pre.submit("f", size, 6, 8, fetch)
    time.sleep(0.1)  # nothing may happen: there is nothing to wait for
    assert len(fetch.calls) == 1 and not has_block(blocks, "f", 6)


def test_a_lone_slow_fetch_opens_parallel_fetches():
    size = 4 * MiB
    data = random.Random(10).randbytes(size)
    blocks = BlockCache(16 * MiB, 256 * KiB, ttl=60)
    pre = Prefetcher(blocks, 4, target_rate=200e6)
    pre.submit("f", size, 0, 2, Fetcher(data, delay=0.05))  # 512 KiB in over 50 ms: ~10 MB/s
    deadline = time.monotonic() + 10
    while pre.limit == 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pre.limit == 4
    pre.close()


def test_the_window_opens_once_a_run_passes_START_AFTER_min_windows_and_doubles_up_to_the_cap():
    from desfs.readahead import START_AFTER

    size = 64 * MiB
    data, fetch, stream, pre = make(size, block=256 * KiB, max_window=8 * MiB)
    pre.rated = True  # one fetch at once on a fast link: the window is the run's
    windows = []
    for off in range(0, 16 * MiB, 256 * KiB):
        stream.read(off, 256 * KiB)
        windows.append(stream.window)
    pre.close()
    assert START_AFTER == 2
    assert windows[:2] == [0, 0] and windows[2] == 768 * KiB  # 3 reads of 256 KiB: more than 2 min_windows
    assert windows[7] == 2 * MiB and windows[15] == 4 * MiB and windows[31] == 8 * MiB and windows[-1] == 8 * MiB


def test_readahead_parts_share_the_window_among_the_fetches_allowed():
    size = 64 * MiB
    data, fetch, stream, pre = make(size, block=256 * KiB, max_window=16 * MiB)
    stream.window = 16 * MiB
    assert stream._part_bytes() == 256 * KiB  # one block a request until a lone fetch rated the link
    pre.rated = True
    assert stream._part_bytes() == 8 * 256 * KiB  # at most 8 blocks a request
    pre.limit = 4
    assert stream._part_bytes() == 8 * 256 * KiB
    pre.limit, stream.window = 4, 4 * MiB
    assert stream._part_bytes() == 4 * 256 * KiB
    stream.window = 512 * KiB
    assert stream._part_bytes() == 256 * KiB  # at least one block
    pre.close()


class ThreadFetcher(Fetcher):
    """Records, with each fetch, whether one of readahead's threads made it."""

    def __call__(self, start, stop, write):
        with self.lock:
            self.calls.append((start, stop, threading.current_thread().name.startswith("desfs-readahead")))
        for i in range(start, stop, 64 * KiB):
            write(self.data[i:min(stop, i + 64 * KiB)])


def test_readahead_asks_in_whole_parts_up_to_the_end_of_the_file():
    size = 12 * MiB + 5 * 256 * KiB + 77  # (long enough for the window to reach its cap and stay there)
    data = random.Random(11).randbytes(size)
    fetch = ThreadFetcher(data)
    blocks = BlockCache(64 * MiB, 256 * KiB, ttl=60)
    pre = Prefetcher(blocks, 4, target_rate=1)
    stream = ReadStream(blocks, pre, ("f", size), size, fetch, min_window=256 * KiB, max_window=4 * MiB)
    for off in range(0, size, 128 * KiB):
        assert stream.read(off, 128 * KiB) == data[off:off + 128 * KiB]
        time.sleep(0.02)  # a reader far slower than readahead, even on a busy machine
    pre.close()
    own = [a // (256 * KiB) for a, b, ahead in fetch.calls if not ahead]
    ahead = [(a, b) for a, b, by_readahead in fetch.calls if by_readahead]
    # before the run passes START_AFTER min_windows, and (its fetch racing readahead's) the block being read
    # when it did; readahead fetched the rest
    assert own in ([0, 1], [0, 1, 2]), own
    # whole parts (half the window when one fetch at a time): the gap grows to one before it is asked for
    # (once the window is 4 blocks or more: half of a smaller one is a block)
    assert all(b - a >= 2 * 256 * KiB for a, b in ahead[:-1] if a >= 2 * MiB), ahead
    assert max(b - a for a, b in ahead) >= 8 * 256 * KiB, ahead
    assert ahead[-1][1] == size and sum(b - a for a, b in ahead) == size - len(own) * 256 * KiB


def test_the_fetches_at_once_are_logged_when_they_change(caplog):
    caplog.set_level("DEBUG", logger="desfs.readahead")
    pre = Prefetcher(BlockCache(MiB, 64 * KiB, ttl=60), 4, target_rate=200e6)
    pre._adapt(50e6)
    pre._adapt(50e6)  # no change, no line
    pre._adapt(1e9)
    pre.overtaken()
    pre.close()
    assert [r.getMessage() for r in caplog.records] == [
        "readahead: 50 MB/s per stream, 4 fetches at once",
        "readahead: 1000 MB/s per stream, 1 fetches at once",
        "readahead: overtaken by a reader, 2 fetches at once",
    ]


def test_only_a_read_of_what_readahead_asked_for_counts_as_overtaking_it():
    bs = 256 * KiB
    data, fetch, stream, pre = make(16 * MiB, block=bs, max_window=bs)  # a window of one block: none of
    pre._adapt(1e12)  # these reads continues a run, so none asks for readahead; a rate is known, wanting 1

    def state(start, high, requested, window=bs):
        stream._start, stream._high, stream._requested, stream.window = start, high, requested, window

    state(0, 4 * bs, 8 * bs)
    stream.read(8 * bs, 1000)  # just past what readahead asked for: the reader's own block
    assert pre.limit == 1
    state(0, 4 * bs, 8 * bs)
    stream.read(40 * bs, 1000)  # far away: a new run, nothing to do with readahead
    assert pre.limit == 1
    state(24 * bs, 28 * bs, 32 * bs)
    stream.read(24 * bs, 1000)  # the first byte readahead asked for, neither cached nor under way
    assert pre.limit == 2
    state(0, 0, 0, window=0)
    stream.read(50 * bs, 1000)
    assert pre.limit == 2 and [a // bs for a, b in fetch.calls] == [8, 40, 24, 50]
    pre.close()


def test_a_read_just_within_the_slack_continues_the_run():
    size = 16 * MiB
    data, fetch, stream, pre = make(size, block=256 * KiB)
    stream.read(0, 128 * KiB)
    stream.read(384 * KiB, 128 * KiB)  # one block (the slack) past the furthest read: still sequential
    assert stream._start == 0 and stream._high == 512 * KiB and stream.window == 0
    stream.read(512 * KiB + 256 * KiB + 1, 10)  # past the slack: a new run
    assert stream._start == 512 * KiB + 256 * KiB + 1
    pre.close()


def test_without_a_prefetcher_reads_are_plain():
    size = 8 * MiB
    data = random.Random(13).randbytes(size)
    fetch = Fetcher(data)
    blocks = BlockCache(16 * MiB, 256 * KiB, ttl=60)
    stream = ReadStream(blocks, None, ("f", size), size, fetch, min_window=256 * KiB, max_window=4 * MiB)
    for off in range(0, size, 128 * KiB):
        assert stream.read(off, 128 * KiB) == data[off:off + 128 * KiB]
    assert stream.window == 4 * MiB and fetch.calls == [(i, i + 256 * KiB) for i in range(0, size, 256 * KiB)]


def test_a_failed_readahead_is_logged_and_left_for_the_reader(caplog):
    caplog.set_level("DEBUG", logger="desfs.readahead")
    blocks = BlockCache(4 * MiB, 64 * KiB, ttl=60)
    pre = Prefetcher(blocks, 2)

    def failing(start, stop, write):
        raise OSError(5, "injected")

    pre.submit("f", MiB, 2, 5, failing)
    deadline = time.monotonic() + 10
    while not caplog.records and time.monotonic() < deadline:
        time.sleep(0.01)
    pre.close()
    assert [r.getMessage() for r in caplog.records] == ["readahead of blocks 2..4 of 'f' failed: [Errno 5] injected"]
    assert not any(has_block(blocks, "f", i) for i in range(2, 5)) and blocks.blocks.claim(("f", 3))


class GatedFetcher(Fetcher):
    """Fetches that wait for `gate` before delivering; `running` counts those under way."""

    def __init__(self, data):
        super().__init__(data)
        self.gate = threading.Event()
        self.running = 0

    def __call__(self, start, stop, write):
        with self.lock:
            self.calls.append((start, stop))
            self.running += 1
        self.gate.wait(5)
        for i in range(start, stop, 64 * KiB):
            write(self.data[i:min(stop, i + 64 * KiB)])


def wait_for(condition, seconds=10):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_fetches_that_overlapped_are_not_measured():
    data = random.Random(14).randbytes(MiB)
    fetch = GatedFetcher(data)
    blocks = BlockCache(4 * MiB, 64 * KiB, ttl=60)
    pre = Prefetcher(blocks, 4, target_rate=1e12)  # any measurement would ask for all 4
    assert Prefetcher(blocks, 1).target_rate == 200e6
    pre.limit = 2
    pre.submit("f", MiB, 0, 1, fetch)
    pre.submit("f", MiB, 1, 2, fetch)
    assert wait_for(lambda: fetch.running == 2)
    fetch.gate.set()
    assert wait_for(lambda: has_block(blocks, "f", 0) and has_block(blocks, "f", 1) and pre._active == 0)
    time.sleep(0.05)  # each fetch measures, or not, right after giving its slot back
    pre.close()
    assert pre.limit == 2 and not pre.rated


def test_the_rate_of_a_lone_fetch_is_bytes_over_seconds():
    data = random.Random(15).randbytes(MiB)
    blocks = BlockCache(4 * MiB, 256 * KiB, ttl=60)
    pre = Prefetcher(blocks, 8, target_rate=5e6)
    started = time.monotonic()
    pre.submit("f", MiB, 0, 1, Fetcher(data, delay=0.2))  # 256 KiB in 0.2 s and a little: 1.0 to 1.3 MB/s
    assert wait_for(lambda: pre.rated)
    took = time.monotonic() - started
    pre.close()
    assert 4 <= pre.limit <= math.ceil(5e6 / (256 * KiB / took))  # 5 MB/s wanted: 4 or 5 of them


def test_a_failed_lone_fetch_measures_nothing():
    blocks = BlockCache(4 * MiB, 64 * KiB, ttl=60)
    pre = Prefetcher(blocks, 4, target_rate=1e12)

    called = threading.Event()

    def failing(start, stop, write):
        called.set()
        raise OSError(5, "injected")

    pre.submit("f", MiB, 0, 2, failing)
    assert wait_for(lambda: called.is_set() and pre._active == 0)
    time.sleep(0.05)  # a fetch measures, or not, right after giving its slot back
    pre.close()
    assert pre.limit == 1 and not pre.rated


def test_close_returns_at_once_and_nothing_is_fetched_after_it():
    data = random.Random(16).randbytes(MiB)
    fetch = GatedFetcher(data)
    blocks = BlockCache(4 * MiB, 64 * KiB, ttl=60)
    pre = Prefetcher(blocks, 4)
    for i in range(4):  # one runs (the limit is 1), three wait for a slot
        pre.submit("f", MiB, i, i + 1, fetch)
    assert wait_for(lambda: fetch.running == 1)
    started = time.monotonic()
    pre.close()
    assert time.monotonic() - started < 1  # not waiting for the fetch under way
    fetch.gate.set()
    for t in list(pre._pool._threads):
        t.join(5)
    assert len(fetch.calls) == 1


def test_the_rate_is_logged_in_mb_per_second(caplog):
    caplog.set_level("DEBUG", logger="desfs.readahead")
    pre = Prefetcher(BlockCache(MiB, 64 * KiB, ttl=60), 4, target_rate=1e9)
    pre._adapt(250_500_100)
    pre.close()
    assert [r.getMessage() for r in caplog.records] == ["readahead: 251 MB/s per stream, 4 fetches at once"]


def test_the_first_read_starts_the_run_where_it_reads():
    data, fetch, stream, pre = make(16 * MiB, block=256 * KiB)
    stream.read(100 * KiB, 10)
    pre.close()
    assert (stream._start, stream._high) == (100 * KiB, 100 * KiB + 10)


def test_no_more_fetches_at_once_than_allowed():
    size = 4 * MiB
    data = random.Random(12).randbytes(size)
    fetch = GatedFetcher(data)
    blocks = BlockCache(16 * MiB, 256 * KiB, ttl=60)
    pre = Prefetcher(blocks, 4, target_rate=1)  # what a lone fetch measures never asks for more than 1
    pre.limit = 2
    for i in range(6):
        pre.submit("f", size, i, i + 1, fetch)
    assert wait_for(lambda: fetch.running == 2)
    time.sleep(0.2)  # a third fetch, were it let through, would have started by now
    assert fetch.running == 2
    fetch.gate.set()
    assert wait_for(lambda: all(has_block(blocks, "f", i) for i in range(6)))
    pre.close()
    assert len(fetch.calls) == 6


def submitted_parts(blocks_in_file, window, ranges, limit=None, bs=256 * KiB):
    """The requests (in blocks, sorted) that `_submit` makes for each of `ranges` (in blocks) in turn, with a
    rated link, `window` blocks and `limit` fetches allowed at once (None: one, the fetches' own rate)."""
    size = blocks_in_file * bs
    fetch = GatedFetcher(random.Random(17).randbytes(size))
    fetch.gate.set()
    blocks = BlockCache(64 * MiB, bs, ttl=60)
    pre = Prefetcher(blocks, 4, target_rate=1 if limit is None else 1e12)  # (1e12: a lone fetch keeps the 4)
    stream = ReadStream(blocks, pre, ("f", size), size, fetch, min_window=bs, max_window=16 * MiB)
    pre.rated, pre.limit, stream.window = True, limit or 1, window * bs
    for first, last in ranges:
        stream._submit(first * bs, last * bs)
        assert wait_for(lambda: all(has_block(blocks, ("f", size), i) for i in range(first, last)))  # noqa: B023
    pre.close()
    return sorted((a // bs, b // bs) for a, b in fetch.calls)


def test_a_range_is_split_into_whole_parts_one_request_each():
    # parts of 4 blocks (one fetch allowed at once: two parts a window)
    assert submitted_parts(64, 8, [(0, 12)]) == [(0, 4), (4, 8), (8, 12)]


def shared_link_ends(sizes):
    """When each of `sizes` (started together, sharing a link of one unit a second evenly) ends."""
    left, now, ends = dict(enumerate(map(float, sizes))), 0.0, [0.0] * len(sizes)
    while left:
        step = min(left.values())
        now += step * len(left)
        for i in list(left):
            left[i] -= step
            if left[i] <= 1e-9:
                ends[i] = now
                del left[i]
    return ends


def test_staggered_parts_cover_the_range_and_end_one_after_another_on_a_shared_link():
    for blocks, count in ((64, 8), (128, 16), (16, 4), (5, 2), (3, 8), (1, 1)):
        parts = staggered(10, 10 + blocks, count)
        sizes = [b - a for a, b in parts]
        assert parts[0][0] == 10 and parts[-1][1] == 10 + blocks
        assert all(p[1] == q[0] for p, q in zip(parts, parts[1:], strict=False))  # one after another, no gap
        assert len(parts) == min(count, blocks) and min(sizes) >= 1 and sizes == sorted(sizes), (blocks, count, sizes)
    ends = shared_link_ends([b - a for a, b in staggered(0, 64, 8)])
    assert all(abs(end - 8 * k) <= 4 for k, end in enumerate(ends, 1)), ends  # about every 8 s, first part first
    assert shared_link_ends([8] * 8) == [64.0] * 8  # (equal parts: all at the end)


@settings(max_examples=300, deadline=None)
@given(count=st.integers(2, 32), extra=st.integers(0, 256))
def test_staggered_runs_never_shrink_from_one_to_the_next(count, extra):
    """staggered's promise: over a shared link the runs end one after another, the first run first; that
    takes every run at least as long as the one before (rounding each end on its own once gave
    staggered(0, 29, 12) -> sizes [1, 1, 1, 1, 1, 1, 1, 2, 4, 3, 6, 7]: the 9th run ending after the 10th)."""
    blocks = count + extra
    sizes = [b - a for a, b in staggered(0, blocks, count)]
    assert sizes == sorted(sizes), (blocks, count, sizes)


def test_staggered_is_linear_in_its_count():
    """count is the window over the part size (at most 8 blocks), so --block-size 4K with --readahead 1G
    --cache-size 4G could ask for 32768 parts at once, in a FUSE read thread with the GIL held: a running
    sum takes milliseconds (summing 1..k terms for every run k took ~10 s for 20000)."""
    began = time.monotonic()
    parts = staggered(0, 8 * 20000, 20000)
    elapsed = time.monotonic() - began
    assert len(parts) == 20000 and parts[-1][1] == 8 * 20000
    assert elapsed < 2.0, f"{elapsed:.1f} s for 20000 parts"


def test_staggered_of_no_blocks_is_no_runs():
    """(_submit only calls it with more blocks than a part.) No run outside the range."""
    assert staggered(5, 5, 1) == []
    assert staggered(5, 5, 4) == []


def test_several_parts_asked_for_at_once_are_staggered_when_fetches_run_in_parallel():
    # parts of 4 blocks: the window shared among the 4 fetches allowed
    assert submitted_parts(64, 16, [(0, 16)], limit=4) == staggered(0, 16, 4) == [(0, 1), (1, 3), (3, 8), (8, 16)]
    # more parts than fetches allowed: not all run at once, so equal parts (staggered, the last ones would be long)
    assert submitted_parts(128, 64, [(0, 40)], limit=4) == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 40)]


def test_parts_shrink_near_the_end_of_the_file_so_that_the_last_ones_end_together():
    # parts of 8 blocks far from the end; 12 and 4 blocks left: parts of 3 (staggered) and 1
    assert submitted_parts(64, 64, [(0, 8), (52, 56), (60, 64)], limit=4) == \
        [(0, 8), (52, 53), (53, 56), (60, 61), (61, 62), (62, 63), (63, 64)]


def test_an_empty_read_at_the_start_then_one_within_the_slack_are_one_run():
    data, fetch, stream, pre = make(16 * MiB, block=256 * KiB)
    stream.read(0, 0)
    stream.read(100 * KiB, 10)
    pre.close()
    assert (stream._start, stream._high) == (0, 100 * KiB + 10)


def test_a_read_that_jumped_inside_the_file_fetches_pieces_until_its_run_passes_SMALL_RUN():
    from desfs.cache import PIECE
    from desfs.readahead import SMALL_RUN

    size = 16 * MiB
    data, fetch, stream, pre = make(size, block=1 * MiB)
    assert (PIECE, SMALL_RUN) == (64 * KiB, 256 * KiB)
    off = 5 * MiB + 3000  # a jump: pieces, about what was asked
    assert stream.read(off, 64 * KiB) == data[off:off + 64 * KiB]
    assert fetch.calls == [(5 * MiB, 5 * MiB + 128 * KiB)]  # two pieces (the read crosses one edge), one request
    for pos in range(off + 64 * KiB, off + 256 * KiB, 64 * KiB):  # the run continues: pieces up to SMALL_RUN
        assert stream.read(pos, 64 * KiB) == data[pos:pos + 64 * KiB]
    assert all(b - a <= 128 * KiB for a, b in fetch.calls)
    pos = off + 256 * KiB  # past SMALL_RUN: whole blocks
    assert stream.read(pos, 64 * KiB) == data[pos:pos + 64 * KiB]
    assert fetch.calls[-1] == (5 * MiB, 6 * MiB)
    pre.close()


def test_reads_that_hop_forward_by_less_than_a_block_stay_small_and_set_off_no_readahead():
    """An HDF5 reader's pattern: a chunk index node, then a chunk a little further on, and so on. Their span
    passes SMALL_RUN and START_AFTER min_windows, what they read does not: pieces, no readahead."""
    size = 64 * MiB
    data, fetch, stream, pre = make(size, block=1 * MiB)
    pre.rated = True
    for pos in range(5 * MiB + 3000, 9 * MiB, 700 * KiB):  # 6 reads of 16 KiB, each 700 KiB after the last
        assert stream.read(pos, 16 * KiB) == data[pos:pos + 16 * KiB]
    assert stream._high - stream._start > 3 * MiB and stream.window == 0
    pre.close()
    assert len(fetch.calls) == 6 and all(b - a <= 128 * KiB for a, b in fetch.calls), fetch.calls


def test_rereading_the_same_bytes_is_not_a_sequential_run():
    """A reader that reads the same 64 KiB again and again (O_DIRECT, or anything the page cache does not
    absorb) covers 64 KiB: it is no sequential run (bytes read again count once): pieces, no readahead."""
    size = 64 * MiB
    data, fetch, stream, pre = make(size, block=1 * MiB, max_window=64 * MiB)
    pos = 5 * MiB + 3000
    try:
        for _ in range(40):
            assert stream.read(pos, 64 * KiB) == data[pos:pos + 64 * KiB]
        assert stream.window == 0 and stream._requested == 0, (stream.window, stream._requested)
        assert sum(b - a for a, b in fetch.calls) <= 128 * KiB, fetch.calls  # the pieces, once
    finally:
        pre.close()


def test_reading_backwards_within_a_large_block_sets_off_no_readahead():
    """With --block-size 4M the slack is 4 MiB, so a reader going backwards in 64 KiB reads stays in one run
    for 4 MiB; what it read passes START_AFTER min_windows (2 MiB), but readahead would fetch *forward* of
    the run's furthest read, where this reader never goes: its span (64 KiB) bounds what counts as read."""
    size = 64 * MiB
    data, fetch, stream, pre = make(size, block=4 * MiB, max_window=64 * MiB, min_window=1 * MiB)
    try:
        for pos in range(40 * MiB - 64 * KiB, 36 * MiB, -64 * KiB):
            assert stream.read(pos, 64 * KiB) == data[pos:pos + 64 * KiB]
        assert stream.window == 0 and stream._requested == 0, (stream.window, stream._requested)
    finally:
        pre.close()


def test_a_run_is_sequential_while_its_reads_cover_at_least_half_of_its_span():
    size = 64 * MiB
    data, fetch, stream, pre = make(size, block=1 * MiB)
    base = 5 * MiB + 3000  # reads of 64 KiB: a gap of 128 KiB after the first, then one every 128 KiB
    for pos in [base] + [base + 192 * KiB + 128 * KiB * i for i in range(4)]:
        assert stream.read(pos, 64 * KiB) == data[pos:pos + 64 * KiB]
    assert (stream._read, stream._high - stream._start) == (320 * KiB, 640 * KiB)
    assert not stream._small  # exactly half of the span read (and more than SMALL_RUN): sequential, whole blocks
    assert fetch.calls[-1] == (5 * MiB, 6 * MiB)
    for pos in range(30 * MiB, 31 * MiB, 160 * KiB):  # a new run, 64 KiB every 160 KiB: 40 % of its span
        assert stream.read(pos, 64 * KiB) == data[pos:pos + 64 * KiB]
    assert stream._read == 7 * 64 * KiB and stream._small  # more than SMALL_RUN read, but too sparse: pieces
    assert all(b - a <= 128 * KiB for a, b in fetch.calls if a >= 30 * MiB)
    pre.close()


def test_reads_from_the_start_of_a_file_fetch_whole_blocks():
    size = 16 * MiB
    data, fetch, stream, pre = make(size, block=1 * MiB)
    assert stream.read(0, 2880) == data[:2880]  # a header, a sequential reader: the file's first block
    assert fetch.calls == [(0, MiB)]
    pre.close()


def test_cold_random_reads_fetch_about_what_they_ask():
    size = 64 * MiB
    data, fetch, stream, pre = make(size, block=1 * MiB)
    rng = random.Random(3)
    for _ in range(40):
        off = rng.randrange(1, size - 64 * KiB)
        assert stream.read(off, 64 * KiB) == data[off:off + 64 * KiB]
    pre.close()
    big = [(a, b) for a, b in fetch.calls if b - a > 128 * KiB]
    assert len(fetch.calls) - len(big) <= 40, fetch.calls  # one request each (or none: a piece fetched before)
    assert len(big) <= 3, big  # (a read within a block of the one before continues its run: a whole block)
    assert fetch.fetched() <= 40 * 128 * KiB + 3 * MiB  # not 40 blocks of 1 MiB


def test_a_readers_own_lone_fetch_rates_the_link_before_readahead_starts():
    size = 16 * MiB
    data = random.Random(21).randbytes(size)
    blocks = BlockCache(64 * MiB, 256 * KiB, ttl=60)
    pre = Prefetcher(blocks, 8, target_rate=5e6)
    stream = ReadStream(blocks, pre, ("f", size), size, Fetcher(data, delay=0.2), min_window=256 * KiB,
                        max_window=4 * MiB)
    assert stream.read(0, 4096) == data[:4096]  # the reader's own fetch: 256 KiB in 0.2 s and a little
    assert stream.window == 0 and pre.rated and 4 <= pre.limit <= 5
    pre.close()


def test_own_fetches_that_overlapped_another_do_not_rate_the_link():
    size = 16 * MiB
    data = random.Random(22).randbytes(size)
    fetch = GatedFetcher(data)
    blocks = BlockCache(64 * MiB, 256 * KiB, ttl=60)
    pre = Prefetcher(blocks, 8, target_rate=1e12)
    own = pre.measured(fetch)
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(blocks.read("f", size, i * 256 * KiB, 10, own)))
               for i in range(2)]
    for t in threads:
        t.start()
    assert wait_for(lambda: fetch.running == 2)
    fetch.gate.set()
    for t in threads:
        t.join(5)
    assert len(results) == 2 and not pre.rated and pre.limit == 1
    pre.close()


def test_once_rated_the_window_opens_at_once_to_two_min_windows_per_fetch_allowed():
    size = 64 * MiB
    data, fetch, stream, pre = make(size, block=256 * KiB, max_window=16 * MiB)
    pre.rated, pre.limit, pre.target_rate = True, 4, 1e12  # (the fetches' own rate keeps the 4 allowed)
    windows = []
    for off in range(0, 5 * 256 * KiB, 256 * KiB):
        stream.read(off, 256 * KiB)
        windows.append(stream.window)
    # at once what the 4 fetches allowed can fill, not the run's 768 KiB to 1.25 MiB
    assert windows == [0, 0] + [2 * 256 * KiB * 4] * 3
    pre.limit = 100
    stream.read(5 * 256 * KiB, 256 * KiB)
    assert stream.window == 16 * MiB  # never beyond the cap
    pre.close()


def test_a_full_link_is_met_with_fewer_fetches_and_a_link_that_is_not_keeps_them():
    blocks = BlockCache(4 * MiB, 64 * KiB, ttl=60)
    pre = Prefetcher(blocks, 16, clock=lambda: 0.0)
    pre.rated, pre.limit = True, 16
    now = [0.0]

    def period(rate, held_back=True):  # one PERIOD of readahead at `rate` bytes/s
        pre.measure(0, now[0])
        pre._period[2] = held_back
        now[0] += pre.PERIOD
        pre.measure(int(rate * pre.PERIOD), now[0])
        return pre.limit

    assert (pre.PERIOD, pre.GAIN, pre.HOLD) == (1.0, 1.1, 30.0)
    assert period(50e6, held_back=False) == 16  # the reader set the pace: nothing learnt
    assert period(60e6) == 16  # the first period held back may be a ramp: nothing tried yet
    assert period(90e6) == 12  # a quarter fewer are tried
    assert period(89e6) == 9  # as fast with fewer: the link is full; fewer again
    assert period(70e6) == 12  # that cost: back, and held
    assert period(90e6) == 12 and period(90e6) == 12  # held for HOLD seconds
    now[0] += pre.HOLD  # (a pause: the reader set the pace meanwhile)
    assert period(90e6) == 12  # a ramp again
    assert period(90e6) == 9  # tried again after HOLD
    assert period(90e6 / pre.GAIN + 1) == 7  # within GAIN of the best: 9 kept, and fewer tried
    assert period(90e6 / pre.GAIN - 1e5) == 9  # beyond it (of the best, not of the last one): back
    pre.close()


def test_the_limit_is_not_steered_before_the_link_is_rated_nor_below_one():
    blocks = BlockCache(4 * MiB, 64 * KiB, ttl=60)
    pre = Prefetcher(blocks, 4)
    now = 0.0
    for _ in range(4):
        pre.measure(0, now)
        pre._period[2] = True
        now += pre.PERIOD
        pre.measure(10**6, now)
    assert pre.limit == 1 and not pre.rated
    pre.rated = True
    for _ in range(4):
        pre.measure(0, now)
        pre._period[2] = True
        now += pre.PERIOD
        pre.measure(10**6, now)
    assert pre.limit == 1
    pre.close()


def test_readahead_fetches_measure_the_total_rate(tmp_path):
    size = 8 * MiB
    data = random.Random(23).randbytes(size)
    blocks = BlockCache(64 * MiB, 256 * KiB, ttl=60)
    times = iter([0.0, 0.5, 2.0, 9.0, 9.5, 10.0])
    pre = Prefetcher(blocks, 1, clock=lambda: next(times))
    fetch = Fetcher(data)
    for i in range(3):
        pre.submit("f", size, i, i + 1, fetch)
        assert wait_for(lambda i=i: has_block(blocks, "f", i))
    assert wait_for(lambda: pre._period[0] == 2.0)  # a period ended at 2.0 and a new one began
    pre.close()


def tail_fetches(size, submits, limit=4):
    """The fetches readahead makes for `submits` ([start, stop) ranges) of a file of `size`, parts of
    8 blocks of 256 KiB elsewhere, `limit` fetches allowed."""
    bs = 256 * KiB
    data = random.Random(size).randbytes(size)
    fetch = GatedFetcher(data)
    fetch.gate.set()
    blocks = BlockCache(64 * MiB, bs, ttl=60)
    pre = Prefetcher(blocks, limit, target_rate=1e12)  # (any fetch measured asks for all of them)
    pre.rated, pre.limit = True, limit
    stream = ReadStream(blocks, pre, ("f", size), size, fetch, min_window=bs, max_window=8 * MiB)
    stream.window = 8 * MiB
    for start, stop in submits:
        stream._submit(start, stop)
    assert wait_for(lambda: all(has_block(blocks, ("f", size), i) for start, stop in submits
                                for i in range(start // bs, -(-stop // bs))))
    pre.close()
    return sorted(fetch.calls)


def test_the_last_parts_of_a_file_are_shared_among_the_fetches_allowed():
    bs = 256 * KiB
    # elsewhere one part of 8 blocks; the end: 8 blocks in 4 parts of 2, not one of 8
    assert tail_fetches(16 * MiB, [(8 * MiB, 10 * MiB), (14 * MiB, 16 * MiB)]) == [
        (8 * MiB, 10 * MiB), *[(14 * MiB + i * 2 * bs, 14 * MiB + (i + 1) * 2 * bs) for i in range(4)]]
    # fewer blocks left than fetches allowed: one block each
    assert tail_fetches(4 * MiB, [(4 * MiB - 2 * bs, 4 * MiB)]) == [(4 * MiB - 2 * bs, 4 * MiB - bs),
                                                                    (4 * MiB - bs, 4 * MiB)]


def test_a_rated_link_is_not_rated_again_by_a_readers_own_fetch():
    size = 16 * MiB
    data = random.Random(25).randbytes(size)
    blocks = BlockCache(64 * MiB, 256 * KiB, ttl=60)
    pre = Prefetcher(blocks, 8, target_rate=5e6)
    pre.rated, pre.limit = True, 2
    blocks.read("f", size, 0, 10, pre.measured(Fetcher(data, delay=0.2)))  # alone and slow: would ask for 4–5
    assert pre.limit == 2
    pre.close()


def test_a_fetch_that_waits_for_a_slot_marks_the_period_held_back():
    data = random.Random(26).randbytes(MiB)
    fetch = GatedFetcher(data)
    blocks = BlockCache(4 * MiB, 64 * KiB, ttl=60)
    pre = Prefetcher(blocks, 4, target_rate=1e12)
    pre.submit("f", MiB, 0, 1, fetch)
    assert wait_for(lambda: fetch.running == 1)
    assert pre._period[2] is False
    pre.submit("f", MiB, 1, 2, fetch)  # the limit is 1: it waits
    assert wait_for(lambda: pre._period[2] is True)
    fetch.gate.set()
    assert wait_for(lambda: has_block(blocks, "f", 1))
    pre.close()


def test_a_full_link_is_logged(caplog):
    import logging

    blocks = BlockCache(4 * MiB, 64 * KiB, ttl=60)
    pre = Prefetcher(blocks, 16)
    pre.rated, pre.limit = True, 16
    now = 0.0
    with caplog.at_level(logging.DEBUG, logger="desfs.readahead"):
        for rate in (90e6, 90e6, 90e6):
            pre.measure(0, now)
            pre._period[2] = True
            now += pre.PERIOD
            pre.measure(int(rate), now)
    pre.close()
    assert "readahead: the link is full at 90 MB/s: 12 fetches at once, not 16" in caplog.text


class LatencyFetcher:
    """Each fetch costs `latency` seconds (a round trip), whatever its size."""

    def __init__(self, data, latency):
        self.data, self.latency = data, latency

    def __call__(self, start, stop, write):
        time.sleep(self.latency)
        write(self.data[start:stop])


def test_a_small_files_lone_fetch_does_not_rate_a_fast_link_as_slow():
    blocks = BlockCache(64 * MiB, 1 * MiB, ttl=60)
    pre = Prefetcher(blocks, 16, target_rate=200e6)
    small = b"x" * 4096  # 4 KiB in 20 ms would say 0.2 MB/s: all round trip, nothing of the link's rate
    assert blocks.read(("small", 4096), 4096, 0, 4096, pre.measured(LatencyFetcher(small, 0.02))) == small
    assert pre.limit == 1 and not pre.rated
    pre.close()


def test_a_random_piece_read_does_not_rate_the_link():
    size = 64 * MiB
    data = random.Random(27).randbytes(size)
    blocks = BlockCache(64 * MiB, 1 * MiB, ttl=60)
    pre = Prefetcher(blocks, 16, target_rate=200e6)
    stream = ReadStream(blocks, pre, ("f", size), size, LatencyFetcher(data, 0.02), min_window=1 * MiB,
                        max_window=16 * MiB)
    assert bytes(stream.read(10 * MiB, 4096)) == data[10 * MiB:10 * MiB + 4096]  # one 64 KiB piece
    assert pre.limit == 1 and not pre.rated
    pre.close()


def test_a_period_that_spans_a_pause_is_no_baseline_for_fewer_fetches():
    blocks = BlockCache(4 * MiB, 64 * KiB, ttl=60)
    pre = Prefetcher(blocks, 16, clock=lambda: 0.0)
    pre.rated, pre.limit = True, 16
    now = [0.0]

    def period(rate, held_back=True):
        pre.measure(0, now[0])
        pre._period[2] = held_back
        now[0] += pre.PERIOD
        pre.measure(int(rate * pre.PERIOD), now[0])
        return pre.limit

    assert period(90e6) == 16  # one file read: the link busy, held back
    pre._period[2] = True
    now[0] += 60.0  # a minute later the next file: its first fetch ends a 61 s "period"
    pre.measure(int(90e6), now[0])  # 1.5 MB/s over it: no baseline
    assert pre.limit == 16
    assert period(90e6) == 16  # a ramp again first
    assert period(90e6) == 12 and period(70e6) == 16  # fewer cost against the real rate: back
    pre.close()


# -- the back-off's edges, one test each (mutation testing found them unpinned) ---------------------

def steered(limit=16, best=None):
    blocks = BlockCache(4 * MiB, 64 * KiB, ttl=60)
    pre = Prefetcher(blocks, 16, clock=lambda: 0.0)
    pre.rated, pre.limit = True, limit
    return pre


def one_period(pre, now, rate, seconds=None, held_back=True):
    """A period of `seconds` (PERIOD) from `now` at `rate` bytes/s; the new time."""
    seconds = pre.PERIOD if seconds is None else seconds
    pre.measure(0, now)
    pre._period[2] = held_back
    pre.measure(int(rate * seconds), now + seconds)
    return now + seconds


def test_a_period_of_exactly_two_seconds_still_steers_and_a_longer_one_is_a_pause():
    pre = steered()
    now = one_period(pre, 0.0, 90e6)
    now = one_period(pre, now, 90e6, seconds=2 * pre.PERIOD)  # not a pause: fewer are tried
    assert pre.limit == 12
    now = one_period(pre, now, 30e6, seconds=2.5 * pre.PERIOD)  # a pause (under 3 periods): what was tried
    assert pre.limit == 16  # is given back, not judged
    pre.close()


def test_the_rate_is_bytes_over_seconds_and_a_period_adds_all_its_fetches():
    pre = steered()
    now = one_period(pre, 0.0, 80e6, seconds=1.25)
    now = one_period(pre, now, 80e6, seconds=1.25)
    assert pre.limit == 12 and pre._tried == (16, 80e6)
    pre.measure(0, now)
    pre._period[2] = True
    pre.measure(40_000_000, now + 0.5)  # two fetches in one period: 80 MB in 1 s, as fast
    pre.measure(40_000_000, now + 1.0)
    assert pre.limit == 9
    pre.close()


def test_fewer_fetches_exactly_within_the_gain_are_kept():
    pre = steered(12)
    pre._tried, pre._steady = (16, 90_000_000 * pre.GAIN), True  # 12 are being tried against this best
    one_period(pre, 0.0, 90e6)  # rate × GAIN == the best: not below it
    assert pre.limit == 9
    pre.close()


def test_periods_nobody_waited_in_never_steer():
    pre = steered()
    for t in range(6):
        pre.measure(100_000_000, float(t))  # fetches end, none ever waited for a slot
    assert pre.limit == 16 and pre._tried is None
    pre.close()


def test_two_fetches_at_once_are_tried_as_one_and_three_as_two():
    for limit, fewer in ((2, 1), (3, 2)):
        pre = steered(limit)
        now = one_period(pre, 0.0, 50e6)
        one_period(pre, now, 50e6)
        assert pre.limit == fewer
        pre.close()


def test_fewer_are_tried_again_the_moment_the_hold_ends():
    pre = steered()
    pre._hold_until = 5.0
    now = one_period(pre, 3.0, 90e6)  # ends at 4.0: held
    assert pre.limit == 16
    one_period(pre, now, 90e6)  # ends at 5.0: the hold is over
    assert pre.limit == 12
    pre.close()


def test_the_full_link_log_line_is_exactly_this(caplog):
    import logging

    pre = steered()
    with caplog.at_level(logging.DEBUG, logger="desfs.readahead"):
        now = one_period(pre, 0.0, 90e6)
        now = one_period(pre, now, 90e6)
        one_period(pre, now, 90e6)
    pre.close()
    assert [r.getMessage() for r in caplog.records if "full" in r.getMessage()] == [
        "readahead: the link is full at 90 MB/s: 12 fetches at once, not 16"]


def test_the_pool_has_a_thread_for_each_fetch_allowed():
    pre = Prefetcher(BlockCache(4 * MiB, 64 * KiB, ttl=60), 11)
    assert pre._pool._max_workers == 11
    pre.close()


def test_a_readahead_fetch_adds_its_bytes_to_the_period():
    data = random.Random(28).randbytes(MiB)
    blocks = BlockCache(4 * MiB, 64 * KiB, ttl=60)
    times = iter([0.0, 0.1, 0.2, 0.3])
    pre = Prefetcher(blocks, 2, clock=lambda: next(times))
    pre.submit("f", MiB, 0, 3, Fetcher(data))
    assert wait_for(lambda: pre._period[1] == 3 * 64 * KiB)
    pre.close()


def test_a_readers_own_fetch_ends_and_its_rate_counts_its_own_bytes():
    size = 16 * MiB
    data = random.Random(29).randbytes(size)
    blocks = BlockCache(64 * MiB, 256 * KiB, ttl=60)
    pre = Prefetcher(blocks, 8, target_rate=5e6)
    own = pre.measured(Fetcher(data, delay=0.2))
    assert blocks.read("f", size, 3 * 256 * KiB, 10, own) == data[3 * 256 * KiB:3 * 256 * KiB + 10]
    assert pre._readers == 0 and pre.rated and 4 <= pre.limit <= 5  # 256 KiB in 0.2 s, wherever it is
    pre.close()





def test_a_read_at_the_second_byte_of_a_file_is_a_jump():
    size = 16 * MiB
    data, fetch, stream, pre = make(size, block=1 * MiB)
    assert stream.read(1, 100) == data[1:101]
    assert fetch.calls == [(0, 64 * KiB)]
    pre.close()


def test_a_prefetchers_first_period_is_not_held_back_by_itself():
    pre = steered()
    pre.measure(0, 0.0)
    pre.measure(90_000_000, 1.0)  # nobody waited: the reader set the pace
    now = one_period(pre, 1.0, 90e6)  # the first period held back: nothing tried yet
    assert pre.limit == 16
    one_period(pre, now, 90e6)
    assert pre.limit == 12
    pre.close()


def test_a_period_of_exactly_two_seconds_judges_what_was_tried():
    pre = steered(12)
    pre._tried, pre._steady = (16, 90e6), True
    one_period(pre, 0.0, 90e6, seconds=2 * pre.PERIOD)  # as fast with 12: kept, and 9 tried
    assert pre.limit == 9
    pre.close()


def test_a_readahead_fetch_beside_another_and_a_readers_own_is_not_alone():
    size = 4 * MiB
    data = random.Random(31).randbytes(size)
    gates = {0: threading.Event(), 64 * KiB: threading.Event()}  # the reader's own and readahead's first

    def fetch(start, stop, write):
        if start in gates:
            gates[start].wait(5)
        write(data[start:stop])

    blocks = BlockCache(16 * MiB, 64 * KiB, ttl=60)
    pre = Prefetcher(blocks, 4, target_rate=1e12)  # any fetch measured would ask for all 4
    pre.limit = 3
    reader = threading.Thread(target=blocks.read, args=("f", size, 0, 10, pre.measured(fetch)))
    reader.start()
    assert wait_for(lambda: pre._readers == 1)
    pre.submit("f", size, 1, 2, fetch)  # waits at its gate
    assert wait_for(lambda: pre._active == 1)
    pre.submit("f", size, 2, 3, fetch)  # runs beside both, and ends first
    assert wait_for(lambda: has_block(blocks, "f", 2))
    time.sleep(0.05)  # (it measures, or not, right after its slot is given back)
    for g in gates.values():
        g.set()
    reader.join(5)
    assert wait_for(lambda: pre._active == 0 and pre._readers == 0)
    assert not pre.rated and pre.limit == 3
    pre.close()
