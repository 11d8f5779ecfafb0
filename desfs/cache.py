"""Cache layer: the only module that imports cachetools.

Knows keys, sizes and time; knows no HTTP, no paths' meaning, no FUSE. Blocks
are filled by a streaming `fetch(start, stop, write)` function (half-open
ranges), so every test of this module runs without a server. Readers get views
of the cached blocks, so a byte is copied once on its way to the kernel.

The seam for another tier: a LoadingCache (single-flight loads, bounded waits)
keeps its values in a `Store` (get / put / discard per key): `MemoryStore`, and
`TieredStore` of a memory store in front of another (diskcache.DiskStore). A
BlockCache's keys are (FileKey, index, block or piece size), and every block comes in through
`BlockCache._fill`, for a reader and for readahead alike.

Internals of others relied on here: CPython's reference counts (`sys.getrefcount`) tell
Spares that nobody holds a block's memory any more (guarded by
tests/test_cache.py::test_spares_reuse_a_map_only_once_nothing_refers_to_it; should they
change, maps are not reused, never reused while held).
"""

from __future__ import annotations

import errno
import mmap
import sys
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple, Protocol

import cachetools

from desfs.stats import COUNTERS


class _Dropping:
    """A cachetools cache that tells `on_drop` of each value it evicts or expires."""

    def __init__(self, *args: Any, on_drop: Callable[[Any], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_drop = on_drop

    def expire(self, time: float | None = None) -> list:
        expired = super().expire(time)
        for _key, value in expired:
            self._on_drop(value)
        return expired

    def popitem(self) -> tuple:
        key, value = super().popitem()
        self._on_drop(value)
        return key, value


class _TTLCache(_Dropping, cachetools.TTLCache):
    """cachetools' TTLCache (one time to live), telling `on_drop`."""


class _TLRUCache(_Dropping, cachetools.TLRUCache):
    """cachetools' TLRUCache (a time to live per item), telling `on_drop`."""


class FileKey(NamedTuple):
    """What names one version of a file in the block caches: its URL, size and modification time.
    A file that changes on the server has a new key, so old and new bytes never mix."""

    url: str
    size: int
    mtime: float


class Store(Protocol):
    """Where a LoadingCache keeps what it has loaded, one key at a time: the seam where a tier plugs in.

    MemoryStore (below) is the first implementation; tests/test_stores.py holds the tests every
    store must pass. A store may drop anything at any time (a budget, an expiry); `put` may refuse
    a value (too large) by keeping nothing. Called under the LoadingCache's lock."""

    def get(self, key: Hashable) -> Any | None:
        """The value kept for `key`, or None."""

    def put(self, key: Hashable, value: Any) -> None:
        """Keep `value` for `key` (or nothing, when the store cannot)."""

    def discard(self, key: Hashable) -> bool:
        """Forget `key`; whether it was kept."""

    def keys(self) -> list[Hashable]:
        """Every key kept now."""

    @property
    def current_size(self) -> int:
        """What is kept, in the units of the store's budget."""

    @property
    def max_size(self) -> int:
        """The store's budget."""


class MemoryStore:
    """A Store in memory: a budget in units of `getsizeof` (items by default), least recently used out
    first, and a time to live (`ttl`: seconds, or a function of the value giving them). Tells `on_drop`
    of every value it lets go of (evicted, expired or discarded)."""

    def __init__(self, max_size: int, ttl: float | Callable[[Any], float],
                 getsizeof: Callable[[Any], int] | None = None, timer: Callable[[], float] = time.monotonic,
                 on_drop: Callable[[Any], None] | None = None) -> None:
        self._on_drop = on_drop or (lambda value: None)
        if callable(ttl):
            self._data = _TLRUCache(maxsize=max_size, ttu=lambda _key, value, now: now + ttl(value), timer=timer,
                                    getsizeof=getsizeof, on_drop=self._on_drop)
        else:
            self._data = _TTLCache(maxsize=max_size, ttl=ttl, timer=timer, getsizeof=getsizeof, on_drop=self._on_drop)

    def get(self, key: Hashable) -> Any | None:
        return self._data.get(key)

    def put(self, key: Hashable, value: Any) -> None:
        try:
            self._data[key] = value
        except ValueError:  # larger than the whole budget: serve it, never keep it
            pass

    def discard(self, key: Hashable) -> bool:
        if key not in self._data:
            return False
        self._on_drop(self._data.pop(key))
        return True

    def keys(self) -> list[Hashable]:
        return list(self._data.keys())

    @property
    def current_size(self) -> int:
        self._data.expire()
        return int(self._data.currsize)

    @property
    def max_size(self) -> int:
        return int(self._data.maxsize)


class TieredStore:
    """Two stores as one: `upper` (memory) in front of `lower` (a disk tier). A value is put in both; a miss
    in `upper` that `lower` has is promoted into `upper`. A use served by `upper` is told to `lower`
    (its `touch`, when it has one), so that `lower`'s least recently used is really that. Its size and
    budget are `lower`'s (everything kept is there).

    `write_behind`: values go to `lower` from a thread of its own, so that a reader never waits for a
    disk write (about `queue_bytes` wait to be written, served from the queue meanwhile). A put never
    waits; whoever brings values in calls `wait_for_room` first, outside any lock of the cache, so that
    only it is held back while the disk catches up. `flush` waits until every value put is in `lower`;
    `close` flushes."""

    def __init__(self, upper: Store, lower: Store, write_behind: bool = False, queue_bytes: int = 32 << 20) -> None:
        self.upper, self.lower = upper, lower
        self._touch = getattr(lower, "touch", None)
        self._write_behind, self._queue_max = write_behind, queue_bytes
        self._queue: dict[Hashable, Any] = {}  # values being written to `lower`, oldest first
        self._queued = 0
        self._writing: Hashable | None = None
        self._cv = threading.Condition()
        self._writer: threading.Thread | None = None
        self._closed = False

    def get(self, key: Hashable) -> Any | None:
        value = self.near(key)
        if value is None:
            value = self.lower.get(key)
            if value is not None:
                self.upper.put(key, value)
        return value

    def near(self, key: Hashable) -> Any | None:
        """The value from memory (`upper`, or the write queue), never from `lower`: what a cache may ask
        under its lock. `far` is the rest of a lookup, for outside it."""
        value = self.upper.get(key)
        if value is not None:
            if self._touch is not None:
                self._touch(key)
            return value
        value = self._queue.get(key) if self._write_behind else None
        if value is not None:  # memory let go of it before the disk had it: taken back
            self.upper.put(key, value)
        return value

    def far(self, key: Hashable) -> Any | None:
        """The value from `lower` (a disk read), not yet in `upper` (`promote` puts it there)."""
        return self.lower.get(key)

    def promote(self, key: Hashable, value: Any) -> None:
        """A value `far` found: into `upper` only (it is in `lower` already)."""
        self.upper.put(key, value)

    def put(self, key: Hashable, value: Any) -> None:
        self.upper.put(key, value)
        if not self._write_behind:
            self.lower.put(key, value)
            return
        if len(value) > self.lower.max_size:  # never kept below: not queued either
            return
        with self._cv:
            if self._closed:
                return
            old = self._queue.pop(key, None)
            self._queued += len(value) - (len(old) if old is not None else 0)
            self._queue[key] = value
            if self._writer is None:
                self._writer = threading.Thread(target=self._write, name="desfs-disk-writer", daemon=True)
                self._writer.start()
            self._cv.notify_all()

    def wait_for_room(self, nbytes: int) -> None:
        """Wait while the values waiting to be written hold `queue_bytes` already (the disk is behind)."""
        if not self._write_behind:
            return
        with self._cv:
            while self._queued + nbytes > self._queue_max and self._queue and not self._closed \
                    and self._writer is not None and self._writer.is_alive():
                self._cv.wait(1.0)

    def _write(self) -> None:
        while True:
            with self._cv:
                while not self._queue:
                    if self._closed:
                        return
                    self._cv.wait()
                key, value = next(iter(self._queue.items()))
                self._writing = key
            try:
                self.lower.put(key, value)
            except Exception:  # noqa: BLE001 (a store that fails keeps nothing: the value is served from above)
                pass
            with self._cv:
                if self._queue.get(key) is value:
                    del self._queue[key]
                    self._queued -= len(value)
                self._writing = None
                self._cv.notify_all()

    def flush(self) -> None:
        """Wait until every value put so far is in `lower`."""
        with self._cv:
            while (self._queue or self._writing is not None) and self._writer is not None and self._writer.is_alive():
                self._cv.wait(1.0)

    def close(self) -> None:
        self.flush()
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def discard(self, key: Hashable) -> bool:
        with self._cv:
            queued = self._queue.pop(key, None)
            if queued is not None:
                self._queued -= len(queued)
        if self._writing == key:
            self.flush()
        upper = self.upper.discard(key)
        return self.lower.discard(key) or upper or queued is not None

    def keys(self) -> list[Hashable]:
        self.flush()
        return list(dict.fromkeys(self.lower.keys() + self.upper.keys()))

    @property
    def current_size(self) -> int:
        self.flush()
        return self.lower.current_size

    @property
    def max_size(self) -> int:
        return self.lower.max_size


class _Flight:
    """A load under way: the threads that miss the same key wait on it, until its deadline."""

    def __init__(self, generation: int, patience: float | None) -> None:
        self.done = threading.Event()
        self.generation = generation
        self.deadline = None if patience is None else time.monotonic() + patience
        self.value: Any = None
        self.error: BaseException | None = None


class LoadingCache:
    """A TTL cache bounded by `max_size` (in units of `getsizeof`, items by default).

    `ttl` is seconds, or a function of a value giving its own seconds.

    `get(key, load)` returns the cached value or calls `load()` once, however
    many threads miss the same key at the same moment; the others wait for it
    and share its value or its error. Failed loads are not cached. A caller
    that loads several keys at once uses `claim`, then `fulfil` or `fail` on
    each key it claimed. Thread-safe.

    Waiting is bounded: a load is given `patience` seconds (per call, else the
    cache's own; None: no bound) from its start, and a thread waiting for it
    longer gets TimeoutError (ETIMEDOUT), while the load itself goes on.
    """

    def __init__(
        self,
        max_size: int,
        ttl: float | Callable[[Any], float],
        getsizeof: Callable[[Any], int] | None = None,
        timer: Callable[[], float] = time.monotonic,
        on_drop: Callable[[Any], None] | None = None,
        patience: float | None = None,
        store: Store | None = None,
    ) -> None:
        """Values are kept in `store`, else in a MemoryStore of these `max_size`, `ttl`, `getsizeof`,
        `timer` and `on_drop`."""
        self.patience = patience
        self._store: Store = store or MemoryStore(max_size, ttl, getsizeof, timer, on_drop)
        # A tiered store is asked for its memory part only under the lock; its disk part is a load
        # (BlockCache._fill reads it outside the lock, single-flight like any other load).
        self._near = getattr(self._store, "near", self._store.get)
        self._lock = threading.Lock()
        self._flights: dict[Hashable, _Flight] = {}
        self._generation = 0  # bumped by discards, so a load that raced one is not stored

    def get(self, key: Hashable, load: Callable[[], Any], patience: float | None = None) -> Any:
        with self._lock:
            value = self._store.get(key)
            if value is not None:
                return value
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._start(key, patience)
        if not leader:
            return self._wait(flight)
        try:
            value = load()
        except BaseException as exc:
            self.fail(key, exc)
            raise
        self.fulfil(key, value)
        return value

    def cached_or_waited(self, key: Hashable) -> Any | None:
        """The value of `key`: cached (in memory: a tier below is read by the load), or the end of its
        load under way (its error raised); None when it is neither cached nor being loaded."""
        with self._lock:
            value = self._near(key)
            if value is not None:
                return value
            flight = self._flights.get(key)
        return None if flight is None else self._wait(flight)

    def _wait(self, flight: _Flight) -> Any:
        if not flight.done.wait(None if flight.deadline is None else max(0.0, flight.deadline - time.monotonic())):
            raise TimeoutError(errno.ETIMEDOUT, "gave up waiting for a load under way in another thread")
        if flight.error is not None:
            raise flight.error
        return flight.value

    def claim(self, key: Hashable, patience: float | None = None) -> bool:
        """Take the load of `key` on oneself: False when it is cached or already being loaded."""
        with self._lock:
            if self._near(key) is not None or key in self._flights:
                return False
            self._start(key, patience)
            return True

    def fulfil(self, key: Hashable, value: Any, promoted: bool = False) -> None:
        """End a claimed load with its value: stored, and handed to every waiter. `promoted`: a value the
        store's tier below holds already (read by `far`): put in memory only."""
        with self._lock:
            flight = self._flights.pop(key)
            if flight.generation == self._generation:
                (self._store.promote if promoted else self._store.put)(key, value)
        flight.value = value
        flight.done.set()

    def fail(self, key: Hashable, error: BaseException) -> None:
        """End a claimed load with an error: raised in every waiter, nothing stored."""
        with self._lock:
            flight = self._flights.pop(key)
        flight.error = error
        flight.done.set()

    def peek(self, key: Hashable) -> Any | None:
        with self._lock:
            return self._store.get(key)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return self._store.get(key) is not None

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._store.put(key, value)

    def promote(self, key: Hashable, value: Any) -> None:
        """Keep in memory a value read from the store's tier below (not written there again)."""
        with self._lock:
            getattr(self._store, "promote", self._store.put)(key, value)

    def discard_where(self, predicate: Callable[[Hashable], bool]) -> int:
        """Drop every entry whose key satisfies `predicate`; returns how many."""
        with self._lock:
            self._generation += 1  # no load under way now is stored
            return sum(self._store.discard(k) for k in self._store.keys() if predicate(k))

    def discard(self, key: Hashable) -> bool:
        """Drop one entry (without looking at every other key); whether it was there."""
        with self._lock:
            self._generation += 1  # no load under way now is stored
            return self._store.discard(key)

    @property
    def current_size(self) -> int:
        return self._store.current_size  # (not under the lock: a tier below may have to catch up first)

    @property
    def max_size(self) -> int:
        return self._store.max_size

    def _start(self, key: Hashable, patience: float | None) -> _Flight:
        flight = self._flights[key] = _Flight(self._generation, self.patience if patience is None else patience)
        return flight



# A fetcher streams bytes [start, stop) of one file into `write`, in order, in pieces of any size.
# The `write` handed to it here also offers `room()` and `filled(n)`, so a fetcher that can
# read into memory it is given puts the bytes straight into their block.
Fetcher = Callable[[int, int, Callable[[bytes], object]], None]


PIECE = 64 * 1024  # what a read that is not part of a sequential run fetches at a time (BlockCache.view's small)
MAPPED_MIN = 256 * 1024  # blocks this large live in memory maps of their own; smaller ones in bytearrays


class Spares:
    """Memory for blocks: the maps of blocks the cache let go of, reused for new ones.

    A block of MAPPED_MIN bytes or more gets an anonymous memory map, not a
    bytearray: a bytearray is zero-filled first, one more pass over every byte,
    under the GIL. Fresh memory still costs a page fault per 4 KiB when first
    written (about 0.4 ms per MiB on the benchmark machine, more than the socket
    read that fills it), so the maps of dropped blocks are kept, up to
    `max_bytes`, for the next blocks of the same size. A map is reused only when
    nothing else refers to it any more (no reader's view of it, no waiter
    holding it): its reference count tells, and no new reference can appear
    once only this list holds it.
    """

    _UNREFERENCED = 3  # during the check: the list, the loop's name, getrefcount's own argument

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.reused = 0
        self._maps: list[mmap.mmap] = []
        self._bytes = 0
        self._lock = threading.Lock()

    def give(self, buf: Any) -> None:
        """Keep the memory of a block the cache let go of, for a later one (oldest out when full)."""
        if not isinstance(buf, mmap.mmap) or len(buf) > self.max_bytes:
            return
        with self._lock:
            while self._maps and self._bytes + len(buf) > self.max_bytes:
                self._bytes -= len(self._maps.pop(0))
            self._maps.append(buf)
            self._bytes += len(buf)

    def take(self, n: int) -> bytearray | mmap.mmap:
        """A writable buffer of `n` bytes: a spare map nobody holds, or new memory."""
        if n < MAPPED_MIN:
            return bytearray(n)
        with self._lock:
            maps = self._maps
            for i in range(len(maps) - 1, -1, -1):
                buf = maps[i]
                if len(buf) == n and sys.getrefcount(buf) == self._UNREFERENCED:
                    del maps[i]
                    self._bytes -= n
                    self.reused += 1
                    return buf
        return mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

    @property
    def spare_bytes(self) -> int:
        with self._lock:
            return self._bytes


class OverDelivery(RuntimeError):
    """A fetcher sent more bytes than asked for: none of what it sent is to be trusted."""


class _BlockWriter:
    """The `write` of a fetch of a run of blocks: fills each block's own buffer in turn and
    hands it to `done(index, block)` as soon as it is complete."""

    def __init__(self, size: int, block_size: int, run: list[int], done: Callable[[int, Any], None],
                 alloc: Callable[[int], Any]) -> None:
        self.size, self.block_size, self.done, self.alloc = size, block_size, done, alloc
        self.pending = list(run)
        self._block: bytearray | None = None
        self._view = memoryview(b"")
        self._have = 0

    def room(self) -> memoryview:
        """Where the next bytes go: the unfilled rest of the current block."""
        if self._block is None:
            if not self.pending:
                raise OverDelivery("fetcher delivered more bytes than the blocks asked for")
            first = self.pending[0] * self.block_size
            self._block = self.alloc(min(self.size, first + self.block_size) - first)
            self._view = memoryview(self._block)
        return self._view[self._have:]

    def filled(self, n: int) -> None:
        """`n` more bytes are in; a complete block goes to its waiters."""
        self._have += n
        if self._block is not None and self._have == len(self._block):
            block, self._block, self._have = self._block, None, 0
            self._view = memoryview(b"")  # hold no reference to a finished block (Spares count them)
            self.done(self.pending.pop(0), block)

    def __call__(self, chunk: bytes) -> None:
        """Copy a piece in, for fetchers that bring their own buffers."""
        chunk = memoryview(chunk)
        while chunk:
            room = self.room()
            take = min(len(room), len(chunk))
            room[:take] = chunk[:take]
            self.filled(take)
            chunk = chunk[take:]


class BlockCache:
    """Fixed-size blocks of files, in a LoadingCache bounded in bytes.

    A file is named by `key`, which must change whenever its content may (the
    caller puts the file's version in it), so old and new bytes never mix.
    Blocks come from a streaming `Fetcher`; a run of blocks is fetched with one
    call, and each block is handed to its waiters as soon as its bytes are in.
    The memory of blocks let go of is reused (Spares), within `max_bytes`: the
    cached blocks and the spares together never hold more.
    """

    SPARES_MAX = 8 * 1024 * 1024

    def __init__(self, max_bytes: int, block_size: int, ttl: float, timer: Callable[[], float] = time.monotonic,
                 patience: Callable[[int], float] | None = None, store: Store | None = None,
                 below: Store | None = None):
        """`patience(n)`: seconds a load of n bytes may take before threads waiting for it give up.
        Blocks are kept in `store` (keys: (file key, block index); values: the blocks' buffers), else
        in memory (a MemoryStore of `max_bytes` less the spares, `ttl`), in front of the store `below`
        when there is one (a TieredStore: a disk tier)."""
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self.block_size = block_size
        self.piece = min(PIECE, block_size)
        self._patience = patience or (lambda nbytes: None)
        spare = min(self.SPARES_MAX, max_bytes // 16) if block_size >= MAPPED_MIN else 0
        self.spares = Spares(spare)
        if store is None and below is not None:
            store = TieredStore(MemoryStore(max_bytes - spare, ttl, getsizeof=len, timer=timer,
                                            on_drop=self.spares.give), below, write_behind=True)
        self.below = below
        if below is not None and hasattr(below, "alloc"):  # blocks read from below go in reused memory too
            below.alloc = self.spares.take
        self.blocks = LoadingCache(max_bytes - spare, ttl, getsizeof=len, timer=timer, on_drop=self.spares.give,
                                   store=store)
        self._room = getattr(store, "wait_for_room", None)
        self._far = getattr(store, "far", None)

    def read(self, key: Hashable, size: int, offset: int, length: int, fetch: Fetcher) -> bytes:
        """Bytes [offset, offset+length) of a file of `size` bytes, clipped to its end."""
        return bytes(self.view(key, size, offset, length, fetch))

    def view(self, key: Hashable, size: int, offset: int, length: int, fetch: Fetcher,
             small: bool = False) -> memoryview:
        """Like `read`, without copying when the range lies in one block: a view of the cached
        block itself, which nobody may write to. A range across blocks is joined (one copy).
        `small`: a read that is not part of a sequential run; what no block holds is fetched in
        pieces of PIECE bytes, about what was asked (one short request), not in whole blocks."""
        stop = min(size, offset + length)
        if offset >= stop:
            return memoryview(b"")
        bs = self.block_size
        if small and self.piece < bs:
            return self._view_small(key, size, offset, stop, fetch)
        first, last = offset // bs, (stop - 1) // bs
        cut, end = offset - first * bs, stop - last * bs
        if first == last:
            return memoryview(self.block(key, size, first, fetch))[cut:end]
        parts = [memoryview(self.block(key, size, i, fetch)) for i in range(first, last + 1)]
        parts[0], parts[-1] = parts[0][cut:], parts[-1][:end]
        return memoryview(bytearray().join(parts))

    def _view_small(self, key: Hashable, size: int, offset: int, stop: int, fetch: Fetcher) -> memoryview:
        """Bytes [offset, stop) from the blocks that are cached (or under way), the rest from pieces, the
        missing ones fetched with one request."""
        bs, p = self.block_size, self.piece
        spans: list[tuple[int, int, Any]] = []  # (start, stop, the block holding them, or None: pieces)
        for index in range(offset // bs, (stop - 1) // bs + 1):
            lo, hi = max(offset, index * bs), min(stop, (index + 1) * bs)
            block = self.blocks.cached_or_waited((key, index, bs))
            if block is None and self._far is not None:  # a whole block on disk beats pieces from the network
                block = self._far((key, index, bs))
                if block is not None:
                    self.blocks.promote((key, index, bs), block)
            if block is not None:
                COUNTERS.add("block_hits")
            spans.append((lo, hi, block))
        wanted = sorted({n for lo, hi, block in spans if block is None for n in range(lo // p, -(-hi // p))})
        pieces: dict[int, Any] = {}
        while True:
            missing = []
            for n in wanted:
                if n not in pieces:
                    found = self.blocks.cached_or_waited((key, n, p))
                    if found is None:
                        missing.append(n)
                    else:
                        pieces[n] = found
            if not missing:
                break
            COUNTERS.add("block_misses")
            pieces.update(self._fill(key, size, missing[0], missing[-1] + 1, fetch, unit=p)[0])
        parts: list[memoryview] = []
        for lo, hi, block in spans:
            if block is not None:
                base = lo - lo % bs
                parts.append(memoryview(block)[lo - base:hi - base])
                continue
            for n in range(lo // p, -(-hi // p)):
                a, b = max(lo, n * p), min(hi, (n + 1) * p)
                parts.append(memoryview(pieces[n])[a - n * p:b - n * p])
        return parts[0] if len(parts) == 1 else memoryview(bytearray().join(parts))

    def block(self, key: Hashable, size: int, index: int, fetch: Fetcher) -> bytearray:
        """Block `index` of the file, fetched once however many readers want it: cached, or waited for
        while another reader or readahead fetches it, or fetched here (through `_fill`, as readahead)."""
        while True:
            found = self.blocks.cached_or_waited((key, index, self.block_size))
            if found is not None:
                COUNTERS.add("block_hits")
                return found
            COUNTERS.add("block_misses")
            filled, _ = self._fill(key, size, index, index + 1, fetch)
            if index in filled:  # (else another thread took the load first: wait for it)
                return filled[index]

    def fetch_run(self, key: Hashable, size: int, first: int, last: int, fetch: Fetcher) -> int:
        """Fetch the blocks [first, last) that are neither cached nor under way; returns how many came from
        the network (readahead: a disk tier's blocks say nothing of the link)."""
        return self._fill(key, size, first, last, fetch)[1]

    def _fill(self, key: Hashable, size: int, first: int, last: int, fetch: Fetcher,
              unit: int | None = None) -> tuple[dict[int, Any], int]:
        """The one path by which blocks come into the cache: claims the blocks [first, last) that are
        neither cached nor under way, fetches each contiguous run of them with one `fetch` call, and
        hands each block to its waiters (and the store) as soon as its bytes are in. Returns the
        blocks it brought in, and how many of them came from `fetch`. Errors are handed to the waiters
        of the blocks not yet delivered, and raised.
        `unit`: pieces of this size instead of blocks (see `view`'s `small`). Every key is (file key, index,
        size of the unit): a disk tier kept from a mount with another block size never answers for it.
        Blocks a disk tier holds are read from it here, outside the cache's lock.
        """
        bs = unit or self.block_size
        ident = lambda i: (key, i, bs)  # noqa: E731 (the size in the key: a disk tier outlives a --block-size)
        last = min(last, -(-size // bs))
        claimed = [i for i in range(first, last) if self.blocks.claim(ident(i), self._patience((i - first + 1) * bs))]
        filled: dict[int, Any] = {}
        if self._far is not None and claimed:  # a disk tier: what it holds is read from it, in this thread
            for i in claimed:
                try:
                    found = self._far(ident(i))
                except BaseException as exc:
                    for j in claimed:
                        if j not in filled:
                            self.blocks.fail(ident(j), exc)
                    raise
                if found is not None:
                    filled[i] = found
                    self.blocks.fulfil(ident(i), found, promoted=True)
            claimed = [i for i in claimed if i not in filled]
        from_disk = len(filled)
        runs: list[list[int]] = []
        for i in claimed:
            if runs and runs[-1][-1] == i - 1:
                runs[-1].append(i)
            else:
                runs.append([i])

        def deliver(i: int, block: Any) -> None:
            filled[i] = block
            self.blocks.fulfil(ident(i), block)  # its waiters have it at once, the disk tier's queue full or not
            if self._room is not None:  # a disk tier behind: this fetch waits for it before bringing more
                self._room(0)

        for n, run in enumerate(runs):
            splitter = _BlockWriter(size, bs, run, deliver, self.spares.take)
            try:
                fetch(run[0] * bs, min(size, (run[-1] + 1) * bs), splitter)
                if splitter.pending:
                    short = len(splitter.pending)
                    raise RuntimeError(f"fetch of blocks {run[0]}..{run[-1]} ended {short} blocks short")
            except BaseException as exc:
                for i in splitter.pending + [i for later in runs[n + 1:] for i in later]:
                    self.blocks.fail(ident(i), exc)
                if isinstance(exc, OverDelivery):  # the blocks it did deliver are suspect too
                    for i in run:
                        if filled.pop(i, None) is not None:
                            self.blocks.discard(ident(i))
                raise
        return filled, len(filled) - from_disk

    @property
    def memory_bytes(self) -> int:
        """Bytes of blocks held in memory (the tier in front, when there is a disk tier)."""
        store = self.blocks._store
        return (store.upper if isinstance(store, TieredStore) else store).current_size

    def flush(self) -> None:
        """Wait until the store has written what it was given (a disk tier's queue)."""
        flush = getattr(self.blocks._store, "flush", None)
        if flush is not None:
            flush()

    def close(self) -> None:
        """Let the store finish what it is writing (a disk tier's queue)."""
        close = getattr(self.blocks._store, "close", None)
        if close is not None:
            close()

    def discard_file(self, predicate: Callable[[Hashable], bool]) -> int:
        """Drop the blocks of every file whose key satisfies `predicate`."""
        return self.blocks.discard_where(lambda k: predicate(k[0]))
