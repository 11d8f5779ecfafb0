"""TieredStore (memory in front of a disk tier) and its write-behind queue, at unit level: which tier
serves a value, what the queue admits and when a put waits, what a discard removes (also while the
value is being written), flush and close; and the block cache over a tier below.

The store below is a memory store whose puts wait for a gate (`Gated`), so that a test can hold a
value in the queue, or in the middle of being written, for as long as it needs."""

from __future__ import annotations

import threading
import time

from desfs.cache import BlockCache, FileKey, MemoryStore, TieredStore
from desfs.diskcache import DiskStore


class Gated:
    """A Store whose puts wait for `gate` (open at first); `writing` is set once a put waits on it."""

    def __init__(self, budget: int = 10_000) -> None:
        self.inner = MemoryStore(budget, 60.0, getsizeof=len)
        self.gate, self.writing = threading.Event(), threading.Event()
        self.gate.set()

    def put(self, key, value) -> None:
        self.writing.set()
        assert self.gate.wait(10)
        self.inner.put(key, value)

    def get(self, key):
        return self.inner.get(key)

    def discard(self, key) -> bool:
        return self.inner.discard(key)

    def keys(self):
        return self.inner.keys()

    @property
    def current_size(self) -> int:
        return self.inner.current_size

    @property
    def max_size(self) -> int:
        return self.inner.max_size


def behind(lower, queue_bytes=200):
    return TieredStore(MemoryStore(10_000, 60.0, getsizeof=len), lower, write_behind=True, queue_bytes=queue_bytes)


def being_written(store, lower, key, value):
    """Put `value` with the gate shut, and wait until the writer is stuck writing it."""
    lower.gate.clear()
    lower.writing.clear()
    store.put(key, value)
    assert lower.writing.wait(5)


def returns_at_once(fn, *args) -> threading.Thread:
    """Run fn(*args) in a thread and check that it returns (it must not wait for the gate)."""
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    t.join(3)
    assert not t.is_alive(), f"{fn.__name__} waited"
    return t


def open_later(lower, seconds=0.2):
    threading.Timer(seconds, lower.gate.set).start()


def test_memory_serves_what_it_holds_even_when_the_disk_lost_it():
    lower = MemoryStore(1000, 60.0, getsizeof=len)
    store = TieredStore(MemoryStore(1000, 60.0, getsizeof=len), lower)
    store.put("k", b"v" * 10)
    assert lower.discard("k")  # (another process evicted it from the disk)
    assert store.get("k") == b"v" * 10
    assert store.discard("k")  # it was held above: that counts
    assert store.get("k") is None and not store.discard("k")


def test_the_disk_serves_what_memory_let_go_of_and_memory_takes_it_back():
    lower = MemoryStore(1000, 60.0, getsizeof=len)
    store = TieredStore(MemoryStore(1000, 60.0, getsizeof=len), lower)
    store.put("k", b"v" * 10)
    assert store.upper.discard("k")
    assert store.get("k") == b"v" * 10 and store.upper.get("k") == b"v" * 10  # promoted
    assert store.upper.discard("k")
    assert store.discard("k")  # it was held below: that counts
    assert store.get("k") is None


def test_a_value_waiting_to_be_written_is_served_from_the_queue_and_taken_back_into_memory():
    lower = Gated()
    store = behind(lower)
    being_written(store, lower, "k", b"v" * 10)
    assert store.upper.discard("k")  # memory let go of it before the disk has it
    assert store.get("k") == b"v" * 10 and store.upper.get("k") == b"v" * 10
    lower.gate.set()
    store.flush()
    assert lower.get("k") == b"v" * 10


def test_a_value_as_large_as_the_disk_budget_is_written_and_a_larger_one_is_not():
    lower = Gated(budget=100)
    store = behind(lower)
    store.put("fits", b"f" * 100)
    store.put("too large", b"t" * 101)
    store.flush()
    assert lower.get("fits") == b"f" * 100 and lower.get("too large") is None
    assert store.get("too large") == b"t" * 101  # from memory


def bring(store, key, value):
    """What a block cache does with a value it fetched: room in the write queue first, then the put."""
    store.wait_for_room(len(value))
    store.put(key, value)


def test_a_put_waits_only_when_the_queue_is_full():
    lower = Gated()
    store = behind(lower, queue_bytes=300)
    # values written and done leave no bytes counted in the queue
    for i in range(5):
        store.put(f"warm{i}", b"w" * 100)
        store.flush()
    being_written(store, lower, "a", b"a" * 100)  # still queued while it is written: 100 of 300
    returns_at_once(bring, store, "b", b"b" * 100)  # 200 of 300
    returns_at_once(bring, store, "b", b"B" * 100)  # a new value for a queued key replaces it: still 200
    returns_at_once(bring, store, "c", b"c" * 100)  # 300 of 300: fits
    returns_at_once(store.put, "x", b"x")  # a put itself never waits (301 of 300) ...
    assert store.discard("x")
    waiting = threading.Thread(target=bring, args=(store, "d", b"d"), daemon=True)
    waiting.start()
    waiting.join(0.3)
    assert waiting.is_alive()  # 301 of 300: waits for the writer
    lower.gate.set()
    waiting.join(5)
    assert not waiting.is_alive()
    store.flush()
    assert [lower.get(k) for k in "abcd"] == [b"a" * 100, b"B" * 100, b"c" * 100, b"d"]


def test_a_discard_takes_a_value_out_of_the_queue_without_waiting_and_frees_its_room():
    lower = Gated()
    store = behind(lower, queue_bytes=300)
    being_written(store, lower, "a", b"a" * 100)
    store.put("b", b"b" * 100)
    store.put("c", b"c" * 100)  # 300 of 300
    returns_at_once(store.discard, "c")  # not being written: no wait for the disk
    assert store.get("c") is None
    returns_at_once(bring, store, "d", b"d" * 100)  # the room of c: 300 of 300 again
    waiting = threading.Thread(target=bring, args=(store, "e", b"e" * 100), daemon=True)
    waiting.start()
    waiting.join(0.3)
    assert waiting.is_alive()  # 400 of 300
    lower.gate.set()
    waiting.join(5)
    store.flush()
    assert lower.get("c") is None and store.get("c") is None  # never written
    assert [lower.get(k) for k in "abde"] == [b"a" * 100, b"b" * 100, b"d" * 100, b"e" * 100]


def test_a_discard_of_the_value_being_written_leaves_nothing_on_the_disk():
    lower = Gated()
    store = behind(lower)
    being_written(store, lower, "a", b"a" * 100)
    open_later(lower)
    assert store.discard("a")  # waits for the write under way, then takes it off the disk
    assert lower.get("a") is None and store.get("a") is None
    store.put("z", b"z")  # written after a: once it is in, the write of a is over
    store.flush()
    assert lower.get("z") == b"z" and lower.get("a") is None and store.keys() == ["z"]


def test_flush_waits_for_the_write_under_way_and_close_ends_the_writer():
    lower = Gated()
    store = behind(lower)
    being_written(store, lower, "a", b"a" * 100)
    open_later(lower)
    store.flush()
    assert lower.get("a") == b"a" * 100
    store.put("b", b"b" * 100)
    being_written(store, lower, "c", b"c" * 100)
    open_later(lower)
    writers = [t for t in threading.enumerate() if t is store._writer]
    assert [(t.name, t.daemon) for t in writers] == [("desfs-disk-writer", True)]  # never holds the process
    store.close()  # flushes first
    assert lower.get("b") == b"b" * 100 and lower.get("c") == b"c" * 100
    deadline = time.monotonic() + 5
    while store._writer.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not store._writer.is_alive()
    store.put("late", b"l" * 10)  # after close: kept in memory, never queued for the disk
    assert store.get("late") == b"l" * 10 and not store._writer.is_alive() and lower.get("late") is None


def test_the_block_cache_flushes_and_closes_its_tier_below(tmp_path):
    lower = Gated()
    cache = BlockCache(max_bytes=4000, block_size=100, ttl=60, below=lower)
    key = FileKey("http://h/f", 300, 1.0)
    lower.gate.clear()
    assert cache.read(key, 300, 0, 100, lambda start, stop, write: write(b"x" * (stop - start))) == b"x" * 100
    open_later(lower)
    cache.flush()
    assert lower.get((key, 0, 100)) == b"x" * 100
    lower.gate.clear()
    cache.read(key, 300, 100, 100, lambda start, stop, write: write(b"y" * (stop - start)))
    open_later(lower)
    cache.close()
    assert lower.get((key, 1, 100)) == b"y" * 100
    disk = DiskStore(str(tmp_path / "d"), 4000)
    plain = BlockCache(max_bytes=4000, block_size=100, ttl=60, below=disk)
    plain.flush()
    plain.close()  # nothing to write: returns
    memory = BlockCache(max_bytes=4000, block_size=100, ttl=60)  # no tier below: nothing to flush or close
    memory.flush()
    memory.close()


def test_a_value_discarded_before_the_writer_took_it_leaves_flush_nothing_to_wait_for():
    lower = Gated()
    store = behind(lower)
    with store._cv:  # (the writer cannot take it meanwhile)
        store.put("a", b"a" * 10)
        assert store.discard("a")
    returns_at_once(store.flush)
    returns_at_once(store.keys)
    assert store.keys() == [] and store.current_size == 0 and lower.get("a") is None


def test_blocks_let_go_of_over_a_disk_tier_lend_their_memory_and_blocks_read_back_from_it_take_it(tmp_path):
    from desfs.cache import MAPPED_MIN

    disk = DiskStore(str(tmp_path / "d"), 64 * MAPPED_MIN)
    cache = BlockCache(max_bytes=16 * MAPPED_MIN, block_size=MAPPED_MIN, ttl=60, below=disk)
    assert cache.blocks._store.upper.max_size + cache.spares.max_bytes == 16 * MAPPED_MIN  # memory within the budget
    size = 24 * MAPPED_MIN
    fetched = []

    def fetch(start, stop, write):
        fetched.append(start)
        write(bytes([start // MAPPED_MIN]) * (stop - start))

    for i in range(24):
        assert cache.read("f", size, i * MAPPED_MIN, 10, fetch) == bytes([i]) * 10
        cache.flush()  # written: the queue holds no block any more
    assert len(fetched) == 24 and cache.spares.reused > 0  # evicted from memory: their maps reused
    reused = cache.spares.reused
    assert cache.read("f", size, 0, 10, fetch) == bytes([0]) * 10  # from the disk, into a spare map
    assert len(fetched) == 24 and cache.spares.reused == reused + 1
    cache.close()


def test_a_block_larger_than_the_whole_cache_is_served_and_fetched_once():
    fetched = []

    def fetch(start, stop, write):
        fetched.append((start, stop))
        write(b"x" * (stop - start))

    cache = BlockCache(max_bytes=50, block_size=100, ttl=60)
    assert cache.read("f", 300, 120, 30, fetch) == b"x" * 30 and fetched == [(100, 200)]


def test_each_block_of_a_run_gives_its_waiters_the_patience_for_the_bytes_up_to_its_end():
    asked = []
    cache = BlockCache(max_bytes=4000, block_size=100, ttl=60, patience=lambda n: asked.append(n) or 5.0)
    assert cache.fetch_run("f", 1000, 2, 5, lambda start, stop, write: write(b"x" * (stop - start))) == 3
    assert asked == [100, 200, 300]


def test_blocks_in_memory_over_a_tier_expire_by_the_timer_given():
    class Clock:
        now = 1000.0

        def __call__(self):
            return self.now

    clock, lower = Clock(), Gated()
    cache = BlockCache(max_bytes=4000, block_size=100, ttl=10, timer=clock, below=lower)
    key = FileKey("http://h/f", 100, 1.0)
    cache.read(key, 100, 0, 100, lambda start, stop, write: write(b"x" * (stop - start)))
    memory = cache.blocks._store.upper
    clock.now += 9
    assert memory.get((key, 0, 100)) == b"x" * 100
    clock.now += 2
    assert memory.get((key, 0, 100)) is None
    cache.close()


def test_a_reader_waits_for_a_block_of_a_run_under_way_at_most_its_patience():
    import errno

    gate = threading.Event()
    cache = BlockCache(max_bytes=4000, block_size=100, ttl=60, patience=lambda n: 0.3)

    def fetch(start, stop, write):
        gate.wait(10)
        write(b"x" * (stop - start))

    runner = threading.Thread(target=cache.fetch_run, args=("f", 1000, 0, 3, fetch), daemon=True)
    runner.start()
    deadline = time.monotonic() + 5
    while ("f", 2, 100) not in cache.blocks._flights and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    try:
        cache.read("f", 1000, 200, 10, fetch)
        raise AssertionError("no timeout")
    except TimeoutError as exc:
        assert exc.errno == errno.ETIMEDOUT and 0.1 < time.monotonic() - started < 0.9
    gate.set()
    runner.join(5)
    assert cache.read("f", 1000, 200, 10, fetch) == b"x" * 10
