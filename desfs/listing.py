"""Listing layer: turns the bytes of an nginx `autoindex_format json` answer into Entry records.

Pure functions: no HTTP, no cache, no FUSE. A listing is untrusted input; names
that could escape the folder or that no filesystem can hold are refused and
logged, never passed on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from desfs.errors import BadListing

log = logging.getLogger(__name__)

NAME_MAX = 255  # bytes, as in Linux


@dataclass(frozen=True)
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


def parse_listing(body: bytes, url: str = "") -> list[Entry]:
    """Entries of a listing body, in the server's order; bad items are skipped and logged.

    Raises BadListing when the body as a whole is not a JSON listing.
    """
    try:
        items = json.loads(body.decode("utf-8", errors="surrogateescape"))
    except (ValueError, RecursionError) as exc:
        raise BadListing(f"folder listing is not valid JSON ({_head(body)!r})", url) from exc
    if not isinstance(items, list):
        raise BadListing("folder listing is not a JSON array", url)
    entries: list[Entry] = []
    seen: set[str] = set()
    for item in items:
        entry = _parse_item(item, url)
        if entry is None:
            continue
        if entry.name in seen:
            log.warning("listing %s: duplicate name %r skipped", url, entry.name)
            continue
        seen.add(entry.name)
        entries.append(entry)
    return entries


def _parse_item(item: object, url: str) -> Entry | None:
    if not isinstance(item, dict):
        log.warning("listing %s: item that is not an object skipped: %.80r", url, item)
        return None
    name, kind = item.get("name"), item.get("type")
    problem = name_problem(name)
    if problem:
        log.warning("listing %s: name %.80r refused: %s", url, name, problem)
        return None
    if kind == "other":
        return None  # sockets, broken links: nothing a reader could open
    if kind not in ("directory", "file"):
        log.warning("listing %s: %r has unknown type %.40r, skipped", url, name, kind)
        return None
    size = item.get("size", 0) if kind == "file" else 0
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        log.warning("listing %s: %r has a bad size %.40r, skipped", url, name, size)
        return None
    return Entry(name=name, is_dir=kind == "directory", size=size, mtime=_parse_mtime(item.get("mtime")))


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


def _head(body: bytes) -> bytes:
    return body[:40]
