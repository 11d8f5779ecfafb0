"""Disk tier of the block cache: a cache.Store whose blocks survive unmounts, reboots and crashes.

Layout of a cache folder (0700, every file 0600, opened with O_NOFOLLOW):

    blocks/ab/ab12…ef   one file per block, named by the SHA-256 of its key
    tmp/                blocks being written (renamed into blocks/ when complete)
    index.sqlite        what is stored: size, last use (a sequence), time stored, pin

A block file is a header (magic, data length, CRC32 of the data, time stored,
the key itself, CRC32 of the header) followed by the data. Every read checks
all of it: a torn, truncated or corrupt file, or one of another key, is a miss
(and is removed), never wrong bytes. Writes go to a temporary file that is
renamed into place, so a crash (kill -9) mid-write leaves at worst a stray
temporary file, removed at the next start.

The index is advisory: a read goes to the block's file directly (no query), and
a file the index does not know (a crash between the rename and the index's
update) is adopted when it is read. It serves eviction (least recently used
first, pinned last) and the total size, kept by triggers, so opening a cache of
any size reads nothing but the index's header (no scan). SQLite in WAL mode lets
several processes (two mounts, a mount and `desfs cache fetch`) share a folder:
a block's room is taken in one transaction (evict the least recently used,
check the budget, add the block's row) before its file is written, and victims'
files are removed inside that transaction, so processes never overrun the budget
together and a use remembered by one process never brings back a block another
evicted. The budget is `max_size` bytes and never less than `FREE_FLOOR` of the
file system left free.

Keys are what cache.BlockCache uses, (FileKey(url, size, mtime), index, block size), or plain
strings and numbers; nothing else is ever written (no credentials, no tokens).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import mmap
import os
import sqlite3
import stat
import struct
import threading
import time
import zlib
from collections.abc import Callable, Hashable
from typing import Any

from desfs.cache import MAPPED_MIN, FileKey
from desfs.listing import Entry, Listing

log = logging.getLogger(__name__)

MAGIC = b"DESFSBK1"
_HEAD = struct.Struct("<8sQIdI")  # magic, data length, data CRC32, time stored, key length
_CRC = struct.Struct("<I")
FREE_FLOOR = 0.10  # share of the file system the cache always leaves free
FLUSH_EVERY = 256  # uses of blocks remembered before they are written to the index
FLUSH_SECONDS = 2.0
BUSY_MS = 30_000  # how long a write to the index waits for another process's

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (name TEXT PRIMARY KEY, key TEXT NOT NULL, size INTEGER NOT NULL,
                                   used INTEGER NOT NULL, stored REAL NOT NULL, pinned INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS blocks_lru ON blocks (pinned, used);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS procs (pid INTEGER PRIMARY KEY, started REAL, hits INTEGER, misses INTEGER);
INSERT OR IGNORE INTO meta VALUES ('total', 0), ('seq', 0);
CREATE TRIGGER IF NOT EXISTS blocks_add AFTER INSERT ON blocks
    BEGIN UPDATE meta SET v = v + new.size WHERE k = 'total'; END;
CREATE TRIGGER IF NOT EXISTS blocks_del AFTER DELETE ON blocks
    BEGIN UPDATE meta SET v = v - old.size WHERE k = 'total'; END;
CREATE TRIGGER IF NOT EXISTS blocks_upd AFTER UPDATE OF size ON blocks
    BEGIN UPDATE meta SET v = v - old.size + new.size WHERE k = 'total'; END;
"""


class DiskCacheError(OSError):
    """The cache folder cannot be used (a symbolic link, someone else's, not writable)."""


def encode_key(key: Hashable) -> str:
    """A key as text (stored in the index and in each block's header): JSON of strings, numbers, tuples
    and FileKeys, nothing else."""
    return json.dumps(_plain(key), separators=(",", ":"), ensure_ascii=False)


def decode_key(text: str) -> Hashable:
    return _unplain(json.loads(text))


def _plain(key: Any) -> Any:
    if isinstance(key, FileKey):
        return {"u": key.url, "s": key.size, "m": key.mtime}
    if isinstance(key, tuple):
        return [_plain(k) for k in key]
    if isinstance(key, (str, int, float)) and not isinstance(key, bool):
        return key
    raise TypeError(f"a disk cache key cannot hold {type(key).__name__}")


def _unplain(value: Any) -> Any:
    if isinstance(value, dict):
        return FileKey(value["u"], value["s"], value["m"])
    if isinstance(value, list):
        return tuple(_unplain(v) for v in value)
    return value


def private_folder(path: str) -> str:
    """Make (0700) or check the folder `path`: not a symbolic link, owned by this user, private."""
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise DiskCacheError(f"disk cache {path} is not a folder (a symbolic link is refused)")
    if st.st_uid != os.getuid():
        raise DiskCacheError(f"disk cache {path} belongs to another user")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


LISTING_MAGIC = b"DESFSLS1"


class ListingStore:
    """The last listing of each folder, by URL, in `folder`/listings (one checked file each, written to a
    temporary file and renamed), for a mount that cannot reach its server. A damaged file is no listing."""

    def __init__(self, folder: str) -> None:
        self.folder = os.path.join(private_folder(folder), "listings")
        os.makedirs(self.folder, mode=0o700, exist_ok=True)

    def _path(self, url: str) -> str:
        return os.path.join(self.folder, hashlib.sha256(url.encode()).hexdigest())

    def save(self, url: str, listing: Listing) -> None:
        self._save(url, [[e.name, e.is_dir, e.size, e.mtime, e.link] for e in listing.values()])

    def load(self, url: str) -> Listing | None:
        rows = self._load(url)
        try:
            return None if rows is None else Listing.of(
                Entry(str(n), bool(d), int(s), float(m), None if ln is None else str(ln)) for n, d, s, m, ln in rows)
        except (ValueError, TypeError) as exc:
            log.warning("disk cache: the stored listing of a folder is unusable (%s)", exc)
            return None

    def save_jobs(self, api_url: str, username: str, jobs: list[dict]) -> None:
        """An account's last job list (what the API said of each job; never a token or a password)."""
        self._save(f"jobs {api_url.rstrip('/')} {username.lower()}", {"username": username, "jobs": jobs,
                                                                     "time": time.time()})

    def load_jobs(self, api_url: str, username: str) -> dict | None:
        """{"username", "jobs", "time"} as save_jobs stored it, or None."""
        data = self._load(f"jobs {api_url.rstrip('/')} {username.lower()}")
        if not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
            return None
        return data

    def _save(self, key: str, value: Any) -> None:
        body = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        keyb = key.encode()
        head = _HEAD.pack(LISTING_MAGIC, len(body), zlib.crc32(body), time.time(), len(keyb)) + keyb
        head += _CRC.pack(zlib.crc32(head))
        path = self._path(key)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                with os.fdopen(fd, "wb", closefd=False) as f:
                    f.write(head)
                    f.write(body)
            finally:
                os.close(fd)
            os.rename(tmp, path)
        except OSError as exc:
            log.warning("disk cache: could not store a listing: %s", exc)
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def _load(self, key: str) -> Any:
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            with os.fdopen(fd, "rb") as f:
                raw = f.read()
            keyb = key.encode()
            head_len = _HEAD.size + len(keyb) + _CRC.size
            magic, dlen, dcrc, _stored, klen = _HEAD.unpack_from(raw)
            (hcrc,) = _CRC.unpack_from(raw, head_len - _CRC.size)
            body = raw[head_len:]
            if (magic != LISTING_MAGIC or klen != len(keyb) or raw[_HEAD.size:_HEAD.size + klen] != keyb
                    or zlib.crc32(raw[:head_len - _CRC.size]) != hcrc or len(body) != dlen
                    or zlib.crc32(body) != dcrc):
                raise ValueError("damaged")
            return json.loads(body)
        except (OSError, ValueError, TypeError, struct.error) as exc:
            log.warning("disk cache: a stored listing is unusable (%s)", exc)
            return None

    def discard(self, url: str) -> None:
        try:
            os.unlink(self._path(url))
        except OSError:
            pass


class DiskStore:
    """A cache.Store of byte blocks in a folder (see the module's docstring). `ttl`: seconds a block is
    kept after it was stored (None: until evicted); `timer`: the clock of `ttl` (wall time)."""

    def __init__(self, folder: str, max_size: int, ttl: float | None = None,
                 timer: Callable[[], float] = time.time, free_floor: float = FREE_FLOOR) -> None:
        self.folder = private_folder(folder)
        self._max = max_size
        self._ttl, self._timer, self._free_floor = ttl, timer, free_floor
        self._lock = threading.RLock()  # the index's connection, eviction, writes
        self._uses = threading.Lock()  # _pending and _flushed (reads and touches take no other lock)
        self._pending: dict[str, tuple[str, int | None]] = {}  # name → (key text, size or None): uses not yet
        # in the index
        self._flushed = time.monotonic()
        self._started = time.time()
        self.alloc: Callable[[int], Any] = _new_buffer  # memory for a block read (BlockCache hands its spares)
        self.hits = self.misses = self.corrupt = 0
        for sub in ("blocks", "tmp"):
            os.makedirs(os.path.join(self.folder, sub), mode=0o700, exist_ok=True)
        self._clean_tmp()
        self._db = self._open_index()

    # -- the index ------------------------------------------------------------

    def _open_index(self) -> sqlite3.Connection:
        path = os.path.join(self.folder, "index.sqlite")
        for attempt in (1, 2):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                os.close(fd)
                db = sqlite3.connect(path, timeout=BUSY_MS / 1000, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
                return db
            except sqlite3.DatabaseError as exc:
                if attempt == 2:
                    raise DiskCacheError(f"disk cache index {path}: {exc}") from None
                log.warning("disk cache index %s is unreadable (%s): starting a new one; blocks already on disk "
                            "are taken back as they are read", path, exc)
                for suffix in ("", "-wal", "-shm"):
                    try:
                        os.unlink(path + suffix)
                    except FileNotFoundError:
                        pass
        raise AssertionError("unreachable")

    def _tx(self, sql_and_args: list[tuple[str, tuple]]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in sql_and_args:
                db.execute(sql, args)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _next_seq(self, n: int) -> int:
        """Reserve `n` use numbers (inside a transaction); the first is returned."""
        (seq,) = self._db.execute("UPDATE meta SET v = v + ? WHERE k = 'seq' RETURNING v", (n,)).fetchone()
        return seq - n + 1

    def _flush(self, wait: bool = True) -> None:
        """Write the remembered uses to the index (one transaction). `wait=False`: not if another process is
        writing the index at the moment (a reader's thread must not wait for it; the uses are then lost)."""
        if not self._pending:
            return
        db = self._db
        try:
            if not wait:
                db.execute("PRAGMA busy_timeout = 0")
            db.execute("BEGIN IMMEDIATE")
            try:
                self._write_uses()
                db.execute("INSERT OR REPLACE INTO procs VALUES (?, ?, ?, ?)",
                           (os.getpid(), self._started, self.hits, self.misses))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            with self._uses:
                self._flushed = time.monotonic()
            if wait:
                log.warning("disk cache: could not record block uses: %s", exc)
            else:
                log.debug("disk cache: block uses not recorded (the index is busy): %s", exc)
        finally:
            if not wait:
                db.execute(f"PRAGMA busy_timeout = {BUSY_MS}")

    def _write_uses(self) -> None:
        """Write the remembered uses to the index (inside a transaction)."""
        with self._uses:
            pending, self._pending = self._pending, {}
            self._flushed = time.monotonic()
        if not pending:
            return
        db = self._db
        seq = self._next_seq(len(pending))
        now = self._timer()
        for i, (name, (text, size)) in enumerate(pending.items()):
            if size is None or not os.path.exists(self._path(name)):
                # a use told by the tier above, or a block evicted meanwhile (by another process): only a block
                # the index knows
                db.execute("UPDATE blocks SET used = ? WHERE name = ?", (seq + i, name))
                continue
            db.execute("INSERT INTO blocks (name, key, size, used, stored) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT(name) DO UPDATE SET used = excluded.used", (name, text, size, seq + i, now))

    def _remember_use(self, name: str, text: str, size: int | None, backlog: int = FLUSH_EVERY) -> None:
        """Note a use of block `name` (its size, or None: as known); written to the index with the next
        uses, once `backlog` are waiting or FLUSH_SECONDS passed, by this thread if no other holds the
        index (a reader never waits for a writer here)."""
        with self._uses:
            old = self._pending.pop(name, None)  # (re-inserted last: the most recent use)
            self._pending[name] = (text, size if size is not None or old is None else old[1])
            due = len(self._pending) >= backlog or (
                backlog == FLUSH_EVERY and time.monotonic() - self._flushed > FLUSH_SECONDS)
        if due and self._lock.acquire(blocking=False):
            try:
                self._flush(wait=False)
            finally:
                self._lock.release()

    # -- files ----------------------------------------------------------------

    def _name(self, text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    def _path(self, name: str) -> str:
        return os.path.join(self.folder, "blocks", name[:2], name)

    def _clean_tmp(self) -> None:
        """Remove the temporary files of processes that are gone (killed mid-write)."""
        tmp = os.path.join(self.folder, "tmp")
        for entry in os.scandir(tmp):
            try:
                pid = int(entry.name.split(".")[1])
                os.kill(pid, 0)
                continue  # still writing
            except (IndexError, ValueError, ProcessLookupError):
                pass
            except PermissionError:
                continue
            try:
                os.unlink(entry.path)
            except OSError:
                pass

    def _read(self, name: str, text: str) -> Any | None:
        """The data of block file `name` when every check passes, else None (and the file removed)."""
        try:
            fd = os.open(self._path(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            length = os.fstat(fd).st_size
            keyb = text.encode()
            head_len = _HEAD.size + len(keyb) + _CRC.size
            size = length - head_len
            if size < 0:
                data = None
            else:
                head = bytearray(head_len)
                data = self.alloc(size)
                got = os.preadv(fd, [head, data], 0) if size else os.pread(fd, head_len, 0)
                if not size:
                    head, got = bytearray(got), len(got)
                magic, dlen, dcrc, stored, klen = _HEAD.unpack_from(head)
                (hcrc,) = _CRC.unpack_from(head, head_len - _CRC.size)
                if (got != length or magic != MAGIC or dlen != size or klen != len(keyb)
                        or bytes(head[_HEAD.size:_HEAD.size + klen]) != keyb
                        or zlib.crc32(memoryview(head)[:head_len - _CRC.size]) != hcrc or zlib.crc32(data) != dcrc):
                    data = None
                elif self._ttl is not None and self._timer() - stored > self._ttl:
                    self._forget(name)
                    return None
        except (OSError, struct.error):
            data = None
        finally:
            os.close(fd)
        if data is None:
            self.corrupt += 1
            log.warning("disk cache: block file %s is damaged: fetched again", self._path(name))
            self._forget(name)
        return data

    def _unlink(self, name: str) -> bool:
        """Remove a block's file; whether it was there."""
        try:
            os.unlink(self._path(name))
            return True
        except OSError:
            return False

    def _forget(self, name: str) -> bool:
        """Remove a block's file and its row; whether the file was there."""
        with self._uses:
            self._pending.pop(name, None)
        existed = self._unlink(name)
        try:
            with self._lock:
                self._tx([("DELETE FROM blocks WHERE name = ?", (name,))])
        except sqlite3.Error as exc:
            log.warning("disk cache: could not update the index: %s", exc)
        return existed

    def _write(self, name: str, text: str, value: Any) -> bool:
        keyb = text.encode()
        data = memoryview(value)
        head = _HEAD.pack(MAGIC, len(data), zlib.crc32(data), self._timer(), len(keyb)) + keyb
        head += _CRC.pack(zlib.crc32(head))
        tmp = os.path.join(self.folder, "tmp", f"{name[:16]}.{os.getpid()}.{threading.get_ident()}")
        final = self._path(name)
        for attempt in (1, 2):
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                try:
                    parts, total = [head, data], len(head) + len(data)
                    done = 0
                    while done < total:
                        n = os.writev(fd, parts)
                        done += n
                        while parts and n >= len(parts[0]):
                            n -= len(parts[0])
                            parts.pop(0)
                        if parts and n:
                            parts[0] = memoryview(parts[0])[n:]
                finally:
                    os.close(fd)
                try:
                    os.rename(tmp, final)
                except FileNotFoundError:
                    os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
                    os.rename(tmp, final)
                return True
            except FileNotFoundError:  # the folder was emptied by hand: make it again, once
                if attempt == 2:
                    raise
                private_folder(self.folder)
                for sub in ("blocks", "tmp"):
                    os.makedirs(os.path.join(self.folder, sub), mode=0o700, exist_ok=True)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        return False

    # -- eviction -------------------------------------------------------------

    def _room_needed(self, incoming: int) -> int:
        """Bytes to evict so that `incoming` more fit within the budget and the free-space floor."""
        (total,) = self._db.execute("SELECT v FROM meta WHERE k = 'total'").fetchone()
        need = total + incoming - self._max
        try:
            fs = os.statvfs(self.folder)
            floor = fs.f_blocks * fs.f_frsize * self._free_floor
            need = max(need, int(floor - (fs.f_bavail * fs.f_frsize - incoming)))
        except OSError:
            pass
        return need

    def _take_room(self, name: str, text: str, size: int) -> bool:
        """In one transaction (processes take turns): evict least recently used first, pinned last, until `size`
        bytes fit, and add block `name`'s row; whether there was room (a full disk, or everything pinned: no)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT size FROM blocks WHERE name = ?", (name,)).fetchone()
            incoming = size - (row[0] if row else 0)
            need = self._room_needed(incoming)
            if need > 0:
                self._write_uses()  # (the order of eviction is that of the last uses)
                need = self._room_needed(incoming)
            while need > 0:
                rows = db.execute("SELECT name, size FROM blocks WHERE name != ? ORDER BY pinned, used LIMIT 64",
                                  (name,)).fetchall()
                if not rows:
                    break
                for victim, vsize in rows:
                    with self._uses:
                        self._pending.pop(victim, None)
                    self._unlink(victim)
                    db.execute("DELETE FROM blocks WHERE name = ?", (victim,))
                    need -= vsize
                    if need <= 0:
                        break
                need = self._room_needed(incoming)  # (the free-space floor counts the files, not the rows)
            room = need <= 0
            if room:
                seq = self._next_seq(1)
                db.execute("INSERT INTO blocks (name, key, size, used, stored) VALUES (?, ?, ?, ?, ?) "
                           "ON CONFLICT(name) DO UPDATE SET size = excluded.size, used = excluded.used, "
                           "stored = excluded.stored",
                           (name, text, size, seq, self._timer()))
            db.execute("COMMIT")
            return room
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _expire(self) -> None:
        if self._ttl is None:
            return
        self._flush()
        old = self._db.execute("SELECT name FROM blocks WHERE stored < ?", (self._timer() - self._ttl,)).fetchall()
        for (name,) in old:
            self._forget(name)

    # -- cache.Store ----------------------------------------------------------

    def get(self, key: Hashable) -> Any | None:
        """The block's data, read from its file without waiting for the index (nor for a write under way)."""
        text, name = _text_and_name(key)
        data = self._read(name, text)
        if data is None:
            self.misses += 1
            return None
        self.hits += 1
        self._remember_use(name, text, len(data))
        return data

    def touch(self, key: Hashable) -> None:
        """`key` was used (from a tier above): it is now the most recently used (no disk read, no query,
        and the index written only once many such uses wait: a tier above calls this on its hits)."""
        text, name = _text_and_name(key)
        self._remember_use(name, text, None, backlog=8 * FLUSH_EVERY)

    def put(self, key: Hashable, value: Any) -> None:
        text, name = _text_and_name(key)
        size = len(value)
        if size > self._max:
            return
        with self._lock:
            try:
                with self._uses:
                    self._pending.pop(name, None)
                if not self._take_room(name, text, size):
                    return  # no room (a full disk, or everything pinned): served, not kept
                try:
                    self._write(name, text, value)
                except BaseException:
                    self._tx([("DELETE FROM blocks WHERE name = ?", (name,))])
                    raise
            except (OSError, sqlite3.Error) as exc:  # a full disk, a folder removed: the block is served anyway
                log.warning("disk cache: could not store a block: %s", exc)

    def discard(self, key: Hashable) -> bool:
        with self._lock:
            return self._forget(self._name(encode_key(key)))

    def keys(self) -> list[Hashable]:
        with self._lock:
            self._flush()
            self._expire()
            return [decode_key(text) for (text,) in self._db.execute("SELECT key FROM blocks ORDER BY used")]

    @property
    def current_size(self) -> int:
        with self._lock:
            self._flush()
            self._expire()
            (total,) = self._db.execute("SELECT v FROM meta WHERE k = 'total'").fetchone()
            return int(total)

    @property
    def max_size(self) -> int:
        return self._max

    def close(self) -> None:
        with self._lock:
            try:
                self._flush()
                self._db.execute("DELETE FROM procs WHERE pid = ?", (os.getpid(),))
            except sqlite3.Error:
                pass
            finally:
                self._db.close()

    # -- desfs cache ------------------------------------------------------------

    @staticmethod
    def _url_prefix(url: str) -> str:
        """The start of the index's key text of every block of the file `url` (or below the folder `url`)."""
        text = encode_key((FileKey(url, 0, 0.0), 0))
        return text[: text.index(json.dumps(url, ensure_ascii=False)) + len(json.dumps(url, ensure_ascii=False)) - 1]

    def _where_url(self, url: str) -> tuple[str, tuple]:
        prefix = self._url_prefix(url)
        if url.endswith("/"):  # a folder: everything below it
            return "substr(key, 1, ?) = ?", (len(prefix), prefix)
        return "substr(key, 1, ?) = ?", (len(prefix) + 1, prefix + '"')

    def pin(self, url: str, pinned: bool = True) -> int:
        """Keep the blocks of the file (or every file below the folder) `url` out of eviction until everything
        else is gone; how many blocks."""
        where, args = self._where_url(url)
        with self._lock:
            self._flush()
            return self._db.execute(f"UPDATE blocks SET pinned = ? WHERE {where}", (int(pinned), *args)).rowcount

    def drop(self, url: str | None = None) -> tuple[int, int]:
        """Remove the blocks of `url` (a file, or a folder and all below it), or every block; (blocks, bytes)."""
        with self._lock:
            self._flush()
            if url is None:
                rows = self._db.execute("SELECT name, size FROM blocks").fetchall()
            else:
                where, args = self._where_url(url)
                rows = self._db.execute(f"SELECT name, size FROM blocks WHERE {where}", args).fetchall()
            for name, _size in rows:
                self._forget(name)
            return len(rows), sum(size for _, size in rows)

    def urls_below(self, folder_url: str) -> set[str]:
        """The URLs of the files with blocks stored below `folder_url`."""
        where, args = self._where_url(folder_url.rstrip("/") + "/")
        with self._lock:
            self._flush()
            rows = self._db.execute(f"SELECT DISTINCT key FROM blocks WHERE {where}", args).fetchall()
        return _urls(text for (text,) in rows)

    def status(self) -> dict:
        """What the cache holds: bytes, blocks, files, jobs, pinned; and the disk hits of each process using it."""
        with self._lock:
            self._flush()
            db = self._db
            (total,) = db.execute("SELECT v FROM meta WHERE k = 'total'").fetchone()
            blocks, pinned = db.execute("SELECT count(*), coalesce(sum(pinned * size), 0) FROM blocks").fetchone()
            urls = _urls(text for (text,) in db.execute("SELECT key FROM blocks"))
            procs = db.execute("SELECT pid, started, hits, misses FROM procs").fetchall()
        jobs = {m.group(0) for m in (_JOB.search(u) for u in urls) if m}
        live = []
        for pid, started, hits, misses in procs:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            except PermissionError:
                pass
            live.append({"pid": pid, "started": started, "hits": hits, "misses": misses})
        return {"folder": self.folder, "bytes": int(total), "max_bytes": self._max, "blocks": blocks,
                "files": len(urls), "jobs": len(jobs), "pinned_bytes": int(pinned), "processes": live}


@functools.lru_cache(maxsize=8192)
def _text_and_name(key: Hashable) -> tuple[str, str]:
    """A key's text and its block file's name (the SHA-256 of the text), remembered for the keys in use."""
    text = encode_key(key)
    return text, hashlib.sha256(text.encode()).hexdigest()


def _new_buffer(n: int) -> Any:
    return mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) if n >= MAPPED_MIN else bytearray(n)


_JOB = __import__("re").compile(r"/[a-z]+/[0-9a-f]{32}/")  # <type>/<job_id>/ in a file's URL


def record_mount(folder: str, mountpoint: str, base_url: str) -> None:
    """Note in the cache folder which URL a mount point shows (for `desfs cache` given paths in a mount)."""
    path = os.path.join(private_folder(folder), "mounts")
    os.makedirs(path, mode=0o700, exist_ok=True)
    name = os.path.join(path, hashlib.sha256(mountpoint.encode()).hexdigest())
    tmp = f"{name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"mountpoint": mountpoint, "url": base_url}, f)
    os.rename(tmp, name)


def mounted_url(folder: str, mountpoint: str) -> str | None:
    """The URL a mount point shows, as its mount noted it (None: not known)."""
    name = os.path.join(folder, "mounts", hashlib.sha256(mountpoint.encode()).hexdigest())
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, encoding="utf-8") as f:
            data = json.load(f)
        return data["url"] if data.get("mountpoint") == mountpoint else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _urls(keys) -> set[str]:
    """The file URLs of stored block keys (in their text form); keys that do not decode are passed over."""
    urls = set()
    for text in keys:
        try:
            key = decode_key(text)
        except ValueError:
            continue
        if isinstance(key, tuple) and key and isinstance(key[0], FileKey):
            urls.add(key[0].url)
    return urls
