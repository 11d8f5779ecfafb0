"""Readahead layer: per open file, detect sequential reading and fetch ahead of it in parallel.

Works on a BlockCache and a streaming fetcher; knows no HTTP and no FUSE. A
stream starts with no readahead. Once a run of sequential reads has read more
than START_AFTER times `min_window` (more than the kernel reads on its own after
one read: the read, up to 1 MiB, and one readahead window of up to 1 MiB), the
window is as large as the run so far (so it doubles as the reader keeps up),
from `min_window` up to `max_window`, and at once as large as the fetches
allowed can fill; the bytes in it are fetched as parts of several blocks on a
small pool of threads. A read far from the run starts a new one with
no readahead, so random access (a FITS header, a seek to one HDU) costs only the
blocks it touches; reads that cover less than half the run's span (a reader
hopping forward) are no sequential run either.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor

from desfs.cache import BlockCache, Fetcher

log = logging.getLogger(__name__)

START_AFTER = 2  # a sequential run gets readahead once it has read more than this many min_windows
SMALL_RUN = 256 * 1024  # a run that starts inside a file is read in small pieces until it is longer than this


class Prefetcher:
    """A pool of `workers` threads that fetch runs of blocks into a BlockCache.

    How many fetches run at once adapts to the link: parallel range requests
    pay off when each stream is slow (a far server, a per-connection cap), and
    only cost CPU when one stream is already fast (a near server). The rate of a
    fetch that ran alone sets the limit to about `target_rate` / rate, between 1
    and `workers`; fetches that overlapped others are not measured, since on a
    busy CPU they look slow for want of CPU, not of network. A reader that
    reaches blocks still waiting in the queue (`overtaken`) shows that the
    fetches allowed are too few for it, whatever their rate: one more is allowed.

    A link shared by all connections fills up before each stream's rate says it
    should: the total rate of readahead is measured over each PERIOD in which
    fetches waited for a slot (the limit held them back), and once more than one
    fetch is allowed, a quarter fewer are tried; when that costs less than
    1/GAIN of the total rate, the link was full and the fewer stay (and fewer
    again are tried), else the limit goes back and stays for HOLD seconds.
    """

    PERIOD = 1.0  # seconds over which the total rate is measured
    GAIN = 1.1  # a quarter fewer fetches that keep the rate within this factor: the link is full
    HOLD = 30.0  # seconds a limit that fewer fetches could not match is kept before trying again

    def __init__(self, blocks: BlockCache, workers: int, target_rate: float = 200e6,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.blocks = blocks
        self.workers = max(1, workers)
        self.target_rate = target_rate
        self._clock = clock
        self._period: list = [None, 0, False]  # start, bytes fetched, whether a fetch waited for a slot
        self._tried: tuple[int, float] | None = None  # (limit, best total rate) before fewer were tried
        self._hold_until = 0.0
        self._steady = False  # the last period was held back too (not the ramp of a new run)
        self.limit = 1  # fetches allowed at once; opens up once a lone fetch shows a slow stream
        self.rated = False  # a lone fetch has been measured
        self._active = 0
        self._readers = 0  # readers' own fetches under way (measured)
        self._started = 0  # fetches begun so far, to tell whether one ran alone
        self._slots = threading.Condition()
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="desfs-readahead")
        self._closed = False

    def submit(self, key: Hashable, size: int, first: int, last: int, fetch: Fetcher) -> None:
        """Fetch blocks [first, last) in the background; failures are left for the reader to meet."""
        if not self._closed and first < last:
            self._pool.submit(self._run, key, size, first, last, fetch)

    def _run(self, key, size, first, last, fetch) -> None:
        with self._slots:
            while self._active >= self.limit and not self._closed:
                self._period[2] = True
                self._slots.wait(0.5)
            if self._closed:  # closed while waiting for a slot: nobody will read these blocks
                return
            ticket = self._begin("_active")
        started = time.monotonic()
        try:
            fetched = self.blocks.fetch_run(key, size, first, last, fetch)
        except Exception as exc:  # the reader that needs these blocks fetches them again and sees the error
            log.debug("readahead of blocks %d..%d of %r failed: %s", first, last - 1, key, exc)
            fetched = 0
        finally:
            alone = self._end("_active", ticket)
        if fetched and alone:
            self._adapt(fetched * self.blocks.block_size / max(time.monotonic() - started, 1e-6))
        if fetched:
            self.measure(fetched * self.blocks.block_size, self._clock())

    def _begin(self, counter: str) -> int | None:
        """A fetch begins, counted in `counter` ("_active": readahead's, "_readers": readers' own); the
        lock is held. Its ticket if it begins alone, else None."""
        setattr(self, counter, getattr(self, counter) + 1)
        self._started += 1
        return self._started if self._active + self._readers == 1 else None

    def _end(self, counter: str, ticket: int | None) -> bool:
        """The fetch of `ticket` (from _begin) ended: whether it ran alone from start to end."""
        with self._slots:
            setattr(self, counter, getattr(self, counter) - 1)
            self._slots.notify()
            return ticket is not None and self._started == ticket

    def measure(self, nbytes: int, now: float) -> None:
        """`nbytes` more were fetched by readahead; at the end of each PERIOD, the total rate steers the limit."""
        with self._slots:
            period = self._period
            if period[0] is None:
                period[:] = [now, 0, False]
            period[1] += nbytes
            elapsed = now - period[0]
            if elapsed < self.PERIOD:
                return
            rate, held_back = period[1] / elapsed, period[2]
            period[:] = [now, 0, False]
            if elapsed > 2 * self.PERIOD and self._tried is not None:  # a pause: what was tried is not measured
                self.limit, self._tried = self._tried[0], None
                self._slots.notify_all()
            if not held_back or not self.rated or elapsed > 2 * self.PERIOD:  # the reader (or a pause) set the
                self._steady = False  # pace, not the limit
                return
            tried, self._tried = self._tried, None
            if tried is not None:
                more, before = tried
                if rate * self.GAIN < before:  # fewer fetches cost: the link was not full
                    self.limit = more
                    self._hold_until = now + self.HOLD
                    self._slots.notify_all()
                    return
                log.debug("readahead: the link is full at %.0f MB/s: %d fetches at once, not %d",
                          rate / 1e6, self.limit, more)
            if self._steady and self.limit > 1 and now >= self._hold_until:  # try a quarter fewer
                self._tried = (self.limit, max(rate, tried[1] if tried else 0.0))  # (against the best rate seen)
                self.limit -= max(1, self.limit // 4)
            self._steady = True

    def measured(self, fetch: Fetcher) -> Fetcher:
        """`fetch` for a reader's own fetches (not readahead's): until the link is rated, one that ran alone
        rates it as a lone readahead fetch would, so that readahead opens as many fetches as the link needs
        from its first request on."""
        def run(start: int, stop: int, write) -> None:
            with self._slots:
                ticket = self._begin("_readers")
            began = time.monotonic()
            try:
                fetch(start, stop, write)
            finally:
                alone = self._end("_readers", ticket)
            if alone and not self.rated and stop - start >= self.blocks.block_size:  # (a small fetch's time is
                # mostly its round trip: it would take any link for a slow one)
                self._adapt((stop - start) / max(time.monotonic() - began, 1e-6))
        return run

    def overtaken(self) -> None:
        """A reader reached blocks still queued here: allow one more fetch at once.

        Only once a lone fetch has given the link's rate: before that, fetches
        that overlap would never be measured, and a slow link would crawl up one
        fetch at a time instead of opening at once."""
        with self._slots:
            if self.rated and self.limit < self.workers:
                self.limit += 1
                log.debug("readahead: overtaken by a reader, %d fetches at once", self.limit)
                self._slots.notify_all()

    def _adapt(self, rate: float) -> None:
        wanted = max(1, min(self.workers, math.ceil(self.target_rate / rate)))
        with self._slots:
            self.rated = True
            if wanted != self.limit:
                log.debug("readahead: %.0f MB/s per stream, %d fetches at once", rate / 1e6, wanted)
                self.limit = wanted
                self._slots.notify_all()

    def close(self) -> None:
        self._closed = True
        with self._slots:
            self._slots.notify_all()
        self._pool.shutdown(wait=False, cancel_futures=True)


class ReadStream:
    """The reads of one open file: cache lookups plus a readahead window that adapts to them."""

    def __init__(self, blocks: BlockCache, prefetcher: Prefetcher | None, key: Hashable, size: int,
                 fetch: Fetcher, min_window: int, max_window: int) -> None:
        self.blocks, self.prefetcher = blocks, prefetcher
        self.key, self.size, self.fetch = key, size, fetch
        self._own = prefetcher.measured(fetch) if prefetcher is not None else fetch  # this reader's own fetches
        self.min_window, self.max_window = min_window, max_window
        self.window = 0  # bytes to keep fetched ahead of the reader
        self._start = 0  # where the current sequential run began
        self._high = -1  # end of the furthest read of the current sequential run (-1: none yet)
        self._read = 0  # bytes the current run's reads asked for (less than its span when it skips ahead)
        self._small = False  # the last read was not part of a sequential run: it fetches about what it asks
        self._requested = 0  # bytes up to which readahead has been asked for
        self._lock = threading.Lock()

    def read(self, offset: int, length: int) -> memoryview:
        """Bytes [offset, offset+length), clipped to the end: a view nobody may write to (BlockCache.view)."""
        with self._lock:
            asked = self.window > 0 and self._start <= offset < self._requested  # readahead has asked for it
            plan = self._plan(offset, length)
            small = self._small
        if plan:
            self._submit(*plan)
        return self.blocks.view(self.key, self.size, offset, length, self._overtaking if asked else self._own,
                                small=small)

    def _overtaking(self, start: int, stop: int, write) -> None:
        """The fetch of a block this reader needs now, although readahead asked for it: it is
        neither cached nor under way (else the cache would not fetch it), so the reader is faster
        than the fetches allowed at once."""
        self.prefetcher.overtaken()
        self.fetch(start, stop, write)

    def _plan(self, offset: int, length: int) -> tuple[int, int] | None:
        """Update the window for a read at [offset, offset+length); the byte range to fetch ahead."""
        bs = self.blocks.block_size
        slack = max(bs, self.window)  # the kernel's parallel readahead arrives out of order
        end = min(self.size, offset + length)
        if self._high >= 0 and self._high - slack <= offset <= self._high + slack:
            self._high = max(self._high, end)
            self._read += max(0, end - offset)
        else:
            self._start, self._high, self._requested, self._read = offset, end, 0, max(0, end - offset)
        run = self._high - self._start
        # What the run has read: no more than its span (bytes read again count once), and a run whose
        # reads cover less than half its span hops forward (HDF5 between its chunk index and its chunks,
        # a column of chunks): it is not reading sequentially, whatever its length.
        covered = min(self._read, run)
        sequential = 2 * covered >= run
        # A read that jumped inside the file (not the file's start, where sequential readers and header
        # readers begin) and is not (yet) part of a sequential run fetches about what it asks: one round trip.
        self._small = self._start > 0 and (covered <= SMALL_RUN or not sequential)
        if covered <= START_AFTER * self.min_window or not sequential:
            self.window = 0
        else:  # as large as the run so far, and at once as large as the fetches allowed at once can fill
            wide = 2 * self.min_window * (self.prefetcher.limit if self.prefetcher is not None else 1)
            self.window = min(self.max_window, max(self.min_window, run, wide))
        if not self.window or self.prefetcher is None:
            return None
        target = min(self.size, self._high + self.window)
        start = max(self._requested, (end // bs) * bs)
        if target - start < self._part_bytes() and target < self.size:
            return None  # let the gap grow to a whole part: fewer, larger requests
        if target <= start:
            return None
        self._requested = target
        return start, target

    def _part_bytes(self) -> int:
        """Bytes per readahead request: the window shared among the fetches allowed at once (two at least),
        1 to 8 blocks."""
        bs = self.blocks.block_size
        if not self.prefetcher.rated:  # one block a fetch until a lone fetch has shown the link's speed
            return bs
        return bs * max(1, min(8, self.window // bs // max(2, self.prefetcher.limit)))  # (two parts a window at
        # least: one is fetched while the reader is in the other)

    def _submit(self, start: int, stop: int) -> None:
        """Split [start, stop) into parts so that the pool's workers fetch them in parallel; several parts
        asked for at once (the window opening, a reader that caught up) are staggered."""
        bs = self.blocks.block_size
        first, last = start // bs, -(-stop // bs)
        # Near the file's end, smaller parts: what is left shared among the fetches allowed, so that the
        # last ones end together (not one long part at one connection's pace at the end).
        left = -(-self.size // bs) - first  # blocks from here to the end of the file
        part = max(1, min(self._part_bytes() // bs, -(-left // self.prefetcher.limit)))
        parts = -(-(last - first) // part)
        if stop < self.size and 1 < parts <= self.prefetcher.limit:  # several parts, all fetched at once:
            for i, j in staggered(first, last, parts):  # parts that end one after another
                self.prefetcher.submit(self.key, self.size, i, j, self.fetch)
            return
        for i in range(first, last, part):
            self.prefetcher.submit(self.key, self.size, i, min(last, i + part), self.fetch)


def staggered(first: int, last: int, count: int) -> list[tuple[int, int]]:
    """Blocks [first, last) as `count` runs (fewer if there are fewer blocks) that, fetched all at once
    over a link they share evenly, end one after another at even intervals, the first run first.

    Equal parts started together end together: the reader, waiting for the first, gets all at once,
    and the link stands idle for a round trip while the next ones are asked for, at every wave. Run
    k (of n) is longer than run k-1 by 1/(n-k+1) of a unit: the n-k+1 fetches still running share
    the link between the two ends, so the ends are a unit of link time apart. Whole blocks, each
    run at least one and none shorter than the one before."""
    blocks = last - first
    if blocks <= 0:
        return []
    count = max(1, min(count, blocks))
    ideal, step = [], 0.0
    for k in range(1, count + 1):
        step += 1 / (count - k + 1)  # run k: H(count) - H(count - k) units, k = 1..count (they sum to count)
        ideal.append(step)
    sizes = [1] * count  # at least a block each; the rest shared out in proportion, rounded down
    spare = blocks - count
    total = sum(ideal)
    for k, share in enumerate(ideal):
        sizes[k] += int(spare * share / total)
    for k in range(count - 1, count - 1 - (blocks - sum(sizes)), -1):  # what rounding left: the longest runs
        sizes[k] += 1
    sizes.sort()
    runs, at = [], first
    for n in sizes:
        runs.append((at, at + n))
        at += n
    return runs
