"""Account layer: every job of a DESaccess account as one tree, in mount paths.

    /<type>/<job_id>/...        the job's files (a Tree per job, all sharing one set of caches)
    /<type>/<job_id>.log        the job's log and archive (.tar.gz): fetchable but not listable on
    /<type>/<job_id>.tar.gz     the server, so found with HEAD and shown when they exist
    /by-name/<job_name>         a symbolic link to ../<type>/<job_id>

Which jobs exist comes from the API (the server cannot list a user's folders).
Speaks the same interface as Tree (lookup, list_dir, read_folder, open, read,
readlink), so the FUSE adapter serves either; knows no FUSE and no HTTP.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote

from desfs.api import Api, Job
from desfs.cache import LoadingCache
from desfs.client import Client
from desfs.errors import NotFound
from desfs.listing import Entry, Listing, name_problem
from desfs.settings import DEFAULTS, Settings
from desfs.tree import Caches, Tree, entry_attributes, normalize

log = logging.getLogger(__name__)

BY_NAME = "by-name"
ALWAYS_SHOWN = ("cutout", "query")
SIDECARS = {"cutout": (".log", ".tar.gz"), "query": (".log",)}
UNFINISHED_LISTING_TTL = 10.0  # seconds: the files of a running job change
SIDECAR_CHECKS = 8  # HEADs of .log/.tar.gz files at once, at least (else --walk-ahead)


@dataclass(frozen=True)
class Route:
    """Where a mount path of the account leads: the root, a job type folder, by-name or one of its links,
    a job's sidecar file (with its Entry), or a path `rest` inside a job's tree."""

    kind: str  # root | type | by-name | link | sidecar | job
    name: str = ""  # the last part of the path that routed: the type, link, sidecar or job id
    job_type: str = ""
    job: Job | None = None
    rest: str = "/"  # inside the job
    entry: Entry | None = None  # a sidecar's

    @property
    def key(self) -> tuple[str, str]:
        return (self.job_type, self.name)


class FixedJobs:
    """A job list that does not change, in place of the API (the demo's sample account)."""

    def __init__(self, username: str, jobs: list[Job]) -> None:
        self.username, self._jobs = username, jobs

    def jobs(self) -> list[Job]:
        return list(self._jobs)


class AccountTree:
    def __init__(self, api: Api | FixedJobs, files_url: str, settings: Settings = DEFAULTS, *,
                 timer=time.monotonic) -> None:
        self.api = api
        self.files_url = files_url.rstrip("/") + "/"
        self.caches = Caches(settings, timer)
        self.settings = settings
        self._timer = timer
        self._session = None  # one connection pool for every job's Client
        self.jobs_ttl = settings.jobs_ttl
        # The first job list is waited for (the mount needs it); later ones are fetched in the background
        # while the last one is served, so a slow or dead API never holds a lookup.
        self._first_jobs = LoadingCache(1, float("inf"), timer=timer, patience=settings.patience(0))
        self._known_at = 0.0
        self._refreshing = False
        self._known: dict[tuple[str, str], Job] | None = None
        self._trees: dict[tuple[str, str], Tree] = {}
        self._sidecars = self.caches.listings  # the .log/.tar.gz of each running job, within the listings' budget
        self._finished_sidecars: dict[tuple[str, str], Listing] = {}  # and of each finished job: they never change
        self._sidecar_checks = max(SIDECAR_CHECKS, settings.walk_ahead)  # HEADs at once
        self._lock = threading.Lock()
        self.root = Entry(name="", is_dir=True, size=0, mtime=time.time())

    def close(self) -> None:
        self.caches.close()

    # -- the job list -------------------------------------------------------

    def jobs(self) -> dict[tuple[str, str], Job]:
        """(type, id) → Job. The first list is fetched here; after that the last list is served at
        once, and fetched again in the background once it is `jobs_ttl` old (kept while the API fails)."""
        known = self._known
        if known is None:
            return self._first_jobs.get("jobs", self._load_jobs)
        if self._timer() - self._known_at >= self.jobs_ttl:
            with self._lock:
                start, self._refreshing = not self._refreshing, True
            if start:
                threading.Thread(target=self._refresh, name="desfs-jobs", daemon=True).start()
        return known

    def _refresh(self) -> None:
        try:
            self._load_jobs()
        except Exception:  # never the first list here: _load_jobs keeps the last one on OSError
            log.exception("refreshing the job list failed: keeping the last one")
            self._known_at = self._timer()  # asked again after another jobs_ttl, not at every lookup
        finally:
            with self._lock:
                self._refreshing = False

    def _load_jobs(self) -> dict[tuple[str, str], Job]:
        try:
            listed = self.api.jobs()
        except OSError as exc:
            if self._known is None:
                raise
            log.warning("DESaccess job list unavailable (%s): keeping the last one", exc)
            self._known_at = self._timer()  # asked again after another jobs_ttl, not at every lookup
            return self._known
        jobs = {}
        for job in listed:
            problem = name_problem(job.job_id) or name_problem(job.job_type)
            if problem or job.job_type == BY_NAME:
                log.warning("job %r of type %r skipped: %s", job.job_id, job.job_type, problem or "reserved type")
                continue
            jobs[(job.job_type, job.job_id)] = job
        for key in set(self._known or {}) - set(jobs):
            self._drop(key)
        if self._known is None and self.caches.disk is not None:  # what earlier mounts stored of gone jobs
            threading.Thread(target=self._drop_stored, args=(set(jobs),), name="desfs-purge", daemon=True).start()
        self._known, self._known_at = jobs, self._timer()
        stored, api_url = self.caches.disk_listings, getattr(self.api, "api_url", None)
        if stored is not None and api_url:  # for a mount that starts while the API cannot be reached
            stored.save_jobs(api_url, self.api.username, [dataclasses.asdict(j) for j in jobs.values()])
        return jobs

    def _drop(self, key: tuple[str, str]) -> None:
        """A job gone from the list (deleted, expired): its caches go too."""
        log.info("job %s/%s is gone: dropping its caches", *key)
        with self._lock:
            tree = self._trees.pop(key, None)
        self._sidecars.discard(_sidecar_key(key))
        self._finished_sidecars.pop(key, None)
        if tree:
            tree.forget("/")

    def _drop_stored(self, jobs: set[tuple[str, str]]) -> None:
        """Remove from the disk cache the blocks of this account's jobs that the API no longer lists."""
        base = f"{self.files_url}{self.api.username}/"
        try:
            gone = set()
            for url in self.caches.disk.urls_below(base):
                parts = url[len(base):].split("/")
                if len(parts) >= 3 and (unquote(parts[0]), unquote(parts[1])) not in jobs:
                    gone.add(f"{base}{parts[0]}/{parts[1]}/")
            for folder in gone:
                blocks, nbytes = self.caches.disk.drop(folder)
                log.info("disk cache: %d blocks (%d bytes) of a job gone dropped", blocks, nbytes)
        except Exception as exc:  # noqa: BLE001 (a purge that fails leaves the blocks to eviction)
            log.warning("disk cache: dropping the blocks of gone jobs failed: %s", exc)

    # -- routing ------------------------------------------------------------

    def _tree(self, key: tuple[str, str], job: Job) -> Tree:
        with self._lock:
            tree = self._trees.get(key)
            if tree is None:
                tree = Tree(self._client(f"{key[0]}/{key[1]}/"), caches=self.caches, prefix=f"/{key[0]}/{key[1]}",
                            listing_ttl=None if job.finished else UNFINISHED_LISTING_TTL)
                self._trees[key] = tree
            elif job.finished:
                tree.listing_ttl = None  # it was running when first seen
            return tree

    def _route(self, path: str) -> Route:
        """Where a mount path leads: NotFound when nowhere."""
        parts = [p for p in normalize(path).split("/") if p]
        if not parts:
            return Route("root")
        if parts[0] == BY_NAME:
            if len(parts) == 1:
                return Route("by-name", name=BY_NAME)
            if len(parts) == 2 and parts[1] in self._links():
                return Route("link", name=parts[1])
            raise NotFound("no such job name", path)
        jobs = self.jobs()
        job_type = parts[0]
        if job_type not in self._types(jobs):
            raise NotFound("no such job type", path)
        if len(parts) == 1:
            return Route("type", name=job_type, job_type=job_type)
        job = jobs.get((job_type, parts[1]))
        if job is not None:
            return Route("job", name=parts[1], job_type=job_type, job=job, rest="/" + "/".join(parts[2:]))
        sidecar = self._sidecar_entry(job_type, jobs, parts[1]) if len(parts) == 2 else None
        if sidecar is not None:
            return Route("sidecar", name=parts[1], job_type=job_type, entry=sidecar)
        raise NotFound("no such job", path)

    def _types(self, jobs) -> list[str]:
        return sorted(set(ALWAYS_SHOWN) | {t for t, _ in jobs})

    # -- the Tree interface -------------------------------------------------

    def lookup(self, path: str) -> Entry:
        route = self._route(path)
        kind = route.kind
        if kind == "root":
            return self.root
        if kind in ("type", "by-name"):
            return Entry(name=route.name, is_dir=True, size=0, mtime=self.root.mtime)
        if kind == "link":
            target = self._links()[route.name]
            return Entry(name=route.name, is_dir=False, size=len(target), mtime=self.root.mtime, link=target)
        if kind == "sidecar":
            return route.entry
        if route.rest == "/":
            return Entry(name=route.name, is_dir=True, size=0, mtime=_job_time(route.job, self.root.mtime))
        return self._tree(route.key, route.job).lookup(route.rest)

    def list_dir(self, path: str) -> dict[str, Entry]:
        route = self._route(path)
        kind = route.kind
        if kind == "root":
            names = self._types(self.jobs()) + [BY_NAME]
            return {n: Entry(name=n, is_dir=True, size=0, mtime=self.root.mtime) for n in names}
        if kind == "by-name":
            return {name: Entry(name=name, is_dir=False, size=len(t), mtime=self.root.mtime, link=t)
                    for name, t in self._links().items()}
        if kind == "type":
            jobs = self.jobs()
            entries = {job_id: Entry(name=job_id, is_dir=True, size=0, mtime=_job_time(job, self.root.mtime))
                       for (t, job_id), job in sorted(jobs.items()) if t == route.job_type}
            entries.update(self._sidecar_entries(route.job_type, jobs))
            return entries
        if kind == "job":
            return self._tree(route.key, route.job).list_dir(route.rest)
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", path)

    def read_folder(self, path: str) -> dict[str, Entry]:
        entries = self.list_dir(path)
        self.caches.walker.read(normalize(path), entries, self.list_dir)  # a walk: the next folders listed ahead
        return entries

    def open(self, path: str, entry: Entry):
        tree, inner = self._file_tree(path)
        return tree.open(inner, entry)

    def read(self, path: str, entry: Entry, offset: int, length: int) -> bytes:
        tree, inner = self._file_tree(path)
        return tree.read(inner, entry, offset, length)

    def readlink(self, path: str) -> str:
        route = self._route(path)
        if route.kind != "link":
            raise OSError(errno.EINVAL, "not a symbolic link", path)
        return self._links()[route.name]

    def attributes(self, path: str) -> dict[str, str]:
        route = self._route(path)
        kind = route.kind
        if kind == "root":
            return {"url": f"{self.files_url}{self.api.username}/"}  # as _client makes it
        if kind == "type":
            return {"url": self._type_tree(route.job_type).url("/")}
        if kind == "sidecar":
            return entry_attributes(self._type_tree(route.job_type).url("/" + route.name), route.entry)
        if kind != "job":
            return {}  # by-name and its links are desfs's own
        found = self._tree(route.key, route.job).attributes(route.rest)
        if route.rest == "/":
            job = route.job
            found.update(job_name=job.name, status=job.status, expires=job.expires)
        return found

    def _file_tree(self, path: str) -> tuple[Tree, str]:
        route = self._route(path)
        if route.kind == "job":
            return self._tree(route.key, route.job), route.rest
        if route.kind == "sidecar":
            return self._type_tree(route.job_type), "/" + route.name
        raise IsADirectoryError(errno.EISDIR, "is a folder", path)

    def _type_tree(self, job_type: str) -> Tree:
        """A Tree at the (unlistable) job-type folder, to read the sidecar files by range."""
        key = (job_type, "")
        with self._lock:
            tree = self._trees.get(key)
            if tree is None:
                tree = self._trees[key] = Tree(self._client(f"{job_type}/"), caches=self.caches, prefix=f"/{job_type}")
            return tree

    def _client(self, folder: str) -> Client:
        """A Client for a folder of the user's (under the lock), on the one shared connection pool."""
        client = Client(f"{self.files_url}{self.api.username}/{folder}", session=self._session,
                        **self.settings.client_options())
        self._session = self._session or client.session
        return client

    # -- sidecars and links -------------------------------------------------

    def _sidecar_entries(self, job_type: str, jobs) -> dict[str, Entry]:
        """The .log/.tar.gz files of the jobs of one type that exist (HEAD, in parallel for the unknown ones).

        Kept for the life of the mount once a job has finished (outside the listing cache: never
        evicted by a walk's listings); for a running job (whose log may appear later) for as long as
        its listings. At most `walk_ahead` (at least SIDECAR_CHECKS) HEADs at once."""
        suffixes = SIDECARS.get(job_type, (".log",))
        out: dict[str, Entry] = {}
        missing = []
        for key, job in jobs.items():
            if key[0] == job_type:
                known = self._finished_sidecars.get(key)
                if known is None:
                    known = self._sidecars.peek(_sidecar_key(key))
                if known is None:
                    missing.append((key, job))
                else:
                    out.update(known)
        if missing:
            tree = self._type_tree(job_type)

            def load(key_job) -> dict[str, Entry]:
                key, job = key_job
                try:
                    found = self._sidecars.get(_sidecar_key(key),
                                               lambda: self._head_sidecars(tree, key[1], suffixes, job))
                    if job.finished and found.ttl == float("inf"):
                        self._finished_sidecars[key] = found
                    return found
                except OSError as exc:  # not cached: tried again next time
                    log.info("could not check the sidecar files of %s: %s", key[1], exc)
                    return {}

            for found in _parallel_map(load, missing, self._sidecar_checks):
                out.update(found)
        return out

    def _sidecar_entry(self, job_type: str, jobs, name: str) -> Entry | None:
        """The sidecar file `name` of a job of this type, if it exists (only that job's are checked)."""
        for suffix in SIDECARS.get(job_type, (".log",)):
            key = (job_type, name[:-len(suffix)])
            if name.endswith(suffix) and key in jobs:
                return self._sidecar_entries(job_type, {key: jobs[key]}).get(name)
        return None

    def _head_sidecars(self, tree: Tree, job_id: str, suffixes, job: Job) -> Listing:
        entries = []
        for suffix in suffixes:
            name = job_id + suffix
            try:
                e = tree.stat_file("/" + name)
            except NotFound:
                continue
            entries.append(Entry(name=name, is_dir=False, size=e.size, mtime=e.mtime))
        return Listing.of(entries, ttl=float("inf") if job.finished else UNFINISHED_LISTING_TTL)

    def _links(self) -> dict[str, str]:
        """by-name link name → target: job names made safe and unique."""
        links: dict[str, str] = {}
        for (job_type, job_id), job in sorted(self.jobs().items(), key=lambda kv: (kv[1].name, kv[0])):
            name = safe_name(job.name) or job_id
            if name in links or name == BY_NAME:
                name = f"{name}-{job_id[:8]}"
            links[name] = f"../{job_type}/{job_id}"
        return links


def _parallel_map(function, items: list, workers: int) -> list:
    """[function(item) for item in items], up to `workers` at once, in daemon threads (so that an
    unmount never waits for one still hanging on the server, as it would for an executor's)."""
    if len(items) <= 1:
        return [function(item) for item in items]
    results: list = [None] * len(items)
    todo = iter(enumerate(items))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                i, item = next(todo, (None, None))
            if i is None:
                return
            results[i] = function(item)

    threads = [threading.Thread(target=work, name="desfs-sidecar", daemon=True)
               for _ in range(min(workers, len(items)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _sidecar_key(key: tuple[str, str]) -> str:
    """Where a job's sidecar files are kept among the listings: a key no mount path (a listing's key) can be."""
    return f"{key[0]}/{key[1]} sidecars"


def safe_name(name: str) -> str:
    """A job name as a file name: no '/' and nothing unprintable (C0, DEL, C1, bidi overrides and other
    format characters, line separators: '_' instead), not '.' or '..', at most 200 bytes."""
    cleaned = "".join(c if c.isprintable() and c != "/" else "_" for c in name).strip()
    if cleaned in ("", ".", ".."):
        return ""
    while len(cleaned.encode("utf-8", "surrogateescape")) > 200:
        cleaned = cleaned[:-1]
    return cleaned


def _job_time(job: Job, default: float) -> float:
    try:
        return time.mktime(time.strptime(job.time_complete, "%Y-%m-%d %H:%M:%S")) - time.timezone
    except (ValueError, OverflowError):
        return default
