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

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class LoadingCache:
    """A TTL cache bounded by `max_size` (in units of `getsizeof`, items by default).

    `get(key, load)` returns the cached value or calls `load()` once, however
    many threads miss the same key at the same moment; the others wait for it
    and share its value or its error. Failed loads are not cached. Thread-safe.
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
                flight = self._flights[key] = _Flight()
                self.loads += 1
                generation = self._generation
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            flight.value = load()
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
                if flight.error is None and generation == self._generation:
                    self._store(key, flight.value)
            flight.done.set()
        return flight.value

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

    def _store(self, key: Hashable, value: Any) -> None:
        try:
            self._data[key] = value
        except ValueError:  # larger than the whole budget: serve it, never keep it
            pass


class BlockCache:
    """Fixed-size blocks of files, in a LoadingCache bounded in bytes.

    A file is named by `key`, which must change whenever its content may (the
    caller puts the file's version in it), so old and new bytes never mix.
    """

    def __init__(self, max_bytes: int, block_size: int, ttl: float, timer: Callable[[], float] = time.monotonic):
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self.block_size = block_size
        self.blocks = LoadingCache(max_bytes, ttl, getsizeof=len, timer=timer)

    def read(self, key: Hashable, size: int, offset: int, length: int, fetch: Callable[[int, int], bytes]) -> bytes:
        """Bytes [offset, offset+length) of a file of `size` bytes, clipped to its end."""
        stop = min(size, offset + length)
        if offset >= stop:
            return b""
        bs = self.block_size
        first, last = offset // bs, (stop - 1) // bs
        parts = [self.block(key, size, i, fetch) for i in range(first, last + 1)]
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        cut = offset - first * bs
        return data[cut : cut + stop - offset]

    def block(self, key: Hashable, size: int, index: int, fetch: Callable[[int, int], bytes]) -> bytes:
        """Block `index` of the file, fetched once however many readers want it."""
        start = index * self.block_size
        stop = min(size, start + self.block_size)

        def load() -> bytes:
            data = fetch(start, stop)
            if len(data) != stop - start:  # the fetcher's contract; never hand out short blocks
                raise RuntimeError(f"fetch({start}, {stop}) returned {len(data)} bytes")
            return data

        return self.blocks.get((key, index), load)

    def has_block(self, key: Hashable, index: int) -> bool:
        return (key, index) in self.blocks

    def discard_file(self, predicate: Callable[[Hashable], bool]) -> int:
        """Drop the blocks of every file whose key satisfies `predicate`."""
        return self.blocks.discard_where(lambda k: predicate(k[0]))
