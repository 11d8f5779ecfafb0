"""Listing layer: turns the bytes of an nginx `autoindex_format json` answer into Entry records.

No HTTP, no cache, no FUSE: bytes in (fed piece by piece as they arrive), a
Listing out, with what it costs in memory. A listing is untrusted input; names
that could escape the folder or that no filesystem can hold are refused and
logged, never passed on, and a listing larger than the memory allowed for it is
refused while it is parsed.
"""

from __future__ import annotations

import codecs
import json
import json.scanner
import logging
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from desfs.errors import BadListing, TooLarge

log = logging.getLogger(__name__)

NAME_MAX = 255  # bytes, as in Linux
ITEM_MAX_CHARS = 64 * 1024  # one listing item's JSON; nginx's are ~120 characters (a name is at most 255 bytes)


@dataclass(frozen=True, slots=True)
class Entry:
    """One name in a folder, as the server describes it."""

    name: str
    is_dir: bool
    size: int  # bytes; 0 for folders
    mtime: float  # seconds since the epoch, UTC
    link: str | None = None  # a symbolic link's target (made by desfs, never by a listing)

    @property
    def version(self) -> tuple[int, float]:
        """What identifies this content of the file: a change of either means new bytes."""
        return (self.size, self.mtime)


# -- what a listing costs in memory ------------------------------------------
#
# Measured with tracemalloc (tests/test_listing_memory.py) and counted as CPython 3.11 lays it out, each
# object rounded up to pymalloc's 16-byte size classes: an Entry (slots) 80 bytes; its name a str of
# 49 + len bytes (ASCII; 74 + len for Latin-1, 76 + 2 len for other BMP text, 80 + 4 len beyond);
# its size an int of 32 bytes unless a small cached one (0-256); its time a float of 32 bytes,
# shared by the entries of a listing that carry the same time string; and its slot in the folder's
# dict, 22 to 44 bytes (sys.getsizeof of the dict, counted whole). For nginx's listing of a cutout job
# (names of ~35 ASCII characters) that is about 250 bytes a name: 64 MiB hold ~270 000 names.

def _alloc(n: int) -> int:
    return (n + 15) & ~15


ENTRY_BYTES = _alloc(sys.getsizeof(Entry("", False, 0, 0.0)))
FLOAT_BYTES = _alloc(sys.getsizeof(0.0))


def entry_bytes(entry: Entry, time_shared: bool = False) -> int:
    """Bytes an Entry holds beyond its folder's dict: itself, its name, its size and time objects."""
    n = ENTRY_BYTES + _alloc(sys.getsizeof(entry.name))
    if not -5 <= entry.size <= 256:  # CPython keeps one object for each small int
        n += _alloc(sys.getsizeof(entry.size))
    if not time_shared:
        n += FLOAT_BYTES
    if entry.link is not None:
        n += _alloc(sys.getsizeof(entry.link))
    return n


class Listing(dict):
    """One folder's entries by name, in the server's order, with what they cost in memory.

    `nbytes`: the estimate of the Python memory they hold (the dict, the Entry objects, their names,
    sizes and times); `ttl`: how long a cache may keep it (None: its default); `refused`: why the
    folder's listing was refused (then it is empty), remembered so that it is not fetched again.
    """

    __slots__ = ("nbytes", "ttl", "refused")

    def __init__(self) -> None:
        super().__init__()
        self.nbytes = 0
        self.ttl: float | None = None
        self.refused: str | None = None

    @classmethod
    def of(cls, entries: Iterable[Entry], ttl: float | None = None) -> "Listing":
        listing = cls()
        for e in entries:
            listing.setdefault(e.name, e)
        listing.nbytes = sys.getsizeof(listing) + sum(entry_bytes(e) for e in listing.values())
        listing.ttl = ttl
        return listing

    @classmethod
    def refusal(cls, why: str, ttl: float | None = None) -> "Listing":
        listing = cls()
        listing.refused, listing.ttl = why, ttl
        listing.nbytes = sys.getsizeof(listing) + _alloc(sys.getsizeof(why))
        return listing


# -- parsing ------------------------------------------------------------------

_SPACE = re.compile(r"[ \t\n\r]*")
_scan = json.scanner.make_scanner(json.JSONDecoder())  # the json module's own item scanner (C)
_BEFORE, _FIRST, _AFTER_ITEM, _AFTER_COMMA, _DONE = range(5)


class ListingParser:
    """Parses a listing as its bytes arrive: `feed(piece)` as often as needed, then `close()`.

    Each item becomes an Entry as soon as it is complete, so the parse holds the Listing
    built so far, the text of one piece and the item under way (at most ITEM_MAX_CHARS):
    never the whole body, nor the JSON objects of the whole body. With `max_bytes`, a
    listing whose entries would hold more (see `entry_bytes`) is refused with TooLarge as
    soon as it passes it.
    """

    TIMES_MAX = 4096  # distinct time strings remembered, so that equal times share one float
    WARNINGS_MAX = 50  # skipped items logged one by one (a hostile listing must not flood the log)

    def __init__(self, url: str = "", max_bytes: int | None = None) -> None:
        self.url, self.max_bytes = url, max_bytes
        self.listing = Listing()
        self.received = 0  # bytes fed
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self._text = ""  # text not parsed yet
        self._state = _BEFORE
        self._retry_at = 0  # an unfinished item is scanned again once the text is this long
        self._objects = 0  # bytes of the entries' own objects (the dict is measured as it grows)
        self._times: dict[str, float] = {}
        self._head = b""
        self._skipped = 0

    def feed(self, data: bytes) -> None:
        if len(self._head) < 40:
            self._head += bytes(data[:40 - len(self._head)])
        self.received += len(data)
        self._text += self._decoder.decode(data)
        if len(self._text) >= min(self._retry_at, ITEM_MAX_CHARS + 1):
            self._run(final=False)

    def close(self) -> Listing:
        """The listing, once every byte was fed; BadListing when the body is not a listing."""
        self._text += self._decoder.decode(b"", final=True)
        self._run(final=True)
        if self._state != _DONE:
            self._bad()
        if self._skipped > self.WARNINGS_MAX:
            log.warning("listing %s: %d more items skipped", self.url, self._skipped - self.WARNINGS_MAX)
        self.listing.nbytes = sys.getsizeof(self.listing) + self._objects
        return self.listing

    def _run(self, final: bool) -> None:
        text, pos, state = self._text, 0, self._state
        length = len(text)
        self._retry_at = 0
        try:
            while True:
                pos = _SPACE.match(text, pos).end()
                if pos == length:
                    break
                char = text[pos]
                if state == _BEFORE:
                    if char != "[" and char in '{"-0123456789tfn':  # another JSON value
                        raise BadListing(f"folder listing is not a JSON array ({self._head!r})", self.url)
                    if char != "[":
                        self._bad()
                    pos, state = pos + 1, _FIRST
                elif state == _AFTER_ITEM:
                    if char not in ",]":
                        self._bad()
                    pos, state = pos + 1, (_AFTER_COMMA if char == "," else _DONE)
                elif state == _DONE:
                    self._bad()
                elif char == "]" and state == _FIRST:  # an empty array
                    pos, state = pos + 1, _DONE
                else:  # an item
                    try:
                        item, end = _scan(text, pos)
                    except (StopIteration, ValueError):  # not a whole item: cut by the end of this piece?
                        if final or length - pos > ITEM_MAX_CHARS:
                            self._bad()
                        self._retry_at = 2 * (length - pos)  # not scanned again before the text has doubled
                        break
                    if end == length and not final:  # a number may go on in the next piece
                        break
                    pos, state = end, _AFTER_ITEM
                    self._add(item)
        except RecursionError:
            self._bad()
        finally:
            self._text, self._state = text[pos:], state

    def _add(self, item: object) -> None:
        entry = _parse_item(item, self._warn, self._time)
        if entry is None:
            return
        listing = self.listing
        if entry.name in listing:
            self._warn("duplicate name %r skipped", entry.name)
            return
        listing[entry.name] = entry
        self._objects += entry_bytes(entry, time_shared=True)  # times are counted by _time
        if self.max_bytes is not None and self._objects + sys.getsizeof(listing) > self.max_bytes:
            raise TooLarge(f"folder listing needs more than the {self.max_bytes / 2**20:g} MiB of "
                           f"--listing-cache-size (over {len(listing)} names)", self.url)

    def _time(self, value: object) -> float:
        """The float of a time string: one object for the entries of this listing with equal times."""
        if not isinstance(value, str):
            return 0.0
        seconds = self._times.get(value)
        if seconds is None:
            if len(self._times) >= self.TIMES_MAX:
                self._times.clear()
            seconds = self._times[value] = _parse_mtime(value)
            self._objects += FLOAT_BYTES
        return seconds

    def _warn(self, message: str, *args: object) -> None:
        """Log a skipped item: the first WARNINGS_MAX of a listing, then only how many more (in close)."""
        self._skipped += 1
        if self._skipped <= self.WARNINGS_MAX:
            log.warning("listing %s: " + message, self.url, *args)

    def _bad(self):
        raise BadListing(f"folder listing is not valid JSON ({self._head!r})", self.url)


def parse_listing(body: bytes, url: str = "", max_bytes: int | None = None) -> list[Entry]:
    """Entries of a whole listing body, in the server's order; bad items are skipped and logged.

    Raises BadListing when the body as a whole is not a JSON listing, TooLarge past `max_bytes`.
    """
    parser = ListingParser(url, max_bytes)
    parser.feed(body)
    return list(parser.close().values())


def _parse_item(item: object, warn, parse_time) -> Entry | None:
    if not isinstance(item, dict):
        warn("item that is not an object skipped: %.80r", item)
        return None
    name, kind = item.get("name"), item.get("type")
    problem = name_problem(name)
    if problem:
        warn("name %.80r refused: %s", name, problem)
        return None
    if kind == "other":
        return None  # sockets, broken links: nothing a reader could open
    if kind not in ("directory", "file"):
        warn("%r has unknown type %.40r, skipped", name, kind)
        return None
    size = item.get("size", 0) if kind == "file" else 0
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        warn("%r has a bad size %.40r, skipped", name, size)
        return None
    return Entry(name=name, is_dir=kind == "directory", size=size, mtime=parse_time(item.get("mtime")))


def name_problem(name: object) -> str | None:
    """Why `name` cannot be a file name in the mount, or None when it can."""
    if not isinstance(name, str):
        return "not a string"
    if name in ("", ".", ".."):
        return "reserved name"
    if "/" in name or "\0" in name:
        return "holds '/' or NUL"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if len(encoded) > NAME_MAX:
        return f"longer than {NAME_MAX} bytes"
    return None


def _parse_mtime(value: object) -> float:
    if isinstance(value, str):
        try:
            return parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    return 0.0
