"""Walk-ahead: the listings a program walking a tree will read next, fetched before it asks.

A program that reads a folder soon after its parent (find, du, ls -R, cp -r) is walking the
tree. From then on, while it keeps reading folders below that parent (the walk's top), the
folders below the top are listed in the background, many at once, in the order a depth-first
walker reads them (a path's components compared, as nginx sorts names), so the listing the
walker wants next is the one being fetched. Bounds:

- at most `workers` listings at once (`--walk-ahead`), in threads of their own;
- at most START + GROWTH × (folders the program has read in the walk) listings fetched ahead
  of it, and never more than AHEAD_MAX: a walk that goes on fetches further ahead, two folders
  read one after the other cost a few listings;
- only below the walk's top, and only while the program goes on reading there: a walk ends
  WALK_SECONDS after the program's last folder in it, and what was still to fetch is dropped;
- only while the listings fetched ahead that the program has not read yet hold less than
  `budget` bytes (desfs: half the listing cache), so a walk never evicts what it has still to read;
- nothing at all once `close()` (unmount): the threads are daemon threads, never waited for.

Folders are listed through the function the tree gives (its `list_dir`), so single flight,
caching and errors are the listing cache's: a listing the walker asks for while it is fetched
here is waited for, not fetched again, and a failure here is cached only as it would be for
the walker. Knows paths and time only: no HTTP, no FUSE, no caches.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

WALK_SECONDS = 10.0  # a folder read this soon after its parent is taken as part of a walk; a walk ends so long after
START = 16  # listings fetched ahead of a walk at its start
GROWTH = 3  # and this many more for every folder the program reads in it
AHEAD_MAX = 4096  # listings fetched ahead that the program has not read yet, at most
READ_REMEMBERED = 10_000  # folders whose read time is kept (to tell a walk), before the old ones are dropped

Lister = Callable[[str], Mapping[str, Any]]  # folder path → its entries (each with `is_dir`)


@dataclass
class _Walk:
    top: str
    list_dir: Lister
    last: float  # when the program last read a folder in the walk
    reads: int = 0  # folders the program has read in it
    queued: list = field(default_factory=list)  # heap of (path components, path)
    seen: set = field(default_factory=set)  # folders queued or read: never queued again
    unread: dict = field(default_factory=dict)  # folders listed here that the program has not read yet → bytes

    def allowance(self) -> int:
        return min(AHEAD_MAX, START + GROWTH * self.reads)


class WalkAhead:
    """Lists ahead of the programs walking one mount's tree (see the module's text)."""

    def __init__(self, workers: int, budget: int | None = None, timer=time.monotonic) -> None:
        self.workers, self.budget, self._timer = workers, budget, timer
        self._unread_bytes = 0  # the listings of every walk's `unread`
        self._read: dict[str, float] = {}  # folder → when a program last read it
        self._walks: dict[str, _Walk] = {}  # top → its walk
        self._cv = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._closed = False
        self.listed = 0  # folders listed ahead (for the tests)

    def read(self, path: str, entries: Mapping[str, Any], list_dir: Lister) -> None:
        """A program has read the folder `path` (mount path, normalized), whose entries are `entries`."""
        if self.workers <= 0:
            return
        now = self._timer()
        with self._cv:
            if self._closed:
                return
            walk = self._walk_of(path, now)
            if walk is None:
                parent = path.rpartition("/")[0] or "/"
                if path != "/" and now - self._read.get(parent, -WALK_SECONDS) < WALK_SECONDS:
                    walk = self._walks[parent] = _Walk(parent, list_dir, now)
                    walk.seen.add(parent)
                    walk.reads += 1
                    self._push(walk, parent)  # its other sub-folders (listed: no request)
            self._read[path] = now
            if len(self._read) > READ_REMEMBERED:
                self._read = {p: t for p, t in self._read.items() if now - t < WALK_SECONDS}
            if walk is None:
                return
            walk.last = now
            walk.reads += 1
            self._unread_bytes -= walk.unread.pop(path, 0)
            walk.seen.add(path)
            for name, entry in entries.items():
                child = _join(path, name)
                if entry.is_dir and child not in walk.seen:
                    walk.seen.add(child)
                    self._push(walk, child)
            self._start_threads()
            self._cv.notify_all()

    def _walk_of(self, path: str, now: float) -> _Walk | None:
        """The walk going on at or above `path` (under the lock); walks that have ended are dropped."""
        for top in [t for t, w in self._walks.items() if now - w.last >= WALK_SECONDS]:
            self._end(top)
        folder = path
        while True:
            walk = self._walks.get(folder)
            if walk is not None:
                return walk
            if folder == "/":
                return None
            folder = folder.rpartition("/")[0] or "/"

    def _end(self, top: str) -> None:
        """A walk is over: what it had still to list is dropped (under the lock)."""
        walk = self._walks.pop(top)
        self._unread_bytes -= sum(walk.unread.values())

    def _push(self, walk: _Walk, path: str) -> None:
        heapq.heappush(walk.queued, (tuple(path.split("/")), path))

    def _start_threads(self) -> None:
        while len(self._threads) < self.workers:
            thread = threading.Thread(target=self._work, name="desfs-walk-ahead", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _next(self) -> tuple[_Walk, str] | None:
        """The folder to list next, of the walk that has one and room to go further (under the lock)."""
        now = self._timer()
        for top, walk in list(self._walks.items()):
            if now - walk.last >= WALK_SECONDS:
                self._end(top)
                continue
            if walk.queued and len(walk.unread) < walk.allowance():
                path = heapq.heappop(walk.queued)[1]
                if path != walk.top:
                    walk.unread[path] = 0
                return walk, path
        return None

    def _room(self) -> bool:
        return self.budget is None or self._unread_bytes < self.budget

    def _work(self) -> None:
        while True:
            with self._cv:
                while True:
                    if self._closed:
                        return
                    found = self._next() if self._room() else None
                    if found is not None:
                        break
                    self._cv.wait(30.0)  # work comes with a read (notified); time only ends walks
                self._busy += 1
            walk, path = found
            try:
                entries = walk.list_dir(path)
            except OSError as exc:  # whoever lists it for real meets the error (cached only as it would be then)
                log.debug("listing %s ahead failed: %s", path, exc)
                entries = {}
            except Exception:  # noqa: BLE001 (a bug here must not end the thread, nor reach the walker)
                log.exception("listing %s ahead failed", path)
                entries = {}
            with self._cv:
                self._busy -= 1
                self.listed += 1
                if path in walk.unread and self._walks.get(walk.top) is walk:  # (else read meanwhile, or over)
                    nbytes = getattr(entries, "nbytes", 0)
                    walk.unread[path] = nbytes
                    self._unread_bytes += nbytes
                for name, entry in entries.items():
                    child = _join(path, name)
                    if getattr(entry, "is_dir", False) and child not in walk.seen:
                        walk.seen.add(child)
                        self._push(walk, child)
                self._cv.notify_all()

    def idle(self, timeout: float = 10.0) -> bool:
        """Wait until nothing is being listed or left to list (tests); whether it came to that in time."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._busy or any(w.queued and len(w.unread) < w.allowance() for w in self._walks.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.05))
            return True

    def close(self) -> None:
        """List nothing more (at unmount); listings under way end on their own, never waited for."""
        with self._cv:
            self._closed = True
            self._walks.clear()
            self._unread_bytes = 0
            self._cv.notify_all()


def _join(folder: str, name: str) -> str:
    return folder.rstrip("/") + "/" + name
