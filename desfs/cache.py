"""Cache layer: the only module that imports cachetools.

Knows keys, sizes and time; knows no HTTP, no paths' meaning, no FUSE. Blocks
are read through a `fetch(start, stop) -> bytes` function (half-open ranges),
so every test of this module runs without a server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import cachetools


class _Flight:
    """A load under way: the threads that miss the same key wait on it."""

    def __init__(self, generation: int) -> None:
        self.done = threading.Event()
        self.generation = generation
        self.value: Any = None
        self.error: BaseException | None = None


class LoadingCache:
    """A TTL cache bounded by `max_size` (in units of `getsizeof`, items by default).

    `get(key, load)` returns the cached value or calls `load()` once, however
    many threads miss the same key at the same moment; the others wait for it
    and share its value or its error. Failed loads are not cached. A caller
    that loads several keys at once uses `claim`, then `fulfil` or `fail` on
    each key it claimed. Thread-safe.
    """

    def __init__(
        self,
        max_size: int,
        ttl: float,
        getsizeof: Callable[[Any], int] | None = None,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._data = cachetools.TTLCache(maxsize=max_size, ttl=ttl, timer=timer, getsizeof=getsizeof)
        self._lock = threading.Lock()
        self._flights: dict[Hashable, _Flight] = {}
        self._generation = 0  # bumped by discards, so a load that raced one is not stored
        self.hits = 0
        self.loads = 0

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        with self._lock:
            try:
                value = self._data[key]
            except KeyError:
                pass
            else:
                self.hits += 1
                return value
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._start(key)
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            value = load()
        except BaseException as exc:
            self.fail(key, exc)
            raise
        self.fulfil(key, value)
        return value

    def claim(self, key: Hashable) -> bool:
        """Take the load of `key` on oneself: False when it is cached or already being loaded."""
        with self._lock:
            if key in self._data or key in self._flights:
                return False
            self._start(key)
            return True

    def fulfil(self, key: Hashable, value: Any) -> None:
        """End a claimed load with its value: stored, and handed to every waiter."""
        with self._lock:
            flight = self._flights.pop(key)
            if flight.generation == self._generation:
                self._store(key, value)
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
            return self._data.get(key)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._store(key, value)

    def discard_where(self, predicate: Callable[[Hashable], bool]) -> int:
        """Drop every entry whose key satisfies `predicate`; returns how many."""
        with self._lock:
            self._generation += 1
            doomed = [k for k in list(self._data.keys()) if predicate(k)]
            for key in doomed:
                self._data.pop(key, None)
            return len(doomed)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._data.clear()

    @property
    def current_size(self) -> int:
        with self._lock:
            self._data.expire()
            return int(self._data.currsize)

    @property
    def max_size(self) -> int:
        return int(self._data.maxsize)

    def _start(self, key: Hashable) -> _Flight:
        self.loads += 1
        flight = self._flights[key] = _Flight(self._generation)
        return flight

    def _store(self, key: Hashable, value: Any) -> None:
        try:
            self._data[key] = value
        except ValueError:  # larger than the whole budget: serve it, never keep it
            pass


# A fetcher streams bytes [start, stop) of one file into `write`, in order, in chunks of any size.
Fetcher = Callable[[int, int, Callable[[bytes], object]], None]


class _BlockSplitter:
    """Cuts the byte stream of a run of blocks into blocks, handing each to its waiters when complete."""

    def __init__(self, blocks: LoadingCache, key: Hashable, size: int, block_size: int, run: list[int]) -> None:
        self.blocks, self.key, self.size, self.block_size = blocks, key, size, block_size
        self.pending = list(run)
        self._chunks: list[bytes] = []
        self._have = 0

    def write(self, chunk: bytes) -> None:
        bs = self.block_size
        while chunk and self.pending:
            want = min(self.size, (self.pending[0] + 1) * bs) - self.pending[0] * bs
            take = min(want - self._have, len(chunk))
            self._chunks.append(chunk if take == len(chunk) else chunk[:take])
            chunk = chunk[take:] if take < len(chunk) else b""
            self._have += take
            if self._have == want:  # one copy per block, however the bytes arrived
                block = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
                self._chunks.clear()
                self._have = 0
                self.blocks.fulfil((self.key, self.pending.pop(0)), block)


class BlockCache:
    """Fixed-size blocks of files, in a LoadingCache bounded in bytes.

    A file is named by `key`, which must change whenever its content may (the
    caller puts the file's version in it), so old and new bytes never mix.
    Blocks come from a streaming `Fetcher`; a run of blocks is fetched with one
    call, and each block is handed to its waiters as soon as its bytes are in.
    """

    def __init__(self, max_bytes: int, block_size: int, ttl: float, timer: Callable[[], float] = time.monotonic):
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self.block_size = block_size
        self.blocks = LoadingCache(max_bytes, ttl, getsizeof=len, timer=timer)

    def read(self, key: Hashable, size: int, offset: int, length: int, fetch: Fetcher) -> bytes:
        """Bytes [offset, offset+length) of a file of `size` bytes, clipped to its end."""
        stop = min(size, offset + length)
        if offset >= stop:
            return b""
        bs = self.block_size
        first, last = offset // bs, (stop - 1) // bs
        if first == last:
            cut = offset - first * bs
            return self.block(key, size, first, fetch)[cut : cut + stop - offset]
        parts = [self.block(key, size, i, fetch) for i in range(first, last + 1)]
        data = b"".join(parts)
        cut = offset - first * bs
        return data[cut : cut + stop - offset]

    def block(self, key: Hashable, size: int, index: int, fetch: Fetcher) -> bytes:
        """Block `index` of the file, fetched once however many readers want it."""
        start = index * self.block_size
        stop = min(size, start + self.block_size)

        def load() -> bytes:
            buf = bytearray()
            fetch(start, stop, buf.extend)
            if len(buf) != stop - start:  # the fetcher's contract; never hand out short blocks
                raise RuntimeError(f"fetch({start}, {stop}) gave {len(buf)} bytes")
            return bytes(buf)

        return self.blocks.get((key, index), load)

    def fetch_run(self, key: Hashable, size: int, first: int, last: int, fetch: Fetcher) -> int:
        """Fetch the blocks [first, last) that are neither cached nor under way; returns how many.

        Each contiguous run of claimed blocks is one `fetch` call. Errors are
        handed to the waiters of the blocks not yet delivered, and raised.
        """
        bs = self.block_size
        last = min(last, -(-size // bs))
        claimed = [i for i in range(first, last) if self.blocks.claim((key, i))]
        runs: list[list[int]] = []
        for i in claimed:
            if runs and runs[-1][-1] == i - 1:
                runs[-1].append(i)
            else:
                runs.append([i])
        for n, run in enumerate(runs):
            splitter = _BlockSplitter(self.blocks, key, size, bs, run)
            try:
                fetch(run[0] * bs, min(size, (run[-1] + 1) * bs), splitter.write)
                if splitter.pending:
                    short = len(splitter.pending)
                    raise RuntimeError(f"fetch of blocks {run[0]}..{run[-1]} ended {short} blocks short")
            except BaseException as exc:
                for i in splitter.pending + [i for later in runs[n + 1:] for i in later]:
                    self.blocks.fail((key, i), exc)
                raise
        return len(claimed)

    def has_block(self, key: Hashable, index: int) -> bool:
        return (key, index) in self.blocks

    def discard_file(self, predicate: Callable[[Hashable], bool]) -> int:
        """Drop the blocks of every file whose key satisfies `predicate`."""
        return self.blocks.discard_where(lambda k: predicate(k[0]))
