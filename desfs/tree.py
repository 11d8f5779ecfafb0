"""Tree layer: a remote folder tree seen through caches, spoken to in mount paths.

Composes a Client (HTTP) with a listing cache and a block cache. Knows nothing
of FUSE (no st_* dicts, no file handles) nor of the command line, so the mount
and the download command share it and it is tested without a mount.
"""

from __future__ import annotations

import errno
import logging
import time
from typing import Protocol, runtime_checkable
from concurrent.futures import ThreadPoolExecutor

from desfs import platform
from desfs.cache import BlockCache, FileKey, LoadingCache
from desfs.client import Client
from desfs.diskcache import DiskStore, ListingStore
from desfs.errors import NotFound, Stale, TooLarge, Unreachable
from desfs.listing import Entry, Listing
from desfs.readahead import Prefetcher, ReadStream
from desfs.settings import DEFAULTS, Settings
from desfs.walk import WalkAhead

log = logging.getLogger(__name__)

MiB = 1024 * 1024
LISTING_WAIT_BYTES = 4 * MiB  # a listing's size, as far as waiting for another thread's load of it goes
OFFLINE_LISTING_TTL = 10.0  # seconds a stored listing served while the server is unreachable is trusted
TRIM_AFTER_BYTES = 1 * MiB  # a listing this large read: the memory its parse and the listings it evicted
# left free goes back to the system (else malloc keeps it, in the arena of each FUSE thread that parsed one)


@runtime_checkable
class MountTree(Protocol):
    """What the FUSE adapter (and anything else serving a mount) asks of a tree, in mount paths.

    Two implementations: Tree (one folder URL: a job, or a folder below one) and
    account.AccountTree (every job of an account, routed to a Tree per job). Errors
    are desfs.errors exceptions (OSErrors with an errno)."""

    root: Entry

    def lookup(self, path: str) -> Entry:
        """The entry at `path` (NotFound when there is none)."""

    def list_dir(self, path: str) -> dict[str, Entry]:
        """A folder's entries by name."""

    def read_folder(self, path: str) -> dict[str, Entry]:
        """list_dir for a program reading the folder (readdir): may list ahead of a walk."""

    def open(self, path: str, entry: Entry) -> "OpenFile":
        """Version `entry` of a file, for reading."""

    def read(self, path: str, entry: Entry, offset: int, length: int) -> bytes:
        """Bytes of version `entry` of a file, without opening it."""

    def readlink(self, path: str) -> str:
        """A symbolic link's target (EINVAL for anything else)."""

    def attributes(self, path: str) -> dict[str, str]:
        """What desfs knows of `path` beyond its stat, without a request of its own: `url` (a folder's
        ends with '/'), `etag` of a file (as the server would send it), and for a job folder of an
        account `job_name`, `status`, `expires`. Virtual entries (by-name) have none."""

    def close(self) -> None:
        """Let go of worker threads and caches (at unmount)."""


class Caches:
    """The caches and worker pools of a mount, shared by every Tree in it (one memory budget)."""

    def __init__(self, settings: Settings = DEFAULTS, timer=time.monotonic) -> None:
        self.settings, self.timer = settings, timer
        # Each listing counts its bytes; one that would not fit in the whole budget is refused while it is
        # parsed (TooLarge), and that refusal is kept in its place for the TTL. A listing may carry a TTL
        # of its own (a running job's), so every listing of a mount is within the one budget.
        self.listings = LoadingCache(settings.listing_cache_size, lambda listing: listing.ttl or settings.listing_ttl,
                                     getsizeof=_listing_size, timer=timer,
                                     patience=settings.patience(LISTING_WAIT_BYTES))
        self.disk = _disk_store(settings)
        self.disk_listings = ListingStore(settings.disk_cache) if self.disk is not None else None
        self.blocks = BlockCache(settings.cache_size, settings.block_size, settings.block_ttl, timer=timer,
                                 patience=settings.patience, below=self.disk)
        self.readahead_max = settings.readahead_window
        self.prefetcher = Prefetcher(self.blocks, settings.connections) if self.readahead_max > 0 else None
        self.walker = WalkAhead(settings.walk_ahead, budget=settings.listing_cache_size // 2, timer=timer)

    def close(self) -> None:
        if self.prefetcher:
            self.prefetcher.close()
        self.walker.close()
        if self.disk is not None:
            self.blocks.close()  # the blocks still being written to disk are written
            self.disk.close()


def _disk_store(settings: Settings) -> DiskStore | None:
    """The disk tier the settings ask for (none when `disk_cache` is empty); a folder that cannot be
    used is said in the log, and the mount goes on with memory alone."""
    if not settings.disk_cache:
        return None
    try:
        store = DiskStore(settings.disk_cache, settings.disk_cache_size)
    except OSError as exc:
        log.warning("no disk cache: %s", exc)
        return None
    log.info("disk cache %s (up to %d MiB)", store.folder, settings.disk_cache_size // MiB)
    return store


class Tree:
    """Folders and files under one base URL.

    Listings are cached for `listing_ttl`; a file's attributes come from its
    parent's listing (no request per file); a name missing from a cached
    listing costs no request. File bytes are cached in blocks keyed by
    (path, size, mtime): a file that changes on the server gets new keys.
    Trees that share `caches` name their keys with their own `prefix`; `listing_ttl`, when
    given, replaces the settings' for this tree's listings (a job still running).
    """

    def __init__(self, client: Client, settings: Settings = DEFAULTS, timer=time.monotonic,
                 caches: Caches | None = None, prefix: str = "", listing_ttl: float | None = None) -> None:
        self.client = client
        self.caches = caches or Caches(settings, timer)
        self._owns_caches = caches is None
        self.settings = self.caches.settings
        self.listings = self.caches.listings
        self.listing_ttl = listing_ttl
        self.blocks, self.prefetcher = self.caches.blocks, self.caches.prefetcher
        self.readahead_max = self.caches.readahead_max
        self.prefix = prefix.rstrip("/")
        self.root = Entry(name="", is_dir=True, size=0, mtime=time.time())
        self._timer = self.caches.timer

    def close(self) -> None:
        if self._owns_caches:
            self.caches.close()

    def _key(self, path: str) -> str:
        """The cache key of a normalized path: the path below this tree's prefix."""
        return self.prefix + path if path != "/" or not self.prefix else self.prefix

    # -- folders ------------------------------------------------------------

    def list_dir(self, path: str) -> Listing:
        """The entries of the folder at `path`, by name, in the server's order."""
        path = normalize(path)
        loaded = False

        def load() -> Listing:
            nonlocal loaded
            loaded = True
            return self._load_listing(path)

        try:
            listing = self.listings.get(self._key(path), load)
        except NotFound:
            self.forget(path)
            raise
        if loaded and (listing.nbytes >= TRIM_AFTER_BYTES or listing.refused):  # stored, what it evicted freed
            _release_free_memory()
        if listing.refused:
            raise TooLarge(listing.refused, self.client.url(path, folder=True))
        return listing

    def _load_listing(self, path: str) -> Listing:
        stored = self.caches.disk_listings
        try:
            listing = self.client.listing(path, self.listings.max_size)
        except TooLarge as exc:  # kept as such for the TTL: never fetched again on every lookup
            log.warning("%s: refused (raise --listing-cache-size to list it)", exc)
            listing = Listing.refusal(exc.strerror)
        except Unreachable as exc:  # offline: the last listing stored, if there is one
            url = self.client.url(path, folder=True)
            listing = stored.load(url) if stored is not None else None
            if listing is None:
                raise
            log.info("%s: the last listing stored is served (%s)", url, exc.strerror)
            listing.ttl = self.settings.listing_ttl if self.settings.offline else OFFLINE_LISTING_TTL
            return listing
        else:
            if stored is not None:
                stored.save(self.client.url(path, folder=True), listing)
        listing.ttl = self.listing_ttl
        return listing

    def read_folder(self, path: str) -> dict[str, Entry]:
        """list_dir for a program reading the folder (readdir): a walk (a folder read soon after its
        parent) gets the folders below listed ahead of it (walk.WalkAhead)."""
        path = normalize(path)
        entries = self.list_dir(path)
        self.caches.walker.read(path, entries, self.list_dir)
        return entries

    def lookup(self, path: str) -> Entry:
        """The entry at `path`, from its parent's listing."""
        path = normalize(path)
        if path == "/":
            return self.root
        parent, _, name = path.rpartition("/")
        entry = self.list_dir(parent or "/").get(name)
        if entry is None:
            raise NotFound("no such file or folder", self.client.url(path))
        return entry

    def walk(self, path: str = "/", workers: int = 1):
        """(folder path, entries) for `path` and every folder below it, level by level.

        With `workers` > 1, the folders of each level are listed concurrently, so a
        deep tree costs one round trip per level rather than one per folder.
        """
        level = [normalize(path)]
        pool = ThreadPoolExecutor(workers, thread_name_prefix="desfs-walk") if workers > 1 else None
        try:
            while level:
                listed = pool.map(self.list_dir, level) if pool else map(self.list_dir, level)
                next_level = []
                for folder, entries in zip(level, listed, strict=True):
                    yield folder, entries
                    next_level.extend(join(folder, e.name) for e in entries.values() if e.is_dir)
                level = next_level
        finally:
            if pool:
                pool.shutdown(wait=False, cancel_futures=True)

    # -- files --------------------------------------------------------------

    def open(self, path: str, entry: Entry) -> "OpenFile":
        """Version `entry` of the file at `path`, opened for reading with readahead."""
        path = normalize(path)
        stream = ReadStream(self.blocks, self.prefetcher, self._file_key(path, entry), entry.size,
                            self._fetcher(path, entry), self.settings.readahead_min, self.readahead_max)
        return OpenFile(self, path, stream)

    def read(self, path: str, entry: Entry, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of version `entry` of the file at `path`, clipped to its end."""
        path = normalize(path)
        try:
            return self.blocks.read(self._file_key(path, entry), entry.size, offset, length, self._fetcher(path, entry))
        except (Stale, NotFound) as exc:
            self.file_failed(path, exc)
            raise

    def file_failed(self, path: str, exc: OSError) -> None:
        """A file that changed drops its folder's listing (the next open sees the new version);
        one that vanished drops everything cached under it."""
        if isinstance(exc, Stale):
            self.forget_listing(path.rpartition("/")[0] or "/")
        elif isinstance(exc, NotFound):
            self.forget(path)

    def store_file(self, path: str, entry: Entry, done=lambda nbytes: None) -> None:
        """Bring every block of version `entry` of a file into the caches (down to the disk tier), a few at
        a time; `done(n)` after each n bytes (desfs cache fetch)."""
        path = normalize(path)
        key, fetcher, bs = self._file_key(path, entry), self._fetcher(path, entry), self.blocks.block_size
        count = -(-entry.size // bs)
        for first in range(0, count, 8):
            last = min(count, first + 8)
            self.blocks.fetch_run(key, entry.size, first, last, fetcher)
            done(min(entry.size, last * bs) - first * bs)

    def readlink(self, path: str) -> str:
        raise OSError(errno.EINVAL, "not a symbolic link", path)  # listings hold no links

    def attributes(self, path: str) -> dict[str, str]:
        entry = self.lookup(path)  # from the cached listing: the kernel has just looked the path up
        return entry_attributes(self.client.url(normalize(path), folder=entry.is_dir), entry)

    def stat_file(self, path: str) -> Entry:
        """A file's entry from the server itself (HEAD), for a file no listing shows (a job's .log)."""
        return self.client.stat(normalize(path))

    def fetch(self, path: str, start: int, stop: int, entry: Entry, write) -> None:
        """Stream bytes [start, stop) of version `entry` of a file into `write`, bypassing the caches
        (a download: each byte is wanted once)."""
        self.client.fetch(normalize(path), start, stop, entry, write)

    def url(self, path: str) -> str:
        return self.client.url(normalize(path))

    def _file_key(self, path: str, entry: Entry) -> FileKey:
        """The name of this version of the file in the block cache: its URL (the same in every mount
        and tree that reaches it), size and time."""
        return FileKey(self.client.url(path), entry.size, entry.mtime)

    def _fetcher(self, path: str, entry: Entry):
        return lambda start, stop, write: self.client.fetch(path, start, stop, entry, write)

    # -- invalidation -------------------------------------------------------

    def forget_listing(self, folder: str) -> None:
        """Drop one folder's cached listing, so the next look sees the server's."""
        self.listings.discard(self._key(normalize(folder)))

    def forget(self, path: str) -> None:
        """Drop everything cached at or below `path` (a deleted job, a vanished file)."""
        path = normalize(path)
        key = self._key(path)
        prefix = key.rstrip("/") + "/"
        dropped: list[str] = []
        below = lambda k: (k == key or k.startswith(prefix)) and not dropped.append(k)  # noqa: E731
        listings = self.listings.discard_where(below)
        if self.caches.disk_listings is not None:  # and the stored ones, never served offline again
            for k in dropped:
                self.caches.disk_listings.discard(self.client.url(k[len(self.prefix):] or "/", folder=True))
        url, folder_url = self.client.url(path), self.client.url(path, folder=True)
        blocks = self.blocks.discard_file(lambda file: file.url == url or file.url.startswith(folder_url))
        if listings or blocks:
            log.info("dropped %d listings and %d blocks under %s", listings, blocks, key)


class OpenFile:
    """One open file: its reads go through its own ReadStream (readahead state) and Tree."""

    def __init__(self, tree: Tree, path: str, stream: ReadStream) -> None:
        self.tree, self.path, self.stream = tree, path, stream

    def read(self, offset: int, length: int) -> memoryview:
        """Bytes [offset, offset+length), clipped to the end, as a read-only-by-contract view."""
        try:
            return self.stream.read(offset, length)
        except (Stale, NotFound) as exc:  # a plain try: this is every FUSE read's path
            self.tree.file_failed(self.path, exc)
            raise


def entry_attributes(url: str, entry: Entry) -> dict[str, str]:
    """A file's or folder's `url`, and a file's `etag`: nginx's, made of the time and size the listing gave."""
    if entry.is_dir:
        return {"url": url}
    return {"url": url, "etag": '"%x-%x"' % (int(entry.mtime), entry.size)}


def normalize(path: str) -> str:
    """'/a/b' form of a mount path: one leading slash, no trailing or doubled ones."""
    return "/" + "/".join(s for s in path.split("/") if s)


def join(folder: str, name: str) -> str:
    return folder.rstrip("/") + "/" + name


def _release_free_memory() -> None:
    """Hand the memory malloc holds free back to the system."""
    platform.malloc_trim()


def _listing_size(listing: Listing) -> int:
    return listing.nbytes
