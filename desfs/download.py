"""Download layer: copies a remote tree to local disk (`desfs get`), through the same Client and Tree.

Knows files on local disk, resuming and progress; knows no FUSE and no HTTP
(all requests go through the Client, listings through the Tree). A file is
written under a hidden part name that records the remote version, and renamed
to its real name only once complete, with its size checked and its mtime set:
an interrupted run leaves no truncated file under a real name, and the next run
continues each part with a Range request.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import logging
import os
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from desfs.errors import DesfsError
from desfs.listing import Entry, NAME_MAX
from desfs.tree import Tree, join

log = logging.getLogger(__name__)

PART_SUFFIX = ".desfs-part"


class Cancelled(Exception):
    """The user interrupted the download."""


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


def part_path(item: Item) -> str:
    """The hidden name a file is written under until complete; it names the remote version."""
    folder, name = os.path.split(item.local)
    version = f"{item.entry.size:x}-{int(item.entry.mtime):x}"
    part = f".{name}.{version}{PART_SUFFIX}"
    if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
        part = f".desfs-{hashlib.sha1(name.encode('utf-8', 'surrogateescape')).hexdigest()}.{version}{PART_SUFFIX}"
    return os.path.join(folder, part)


class Downloader:
    """Fetches the files of a Plan with `jobs` downloads at once, reporting to a Progress."""

    def __init__(self, tree: Tree, jobs: int = 4, progress: "Progress | None" = None) -> None:
        self.tree, self.jobs = tree, max(1, jobs)
        self.progress = progress or Progress(0, 0, stream=None)
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    def run(self, plan: Plan) -> Outcome:
        for folder in plan.folders:
            os.makedirs(folder, exist_ok=True)
        outcome = Outcome()
        started = time.monotonic()
        with ThreadPoolExecutor(self.jobs, thread_name_prefix="desfs-get") as pool:
            futures = {pool.submit(self._fetch, item): item for item in plan.fetch}
            try:
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    for fut in done:
                        item = futures[fut]
                        try:
                            fut.result()
                        except Cancelled:
                            continue
                        except OSError as exc:
                            outcome.failed.append((item, str(exc)))
                            self.progress.file_failed(item)
                        else:
                            outcome.done.append(item)
                            outcome.bytes_done += item.entry.size
            except BaseException:
                self.cancel()
                for fut in futures:
                    fut.cancel()
                raise
        self._set_folder_times(plan)
        outcome.seconds = time.monotonic() - started
        return outcome

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
    for other in names:
        if other.startswith(prefix) and other.endswith(PART_SUFFIX) and os.path.join(folder, other) != keep:
            try:
                os.remove(os.path.join(folder, other))
            except OSError:
                pass


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
                + f"  left {eta}")

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
