"""The tests every block store must pass (cache.Store): the memory store today, a disk tier next.

A new store is added to STORES (a factory: budget in bytes, time to live, clock → store of byte
values) and must pass every test here, as fsspec runs every cache through the same tests. The
BlockCache tests at the end run the block cache on top of each store.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from desfs.cache import BlockCache, FileKey, MemoryStore, Store, TieredStore
from desfs.diskcache import DiskStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


STORES = {
    "memory": lambda budget, ttl, clock: MemoryStore(budget, ttl, getsizeof=len, timer=clock),
    "memory, ttl per value": lambda budget, ttl, clock: MemoryStore(budget, lambda value: ttl, getsizeof=len,
                                                                    timer=clock),
    "disk": lambda budget, ttl, clock, folder: DiskStore(folder, budget, ttl=ttl, timer=clock),
    "memory over disk": lambda budget, ttl, clock, folder: TieredStore(
        MemoryStore(budget, ttl, getsizeof=len, timer=clock), DiskStore(folder, budget, ttl=ttl, timer=clock)),
}
# Written behind (as mounts do), a tiered store's disk tier sees puts late, so its least recently used
# is approximate: it passes the tests below that do not look at the order of eviction.
BEHIND = lambda budget, ttl, clock, folder: TieredStore(  # noqa: E731
    MemoryStore(budget, ttl, getsizeof=len, timer=clock), DiskStore(folder, budget, ttl=ttl, timer=clock),
    write_behind=True)


@pytest.fixture(params=sorted(STORES))
def make(request, tmp_path):
    clock = Clock()
    factory = STORES[request.param]
    if "disk" in request.param:  # a folder of its own for each store made
        made = iter(range(1000))
        return lambda budget=1000, ttl=60.0: factory(budget, ttl, clock, str(tmp_path / f"disk{next(made)}")), clock
    return lambda budget=1000, ttl=60.0: factory(budget, ttl, clock), clock


def test_has_every_member_of_the_protocol(make):
    factory, _ = make
    store = factory()
    members = {n for n in vars(Store) if not n.startswith("_")}
    assert members == {"get", "put", "discard", "keys", "current_size", "max_size"}
    for name in members:
        assert hasattr(store, name), name
    assert isinstance(store.current_size, int) and store.max_size == 1000


def test_put_get_discard(make):
    factory, _ = make
    store = factory()
    key = (FileKey("http://h/f", 300, 1.0), 0)
    assert store.get(key) is None and not store.discard(key)
    store.put(key, b"x" * 100)
    assert store.get(key) == b"x" * 100 and store.keys() == [key] and store.current_size == 100
    assert store.discard(key) and store.get(key) is None and store.keys() == [] and store.current_size == 0


def test_a_new_value_replaces_the_old(make):
    factory, _ = make
    store = factory()
    store.put("k", b"a" * 10)
    store.put("k", b"b" * 20)
    assert store.get("k") == b"b" * 20 and store.current_size == 20


def test_the_budget_holds_and_the_least_recently_used_goes_first(make):
    factory, _ = make
    store = factory(budget=300)
    for name in "abc":
        store.put(name, name.encode() * 100)
    assert store.get("a")  # a is used again: b is now the least recently used
    store.put("d", b"d" * 100)
    assert store.get("b") is None and store.get("a") and store.get("c") and store.get("d")
    assert store.current_size <= store.max_size == 300


def test_a_value_larger_than_the_budget_is_not_kept(make):
    factory, _ = make
    store = factory(budget=100)
    store.put("small", b"s" * 50)
    store.put("huge", b"h" * 101)  # refused quietly: served by whoever loaded it, never kept
    assert store.get("huge") is None and store.get("small") == b"s" * 50


def test_values_expire(make):
    factory, clock = make
    store = factory(ttl=10.0)
    store.put("k", b"v")
    clock.now += 9
    assert store.get("k") == b"v"
    clock.now += 2
    assert store.get("k") is None and store.current_size == 0


# -- the block cache on each store ------------------------------------------------


def pattern(start: int, stop: int) -> bytes:
    return bytes(i % 251 for i in range(start, stop))


def test_the_block_cache_reads_right_bytes_on_each_store(make):
    factory, _ = make
    calls = []

    def fetch(start, stop, write):
        calls.append((start, stop))
        write(pattern(start, stop))

    cache = BlockCache(max_bytes=4000, block_size=100, ttl=60, store=factory(budget=4000))
    key = FileKey("http://h/f", 1050, 1.0)
    assert cache.read(key, 1050, 0, 1050, fetch) == pattern(0, 1050)
    assert cache.read(key, 1050, 250, 500, fetch) == pattern(250, 750)  # from the store: no more fetches
    assert len(calls) == 11
    assert cache.fetch_run(key, 1050, 0, 11, fetch) == 0  # all there


def test_one_fetch_however_many_read_at_once_on_each_store(make):
    factory, _ = make
    gate, calls = threading.Event(), []

    def fetch(start, stop, write):
        calls.append((start, stop))
        gate.wait(5)
        write(pattern(start, stop))

    cache = BlockCache(max_bytes=4000, block_size=100, ttl=60, store=factory(budget=4000))
    key = FileKey("http://h/f", 100, 1.0)
    got: list[bytes] = []
    readers = [threading.Thread(target=lambda: got.append(cache.read(key, 100, 0, 100, fetch))) for _ in range(8)]
    for r in readers:
        r.start()
    gate.set()
    for r in readers:
        r.join(5)
    assert got == [pattern(0, 100)] * 8 and calls == [(0, 100)]


@pytest.mark.parametrize("test", [test_put_get_discard, test_a_new_value_replaces_the_old,
                                  test_a_value_larger_than_the_budget_is_not_kept,
                                  test_the_block_cache_reads_right_bytes_on_each_store,
                                  test_one_fetch_however_many_read_at_once_on_each_store])
def test_written_behind(test, tmp_path):
    clock, made = Clock(), iter(range(1000))
    test((lambda budget=1000, ttl=60.0: BEHIND(budget, ttl, clock, str(tmp_path / f"d{next(made)}")), clock))


def test_written_behind_reaches_the_disk_and_a_new_store_finds_it(tmp_path):
    clock = Clock()
    store = BEHIND(10_000, 60.0, clock, str(tmp_path / "d"))
    key = (FileKey("http://h/f", 300, 1.0), 0)
    store.put(key, b"v" * 300)
    assert store.get(key) == b"v" * 300  # served at once, written or not
    store.close()
    assert DiskStore(str(tmp_path / "d"), 10_000, timer=clock).get(key) == b"v" * 300


class SlowStore(MemoryStore):
    """A lower tier whose puts wait for `gate` (a disk slower than the reads)."""

    def __init__(self, budget: int) -> None:
        super().__init__(budget, 60.0, getsizeof=len)
        self.gate = threading.Event()

    def put(self, key, value) -> None:
        self.gate.wait(10)
        super().put(key, value)


def test_a_full_write_queue_holds_the_fetch_not_the_readers():
    import time

    lower = SlowStore(10_000)
    store = TieredStore(MemoryStore(10_000, 60.0, getsizeof=len), lower, write_behind=True, queue_bytes=300)
    for i in range(3):  # 100 bytes each: the queue is full (the first is being written, slowly)
        store.wait_for_room(100)
        store.put(i, bytes([i]) * 100)
    waited = threading.Event()

    def bring_one_more():
        store.wait_for_room(100)
        waited.set()
        store.put(3, bytes([3]) * 100)

    t = threading.Thread(target=bring_one_more)
    t.start()
    time.sleep(0.2)
    assert not waited.is_set()  # the fetch waits for the disk ...
    started = time.monotonic()
    assert all(store.get(i) == bytes([i]) * 100 for i in range(3))  # ... readers of what is cached do not
    assert time.monotonic() - started < 0.1
    lower.gate.set()
    t.join(10)
    assert waited.is_set()
    store.flush()
    assert all(lower.get(i) == bytes([i]) * 100 for i in range(4))  # all of it kept on disk
    store.close()


def test_a_block_cache_over_a_slow_disk_tier_keeps_every_block():
    lower = SlowStore(1 << 20)
    threading.Timer(0.3, lower.gate.set).start()  # the disk is stuck for a while: the fetch waits for it
    blocks = BlockCache(1 << 20, 1000, ttl=60, below=lower)
    blocks.blocks._store._queue_max = 2500  # (two or three blocks wait at most)
    data = bytes(range(256)) * 40
    assert blocks.read("f", len(data), 0, len(data), lambda a, b, write: write(data[a:b])) == data
    blocks.flush()
    assert sorted(lower.keys()) == [("f", i, 1000) for i in range(11)]
    blocks.close()


# -- found by a review: a full disk queue, a disk tier reused, two processes -----------------------

KiB, MiB = 1024, 1024 * 1024


def test_a_block_whose_bytes_are_in_is_not_withheld_from_its_waiters_by_the_disk():
    lower = SlowStore(1 << 20)
    blocks = BlockCache(1 << 20, 1000, ttl=60, below=lower, patience=lambda n: 0.3)
    blocks.blocks._store._queue_max = 1500
    data = bytes(range(256)) * 40
    fetch = lambda a, b, write: write(data[a:b])  # noqa: E731
    assert blocks.read("f", len(data), 0, 1000, fetch) == data[:1000]  # block 0 queued; the disk is stuck
    # readahead brings block 1: all its bytes arrive at once, then its deliver waits for the disk
    ra = threading.Thread(target=blocks.fetch_run, args=("f", len(data), 1, 2, fetch), daemon=True)
    ra.start()
    time.sleep(0.05)
    try:
        got = blocks.read("f", len(data), 1000, 1000, fetch)  # a reader that needs block 1 now
    except TimeoutError as exc:
        got = exc
    lower.gate.set()
    ra.join(5)
    blocks.close()
    assert got == data[1000:2000], got  # TimeoutError: the block was complete in memory for 0.3 s


def test_the_cache_size_does_does_not_stall_cache_hits_behind_the_disk_queue():
    lower = SlowStore(1 << 20)
    blocks = BlockCache(1 << 20, 1000, ttl=60, below=lower)
    data = bytes(range(256)) * 40
    fetch = lambda a, b, write: write(data[a:b])  # noqa: E731
    blocks.read("f", len(data), 0, 2000, fetch)  # blocks 0, 1 in memory; their disk writes stuck
    threading.Thread(target=lambda: blocks.blocks.current_size, daemon=True).start()  # `desfs status`
    time.sleep(0.05)
    started = time.monotonic()
    timer = threading.Timer(1.0, lower.gate.set)
    timer.start()
    assert blocks.read("f", len(data), 0, 10, fetch) == data[:10]  # a memory hit
    took = time.monotonic() - started
    blocks.close()
    assert took < 0.5, f"a memory hit waited {took:.2f} s for the disk queue (LoadingCache lock held in flush)"


@pytest.mark.parametrize("seed", range(30))
def test_small_reads_over_a_disk_tier_match_bytes(tmp_path, seed):
    rnd = random.Random(seed)
    size = rnd.randrange(1, 3 * 256 * KiB)
    data = rnd.randbytes(size)
    key = FileKey("http://h/f", size, 1.0)
    fetch = lambda a, b, write: write(data[a:b])  # noqa: E731
    disk = DiskStore(str(tmp_path / "d"), 64 * MiB)
    blocks = BlockCache(2 * MiB, 256 * KiB, ttl=60, below=disk)
    for _ in range(40):
        off = rnd.randrange(0, size + 10)
        n = rnd.randrange(0, 300 * KiB)
        if rnd.random() < 0.2:
            blocks.read(key, size, off, n, fetch)
        assert bytes(blocks.view(key, size, off, n, fetch, small=True)) == data[off:off + n]
    blocks.close()
    # a new mount over the same disk: pieces and blocks come back from disk, right bytes
    blocks2 = BlockCache(2 * MiB, 256 * KiB, ttl=60, below=DiskStore(str(tmp_path / "d"), 64 * MiB))
    boom = lambda a, b, write: (_ for _ in ()).throw(AssertionError("fetched"))  # noqa: E731
    for _ in range(20):
        off = rnd.randrange(0, size)
        n = rnd.randrange(1, 300 * KiB)
        try:
            assert bytes(blocks2.view(key, size, off, n, boom, small=True)) == data[off:off + n]
        except AssertionError as exc:
            if "fetched" not in str(exc):
                raise
    blocks2.close()


def test_a_reader_never_waits_for_another_processs_index_writer(tmp_path):
    from desfs import diskcache
    folder = str(tmp_path / "d")
    a, b = DiskStore(folder, 64 * MiB), DiskStore(folder, 64 * MiB)  # two mounts sharing a cache folder
    keys = [(FileKey("http://h/f", 10**9, 1.0), i, 100) for i in range(diskcache.FLUSH_EVERY)]
    for k in keys:
        a.put(k, b"v" * 100)
    for k in keys[:-1]:
        assert b.get(k) == b"v" * 100  # uses remembered, not yet written
    b._db.execute("PRAGMA busy_timeout = 1500")  # (30 s in a mount; shortened here)
    a._db.execute("BEGIN IMMEDIATE")  # the other process is evicting / adding a block
    started = time.monotonic()
    assert b.get(keys[-1]) == b"v" * 100  # the FLUSH_EVERY-th use: this reader writes the index
    took = time.monotonic() - started
    a._db.execute("COMMIT")
    a.close(), b.close()
    assert took < 0.5, f"a disk hit waited {took:.2f} s for another process's transaction (busy_timeout)"


def test_a_disk_cache_reused_with_another_block_size_never_gives_wrong_bytes(tmp_path):
    folder = str(tmp_path / "d")
    data = random.Random(7).randbytes(16 * 1024)  # 16 KiB
    key = FileKey("http://h/f", len(data), 1.0)
    fetch = lambda a, b, write: write(data[a:b])  # noqa: E731
    first = BlockCache(1 << 20, 1024, ttl=60, below=DiskStore(folder, 1 << 20))  # --block-size 1K
    assert first.read(key, len(data), 0, len(data), fetch) == data
    first.close()
    second = BlockCache(1 << 20, 4096, ttl=60, below=DiskStore(folder, 1 << 20))  # remounted with 4K
    got = second.read(key, len(data), 4096, 4096, fetch)  # block 1 of 4 KiB: bytes 4096..8192
    second.close()
    assert got == data[4096:8192], (len(got), got == data[1024:2048])


class SlowGetStore(MemoryStore):
    """A lower tier whose reads take `delay` seconds (a disk under load)."""

    def __init__(self, budget: int, delay: float) -> None:
        super().__init__(budget, 60.0, getsizeof=len)
        self.delay = delay
        self.gets = 0

    def get(self, key):
        self.gets += 1
        time.sleep(self.delay)
        return super().get(key)


def test_a_block_read_from_the_disk_tier_holds_no_other_reader():
    lower = SlowGetStore(1 << 20, 0.5)
    blocks = BlockCache(1 << 20, 1000, ttl=60, below=lower)
    data = bytes(range(256)) * 40
    fetch = lambda a, b, write: write(data[a:b])  # noqa: E731
    lower.put(("f", 1, 1000), bytearray(data[1000:2000]))  # block 1 on disk only
    lower.delay = 0.0
    assert blocks.read("f", len(data), 0, 1000, fetch) == data[:1000]  # block 0 in memory
    lower.delay = 0.5
    got = []
    t = threading.Thread(target=lambda: got.append(blocks.read("f", len(data), 1000, 1000, fetch)))
    t.start()
    time.sleep(0.1)  # the disk read of block 1 is under way
    started = time.monotonic()
    assert blocks.read("f", len(data), 0, 1000, fetch) == data[:1000]
    assert time.monotonic() - started < 0.2  # a memory hit does not wait for another block's disk read
    t.join(5)
    assert got == [data[1000:2000]]
    assert blocks.read("f", len(data), 1000, 1000, fetch) == data[1000:2000]  # promoted: in memory now
    blocks.close()


def test_blocks_read_from_disk_are_not_counted_as_fetched_nor_written_again():
    lower = SlowGetStore(1 << 20, 0.0)
    blocks = BlockCache(1 << 20, 1000, ttl=60, below=lower)
    data = bytes(range(256)) * 40
    for i in range(3):
        lower.put(("f", i, 1000), bytearray(data[i * 1000:(i + 1) * 1000]))
    calls = []
    assert blocks.fetch_run("f", len(data), 0, 5, lambda a, b, write: calls.append((a, b)) or write(data[a:b])) == 2
    assert calls == [(3000, 5000)]  # only what the disk did not hold
    blocks.flush()
    assert blocks.blocks._store._queue == {} and sorted(lower.keys()) == [("f", i, 1000) for i in range(5)]
    blocks.close()


class CountingStore(MemoryStore):
    """A lower tier that counts its puts and can fail its reads of one key."""

    def __init__(self, budget: int) -> None:
        super().__init__(budget, 60.0, getsizeof=len)
        self.puts = 0
        self.broken = None

    def put(self, key, value) -> None:
        self.puts += 1
        super().put(key, value)

    def get(self, key):
        if key == self.broken:
            raise OSError(5, "the disk failed")
        return super().get(key)


def test_a_small_read_takes_a_block_the_disk_holds_into_memory_without_writing_it_again():
    lower = CountingStore(1 << 20)
    data = bytes(range(256)) * 40
    lower.put(("f", 1, 4000), bytearray(data[4000:8000]))
    lower.puts = 0
    blocks = BlockCache(1 << 20, 4000, ttl=60, below=lower)
    blocks.piece = 500

    def no_network(start, stop, write):
        raise AssertionError("fetched")

    assert bytes(blocks.view("f", len(data), 4100, 700, no_network, small=True)) == data[4100:4800]
    assert blocks.blocks._store.upper.get(("f", 1, 4000)) is not None  # promoted, under its own key
    blocks.flush()
    assert lower.puts == 0  # not written back to the disk it came from
    assert blocks.read("f", len(data), 0, 4000, lambda a, b, write: write(data[a:b])) == data[:4000]
    blocks.flush()
    assert lower.puts == 1  # a block from the network is
    blocks.close()


def test_a_failed_disk_read_releases_every_block_it_claimed():
    lower = CountingStore(1 << 20)
    data = bytes(range(256)) * 40
    blocks = BlockCache(1 << 20, 1000, ttl=60, below=lower, patience=lambda n: 0.5)
    fetch = lambda a, b, write: write(data[a:b])  # noqa: E731
    lower.broken = ("f", 1, 1000)
    with pytest.raises(OSError):
        blocks.fetch_run("f", len(data), 0, 4, fetch)
    lower.broken = None
    assert blocks.read("f", len(data), 0, 4000, fetch) == data[:4000]  # no claim left behind: no wait, no timeout


def test_a_failed_disk_read_hands_its_error_to_a_reader_waiting_for_a_block_it_claimed():
    """The fetch that claimed blocks 0..3 fails reading block 1 from disk: a reader already waiting for block 2
    gets that error (as _fill promises), not an empty answer that would send it to read the block again."""
    import sys

    class StuckThenBroken(CountingStore):
        def __init__(self, budget):
            super().__init__(budget)
            self.entered, self.go = threading.Event(), threading.Event()

        def get(self, key):
            if key == ("f", 1, 1000):
                self.entered.set()
                self.go.wait(10)
                raise OSError(5, "the disk failed")
            return super().get(key)

    lower = StuckThenBroken(1 << 20)
    data = bytes(range(256)) * 40
    blocks = BlockCache(1 << 20, 1000, ttl=60, below=lower, patience=lambda n: 10)
    fetch = lambda a, b, write: write(data[a:b])  # noqa: E731
    fetcher = threading.Thread(target=lambda: pytest.raises(OSError, blocks.fetch_run, "f", len(data), 0, 4, fetch))
    fetcher.start()
    assert lower.entered.wait(10)  # blocks 0..3 claimed; block 1's disk read under way
    got = []

    def reader():
        try:
            got.append(blocks.block("f", len(data), 2, fetch))
        except OSError as exc:
            got.append(exc)

    waiting = threading.Thread(target=reader)
    waiting.start()

    def in_wait():  # the reader's thread is inside LoadingCache._wait (for the claim of block 2)
        frame = sys._current_frames().get(waiting.ident)
        while frame is not None:
            if "_wait" in frame.f_code.co_name:  # (under mutmut its name has a prefix and a suffix)
                return True
            frame = frame.f_back
        return False

    deadline = time.monotonic() + 10
    while not in_wait() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert in_wait()
    lower.go.set()
    fetcher.join(10)
    waiting.join(10)
    assert len(got) == 1 and isinstance(got[0], OSError) and got[0].errno == 5, got


def test_a_block_cache_waits_for_room_in_the_write_queue_before_bringing_more():
    lower = SlowStore(1 << 20)
    blocks = BlockCache(1 << 20, 1000, ttl=60, below=lower)
    blocks.blocks._store._queue_max = 2500
    data = bytes(range(256)) * 40
    done = threading.Event()
    t = threading.Thread(target=lambda: (blocks.fetch_run("f", len(data), 0, 10, lambda a, b, w: w(data[a:b])),
                                         done.set()), daemon=True)
    t.start()
    time.sleep(0.3)
    assert not done.is_set()  # the disk is stuck: the fetch waits ...
    assert blocks.blocks._store._queued <= 2500 + 1000  # ... with the queue at its bound
    lower.gate.set()
    assert done.wait(10)
    blocks.close()


def test_blocks_a_run_finds_on_disk_are_not_written_to_it_again():
    lower = CountingStore(1 << 20)
    data = bytes(range(256)) * 40
    for i in range(3):
        lower.put(("f", i, 1000), bytearray(data[i * 1000:(i + 1) * 1000]))
    lower.puts = 0
    blocks = BlockCache(1 << 20, 1000, ttl=60, below=lower)
    assert blocks.fetch_run("f", len(data), 0, 5, lambda a, b, write: write(data[a:b])) == 2
    blocks.flush()
    assert lower.puts == 2  # the two from the network only
    blocks.close()
