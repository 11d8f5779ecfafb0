"""Download layer: copies a remote tree to local disk (`desfs get`), through the same Client and Tree.

Knows files on local disk, resuming and progress; knows no FUSE and no HTTP
(all requests go through the Client, listings through the Tree). A file is
written under a hidden part name that records the remote version, and renamed
to its real name only once complete, with its size checked and its mtime set:
an interrupted run leaves no truncated file under a real name, and the next run
continues each part with a Range request.

A large file (at least twice `segment_size`) is fetched as several byte ranges at
once (segments, as aria2c -x/-s), written at their offsets into a part file of the
full size. Beside it a private state file (part name + ".state", mode 0600) lists
the ranges still missing; it is written before the part file is made, rewritten
every SAVE_SECONDS (after the part's data is on disk: fdatasync) and removed only
once every range is in, just before the rename. So a part without a state file is
complete, and a killed run (even kill -9) resumes every range where the state
file says it stopped. A connection that finishes early takes over half of the
largest range still running (the tail of a download does not wait on one slow
connection). Every transfer in flight, segments and small files alike, shares one
bound: max(jobs, segments).
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from desfs.errors import DesfsError
from desfs.listing import Entry, NAME_MAX
from desfs.tree import Tree, join

log = logging.getLogger(__name__)

PART_SUFFIX = ".desfs-part"
STATE_SUFFIX = ".state"  # part + this: the ranges of a segmented part still missing (JSON, 0600)
STATE_FORMAT = 1
SAVE_SECONDS = 1.0  # how often a segmented part's state file is brought up to date
STEAL_MIN = 1024 * 1024  # a connection that is free takes over half of a range that has at least 2x this left


class Cancelled(Exception):
    """The user interrupted the download."""


class _Shrunk(Exception):
    """A segment's range was cut short (another connection took over its end): its request stops here."""


class _LocalError(Exception):
    """Writing to local disk failed inside a transfer (not a network failure: never retried)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _Segment:
    """A byte range of a segmented file: [pos, stop) is still to come."""

    __slots__ = ("pos", "stop", "running")

    def __init__(self, pos: int, stop: int) -> None:
        self.pos, self.stop, self.running = pos, stop, False


class _Segmented:
    """A large file being fetched as segments into its part file (opened, full size)."""

    def __init__(self, item: Item, part: str, fd: int, ranges: list[tuple[int, int]]) -> None:
        self.item, self.part, self.state = item, part, part + STATE_SUFFIX
        self.fd = fd
        self.segments = [_Segment(a, b) for a, b in ranges]
        self.lock = threading.Lock()  # segments' positions and writes
        self.save_lock = threading.Lock()
        self.saved = time.monotonic()
        self.running = 0  # segments submitted and not yet settled
        self.failed: BaseException | None = None

    def missing(self) -> list[tuple[int, int]]:
        with self.lock:
            return sorted((s.pos, s.stop) for s in self.segments if s.pos < s.stop)

    def complete(self) -> bool:
        return not self.missing()


@dataclass(frozen=True)
class Item:
    remote: str  # path in the tree ("/DES0226-1541/x_r.fits")
    local: str  # where it goes
    entry: Entry


@dataclass
class Plan:
    fetch: list[Item] = field(default_factory=list)
    up_to_date: list[Item] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    folder_mtimes: dict[str, float] = field(default_factory=dict)  # local folder → listed mtime

    @property
    def bytes_to_fetch(self) -> int:
        return sum(i.entry.size for i in self.fetch)


@dataclass
class Outcome:
    done: list[Item] = field(default_factory=list)
    failed: list[tuple[Item, str]] = field(default_factory=list)
    bytes_done: int = 0
    seconds: float = 0.0


def selected(rel: str, include: list[str], exclude: list[str]) -> bool:
    """rsync-like filters: a pattern with '/' matches the whole relative path, else the file name."""
    def hit(pattern: str) -> bool:
        target = rel if "/" in pattern else rel.rsplit("/", 1)[-1]
        return fnmatch.fnmatchcase(target, pattern.lstrip("/"))

    if include and not any(hit(p) for p in include):
        return False
    return not any(hit(p) for p in exclude)


def plan_tree(tree: Tree, dest: str, include: list[str] = (), exclude: list[str] = (), workers: int = 4) -> Plan:
    """What to fetch to make `dest` a copy of the whole tree (files up to date are left alone)."""
    plan = Plan()
    include, exclude = list(include), list(exclude)
    for folder, entries in tree.walk("/", workers=workers):
        local_folder = os.path.join(dest, *[s for s in folder.split("/") if s])
        plan.folders.append(local_folder)
        for name, entry in entries.items():
            if entry.is_dir:
                if entry.mtime:
                    plan.folder_mtimes[os.path.join(local_folder, name)] = entry.mtime
                continue
            remote = join(folder, name)
            if not selected(remote.lstrip("/"), include, exclude):
                continue
            item = Item(remote, os.path.join(local_folder, name), entry)
            (plan.up_to_date if is_up_to_date(item) else plan.fetch).append(item)
    plan.fetch.sort(key=lambda i: -i.entry.size)  # largest first: the last ones to finish are small
    return plan


def plan_file(entry: Entry, remote: str, dest: str) -> Plan:
    item = Item(remote, dest, entry)
    plan = Plan(folders=[os.path.dirname(dest) or "."])
    (plan.up_to_date if is_up_to_date(item) else plan.fetch).append(item)
    return plan


def is_up_to_date(item: Item) -> bool:
    try:
        st = os.stat(item.local)
    except OSError:
        return False
    return st.st_size == item.entry.size and int(st.st_mtime) == int(item.entry.mtime)


def split_ranges(ranges: list[tuple[int, int]], n: int, smallest: int) -> list[tuple[int, int]]:
    """`ranges` cut into at least `n` pieces where each piece stays at least `smallest` long: a single
    range into equal parts, several (a resumed download) by halving the largest."""
    ranges = sorted(ranges)
    if len(ranges) == 1 and n > 1:
        a, b = ranges[0]
        n = max(1, min(n, (b - a) // max(1, smallest)))
        return [(a + (b - a) * i // n, a + (b - a) * (i + 1) // n) for i in range(n)]
    while len(ranges) < n:
        a, b = max(ranges, key=lambda r: r[1] - r[0])
        if b - a < 2 * smallest:
            break
        ranges.remove((a, b))
        ranges += [(a, a + (b - a) // 2), (a + (b - a) // 2, b)]
    return sorted(ranges)


def read_state(path: str, entry: Entry, url: str) -> list[tuple[int, int]] | None:
    """The missing ranges a state file records for this version of this URL; None when it is absent,
    unreadable, of another version or URL, or inconsistent (then nothing of the part can be trusted)."""
    try:
        with open(path, "rb") as f:
            state = json.loads(f.read(1 << 20))
        if (state.get("format") != STATE_FORMAT or state.get("url") != url or state.get("size") != entry.size
                or state.get("mtime") != int(entry.mtime)):
            return None
        ranges, end = [], 0
        for a, b in state["missing"]:
            if not (type(a) is int and type(b) is int and end <= a < b <= entry.size):
                return None
            ranges.append((a, b))
            end = b
        return ranges
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def write_state(path: str, entry: Entry, url: str, missing: list[tuple[int, int]]) -> None:
    """Replace the state file at once (a new file renamed over it), private to the user."""
    body = json.dumps({"format": STATE_FORMAT, "url": url, "size": entry.size, "mtime": int(entry.mtime),
                       "missing": [list(r) for r in missing]}).encode()
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, body)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _remove(*paths: str) -> None:
    for p in paths:
        try:
            os.remove(p)
        except FileNotFoundError:
            pass


def part_path(item: Item) -> str:
    """The hidden name a file is written under until complete; it names the remote version."""
    folder, name = os.path.split(item.local)
    version = f"{item.entry.size:x}-{int(item.entry.mtime):x}"
    part = f".{name}.{version}{PART_SUFFIX}"
    if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
        part = f".desfs-{hashlib.sha1(name.encode('utf-8', 'surrogateescape')).hexdigest()}.{version}{PART_SUFFIX}"
    return os.path.join(folder, part)


class Downloader:
    """Fetches the files of a Plan, `jobs` files at once and a large file as up to `segments` ranges at
    once (those of `segment_size` bytes or more), reporting to a Progress. At most max(jobs, segments)
    transfers are in flight in all."""

    def __init__(self, tree: Tree, jobs: int = 4, progress: "Progress | None" = None, segments: int = 1,
                 segment_size: int = 8 * 1024 * 1024) -> None:
        self.tree, self.jobs = tree, max(1, jobs)
        self.segments, self.segment_size = max(1, segments), max(1, segment_size)
        self.progress = progress or Progress(0, 0, stream=None)
        self._cancel = threading.Event()

    @property
    def width(self) -> int:
        """Transfers in flight at most (the connections in use)."""
        return max(self.jobs, self.segments)

    def cancel(self) -> None:
        self._cancel.set()

    def segmented(self, item: Item) -> bool:
        """Is this file fetched in segments? (A file with a state file always is: its part is laid out so.)"""
        return (self.segments > 1 and item.entry.size >= 2 * self.segment_size) or os.path.exists(
            part_path(item) + STATE_SUFFIX)

    def run(self, plan: Plan) -> Outcome:
        for folder in plan.folders:
            os.makedirs(folder, exist_ok=True)
        outcome = Outcome()
        started = time.monotonic()
        waiting = deque(plan.fetch)  # files not yet begun
        ready: deque = deque()  # transfers to submit: (item, None, None) a whole file, (item, file, segment)
        running: dict = {}  # future → its transfer
        self._open: dict[Item, _Segmented | None] = {}  # files begun and not yet settled
        try:
            with ThreadPoolExecutor(self.width, thread_name_prefix="desfs-get") as pool:
                try:
                    while waiting or ready or running:
                        while len(running) < self.width and not self._cancel.is_set():
                            transfer = (ready.popleft() if ready else self._begin(waiting, ready, outcome)
                                        if waiting and len(self._open) < self.jobs else self._steal())
                            if transfer is None:
                                if ready or (waiting and len(self._open) < self.jobs):
                                    continue  # a file was begun (or settled at once): look again
                                break
                            if transfer[1] is not None:
                                transfer[1].running += 1
                                transfer[2].running = True
                            running[pool.submit(self._transfer, *transfer)] = transfer
                        if not running:
                            if self._cancel.is_set() or not (ready or waiting):
                                break
                            continue
                        self.progress.connections = len(running)
                        done, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
                        for fut in done:
                            self._settle(running.pop(fut), fut, ready, outcome)
                except BaseException:
                    self.cancel()
                    for fut in running:
                        fut.cancel()
                    raise
        finally:
            for f in [f for f in self._open.values() if f is not None]:  # interrupted: keep what is in
                self._close(f, save=True)
            self._open.clear()
        self._set_folder_times(plan)
        outcome.seconds = time.monotonic() - started
        return outcome

    # -- scheduling (main thread) -------------------------------------------

    def _begin(self, waiting: deque, ready: deque, outcome: Outcome):
        """Begin the next file: a small one is one transfer (returned); a large one's segments are queued."""
        item = waiting.popleft()
        if not self.segmented(item):
            self._open[item] = None
            return (item, None, None)
        try:
            f = self._open_segmented(item)
        except OSError as exc:
            outcome.failed.append((item, str(exc)))
            self.progress.file_failed(item)
            return None
        self._open[item] = f
        self.progress.file_started(item, item.entry.size - sum(b - a for a, b in f.missing()))
        ready.extend((item, f, seg) for seg in f.segments if seg.pos < seg.stop)
        if not f.segments or f.complete():
            self._finish(f, outcome)
        return None

    def _steal(self):
        """A free connection takes over the second half of the range with the most left (a running one)."""
        best, most = None, 2 * STEAL_MIN - 1
        for f in self._open.values():
            if f is None or f.failed is not None or f.running >= self.segments:
                continue
            with f.lock:
                for seg in f.segments:
                    if seg.running and seg.stop - seg.pos > most:
                        best, most = (f, seg), seg.stop - seg.pos
        if best is None:
            return None
        f, seg = best
        with f.lock:
            if seg.stop - seg.pos < 2 * STEAL_MIN:
                return None
            mid = seg.pos + (seg.stop - seg.pos) // 2
            new = _Segment(mid, seg.stop)
            seg.stop = mid
            f.segments.append(new)
        return (f.item, f, new)

    def _settle(self, transfer, fut, ready: deque, outcome: Outcome) -> None:
        item, f, seg = transfer
        exc = fut.exception()
        if f is None:  # a whole small file
            del self._open[item]
            if exc is None:
                outcome.done.append(item)
                outcome.bytes_done += item.entry.size
            elif isinstance(exc, OSError):
                outcome.failed.append((item, str(exc)))
                self.progress.file_failed(item)
            elif not isinstance(exc, Cancelled):
                raise exc
            return
        f.running -= 1
        seg.running = False
        if isinstance(exc, _LocalError):
            exc = exc.error
        if exc is not None and not isinstance(exc, Cancelled) and f.failed is None:
            f.failed = exc
            kept = [t for t in ready if t[1] is not f]  # its queued segments are dropped
            ready.clear()
            ready.extend(kept)
        if f.failed is None and exc is None and seg.pos < seg.stop and not self._cancel.is_set():
            ready.append(transfer)  # ended early without an error (never expected): fetch the rest
        if f.running > 0 or any(t[1] is f for t in ready):
            return
        if f.failed is None and not self._cancel.is_set() and f.complete():
            self._finish(f, outcome)
            return
        if self._cancel.is_set() and f.failed is None:
            return  # interrupted: closed (its state saved) at the end of run
        self._close(f, save=True)
        error = f.failed
        if isinstance(error, DesfsError) and error.errno in (errno.ENOENT, errno.ESTALE):
            _remove(f.part, f.state)  # gone or changed: this part can never be completed
        if not isinstance(error, OSError):
            raise error
        outcome.failed.append((item, str(error)))
        self.progress.file_failed(item)

    # -- segmented files ------------------------------------------------------

    def _open_segmented(self, item: Item) -> _Segmented:
        """The part file (full size) and the ranges still missing, from the state file if it holds for
        this version, else from scratch (an unsegmented part of an earlier run is continued)."""
        part = part_path(item)
        state = part + STATE_SUFFIX
        _remove_other_parts(item, part)
        url = self.tree.url(item.remote)
        size = item.entry.size
        try:
            have = os.path.getsize(part)
        except OSError:
            have = None
        missing = read_state(state, item.entry, url) if have == size else None
        if missing is None:
            if os.path.exists(state) or have is None or have > size:
                _remove(part, state)  # a part no state file vouches for: from zero
                have = 0
            # no state file: a part of its full size is complete (the state goes only when all is in), a
            # shorter one an unsegmented part of an earlier run, continued
            missing = split_ranges([(have, size)], self.segments, self.segment_size) if have < size else []
            write_state(state, item.entry, url, missing)  # before the part is made full size
        else:
            missing = split_ranges(missing, self.segments, self.segment_size)
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)
        except OSError:
            os.close(fd)
            raise
        return _Segmented(item, part, fd, missing)

    def _transfer(self, item: Item, f: _Segmented | None, seg: _Segment | None) -> None:
        if f is None:
            return self._fetch(item)
        if self._cancel.is_set():
            raise Cancelled()
        with f.lock:
            start, asked = seg.pos, seg.stop
        if start >= asked:
            return None

        def write(chunk: memoryview) -> None:
            if self._cancel.is_set() or f.failed is not None:
                raise Cancelled()
            with f.lock:
                n = max(0, min(len(chunk), seg.stop - seg.pos))
                try:
                    _pwrite_all(f.fd, chunk[:n], seg.pos)
                except OSError as exc:
                    raise _LocalError(exc) from None
                seg.pos += n
                shrunk = seg.pos >= seg.stop and seg.stop < asked
            self.progress.add(n)
            self._save(f)
            if shrunk:
                raise _Shrunk()

        try:
            self.tree.fetch(item.remote, start, asked, item.entry, write)
        except _Shrunk:
            pass
        return None

    def _save(self, f: _Segmented, force: bool = False) -> None:
        """Bring the state file up to date (every SAVE_SECONDS, or now): the ranges it no longer lists
        are on disk first."""
        if not force and time.monotonic() - f.saved < SAVE_SECONDS:
            return
        if not f.save_lock.acquire(blocking=force):
            return  # another thread is saving
        try:
            f.saved = time.monotonic()
            missing = f.missing()
            try:
                os.fdatasync(f.fd)
                write_state(f.state, f.item.entry, self.tree.url(f.item.remote), missing)
            except OSError as exc:
                raise _LocalError(exc) from None
        finally:
            f.save_lock.release()

    def _close(self, f: _Segmented, save: bool) -> None:
        """Done with a part for this run (failed or interrupted): its state saved, its file closed."""
        self._open.pop(f.item, None)
        try:
            if save and os.path.exists(f.part):
                self._save(f, force=True)
        except _LocalError as exc:
            log.warning("could not save the state of %s: %s", f.part, exc.error)
        finally:
            os.close(f.fd)

    def _finish(self, f: _Segmented, outcome: Outcome) -> None:
        """Every range is in: check the size, drop the state file, set the time and take the real name."""
        item = f.item
        self._open.pop(item, None)
        try:
            try:
                size = os.fstat(f.fd).st_size
                if size != item.entry.size:
                    raise DesfsError(f"downloaded {size} bytes, expected {item.entry.size}", item.remote)
                os.fdatasync(f.fd)  # then the part is complete on disk before its state file goes
            finally:
                os.close(f.fd)
            _remove(f.state)
            os.utime(f.part, (item.entry.mtime, item.entry.mtime))
            os.replace(f.part, item.local)
        except OSError as exc:
            outcome.failed.append((item, str(exc)))
            self.progress.file_failed(item)
            return
        self.progress.file_done(item)
        outcome.done.append(item)
        outcome.bytes_done += item.entry.size

    def _fetch(self, item: Item) -> None:
        if self._cancel.is_set():
            raise Cancelled()
        part = part_path(item)
        _remove_other_parts(item, part)
        try:
            have = os.path.getsize(part)
        except OSError:
            have = 0
        if have > item.entry.size:
            os.remove(part)
            have = 0
        self.progress.file_started(item, have)
        with open(part, "ab") as f:
            def write(chunk: bytes) -> None:
                if self._cancel.is_set():
                    raise Cancelled()
                f.write(chunk)
                self.progress.add(len(chunk))

            try:
                self.tree.fetch(item.remote, have, item.entry.size, item.entry, write)
            except DesfsError as exc:
                if exc.errno in (errno.ENOENT, errno.ESTALE):  # gone or changed: this part can never be completed
                    f.close()
                    os.remove(part)
                raise
        size = os.path.getsize(part)
        if size != item.entry.size:
            raise DesfsError(f"downloaded {size} bytes, expected {item.entry.size}", item.remote)
        os.utime(part, (item.entry.mtime, item.entry.mtime))
        os.replace(part, item.local)
        self.progress.file_done(item)

    def _set_folder_times(self, plan: Plan) -> None:
        """Folders get their listed mtimes, deepest first (writing files into them changed them)."""
        for folder in sorted(plan.folder_mtimes, key=lambda p: -p.count(os.sep)):
            try:
                os.utime(folder, (plan.folder_mtimes[folder], plan.folder_mtimes[folder]))
            except OSError:
                pass


def _remove_other_parts(item: Item, keep: str) -> None:
    """Parts of other versions of the same file can never be completed: remove them."""
    folder, name = os.path.split(item.local)
    prefix = f".{name}."
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return
    ours = (keep, keep + STATE_SUFFIX, keep + STATE_SUFFIX + ".tmp")
    for other in names:
        if (other.startswith(prefix) and other.endswith((PART_SUFFIX, PART_SUFFIX + STATE_SUFFIX,
                                                          PART_SUFFIX + STATE_SUFFIX + ".tmp"))
                and os.path.join(folder, other) not in ours):
            try:
                os.remove(os.path.join(folder, other))
            except OSError:
                pass


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


class Progress:
    """Totals known up front; a status line on a terminal, a plain line every `interval` seconds elsewhere."""

    def __init__(self, total_bytes: int, total_files: int, stream=sys.stderr, interval: float | None = None) -> None:
        self.total_bytes, self.total_files = total_bytes, total_files
        self.stream = stream
        self.tty = bool(stream) and hasattr(stream, "isatty") and stream.isatty()
        self.interval = 0.2 if self.tty else (interval or 10.0)
        self.bytes = 0
        self.files = 0
        self.failed = 0
        self.connections = 0  # transfers in flight (the downloader keeps it up to date)
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.stream is None:
            return
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def file_started(self, item: Item, already: int) -> None:
        self.add(already)

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes += n

    def file_done(self, item: Item) -> None:
        with self._lock:
            self.files += 1

    def file_failed(self, item: Item) -> None:
        with self._lock:
            self.failed += 1

    def line(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = self.bytes / elapsed
        left = (self.total_bytes - self.bytes) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.bytes / self.total_bytes if self.total_bytes else 100.0
        eta = _clock(left) if left != float("inf") else "--:--"
        return (f"{pct:5.1f}%  {human(self.bytes)} of {human(self.total_bytes)}  {human(rate)}/s  "
                f"files {self.files}/{self.total_files}" + (f"  failed {self.failed}" if self.failed else "")
                + (f"  connections {self.connections}" if self.connections > 1 else "") + f"  left {eta}")

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if self.tty:
                self.stream.write("\r\033[K" + self.line())
            else:
                self.stream.write("desfs get: " + self.line() + "\n")
            self.stream.flush()


def human(n: float) -> str:
    """1536 → '1.5K', like ls -h (binary units)."""
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            break
        n /= 1024
    return f"{int(n)}" if unit == "" else f"{n:.1f}{unit}" if n < 10 else f"{n:.0f}{unit}"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
