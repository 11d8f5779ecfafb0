"""Command line: `desfs cache status|clear|fetch`, on a disk cache folder (--disk-cache, else the default).

PATHs are paths inside a desfs mount (mapped to their URLs through what each mount noted in the cache
folder) or SOURCEs as for `desfs get` (URLs, <type>/<job_id>, job ids).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from urllib.parse import quote

from desfs.cli.common import UsageError, printable, source_url
from desfs.cli.jobs import resolve_source
from desfs.diskcache import DiskStore, mounted_url
from desfs.mounting import mounts
from desfs.settings import DEFAULTS, default_disk_cache


def _folder(args: argparse.Namespace) -> str:
    folder = args.disk_cache or default_disk_cache()
    args.disk_cache = os.path.abspath(os.path.expanduser(folder))
    return args.disk_cache


def _store(args: argparse.Namespace) -> DiskStore:
    return DiskStore(_folder(args), getattr(args, "disk_cache_size", None) or DEFAULTS.disk_cache_size)


def target_url(args: argparse.Namespace, path: str) -> str:
    """The URL of PATH: a path in a desfs mount (a folder's ends with '/'), or a SOURCE."""
    if "://" not in path and os.path.exists(path):
        real = os.path.realpath(path)
        mount = max((m for m in mounts() if m.fstype == "fuse.desfs" and (
            real == m.mountpoint or real.startswith(m.mountpoint.rstrip("/") + "/"))),
            key=lambda m: len(m.mountpoint), default=None)
        base = mounted_url(_folder(args), mount.mountpoint) if mount else None
        if base is None:
            raise UsageError(f"{printable(path)}: not in a desfs mount that uses {args.disk_cache}")
        rel = os.path.relpath(real, mount.mountpoint)
        url = base + ("" if rel == "." else "/".join(quote(s, safe="") for s in rel.split("/")))
        return url + "/" if os.path.isdir(real) and not url.endswith("/") else url
    text = resolve_source(args, path)
    url = source_url(text)
    return url if text.endswith("/") or text.endswith("/json") else url[:-1]


def cmd_cache(args: argparse.Namespace) -> int:
    if args.cache_command == "status":
        return _status(args)
    if args.cache_command == "clear":
        store = _store(args)
        try:
            targets = [target_url(args, p) for p in args.paths] or [None]
            blocks = nbytes = 0
            for url in targets:
                n, b = store.drop(url)
                blocks, nbytes = blocks + n, nbytes + b
            if not args.paths:
                import shutil

                shutil.rmtree(os.path.join(store.folder, "listings"), ignore_errors=True)
        finally:
            store.close()
        print(f"removed {blocks} blocks ({_human(nbytes)})")
        return 0
    return _fetch(args)


def _status(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        st = store.status()
    finally:
        store.close()
    print(f"disk cache   {printable(st['folder'])}")
    print(f"size         {_human(st['bytes'])} of {_human(st['max_bytes'])}, {st['blocks']} blocks")
    print(f"files        {st['files']} in {st['jobs']} jobs")
    print(f"pinned       {_human(st['pinned_bytes'])}")
    for p in st["processes"]:
        asked = p["hits"] + p["misses"]
        rate = f"{100 * p['hits'] / asked:.0f} %" if asked else "-"
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(p["started"]))
        print(f"process {p['pid']:<7} since {since}: {p['hits']} blocks from disk of {asked} asked ({rate})")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from desfs.cli.get import open_source

    _folder(args)
    failed = 0
    for path in args.paths:
        url = target_url(args, path)
        args.source = url
        tree, root, entry = open_source(args)
        try:
            if tree.caches.disk is None:
                raise UsageError(f"the disk cache {args.disk_cache} cannot be used (see above)")
            files = [(root, entry)] if not entry.is_dir else [
                (f"{folder.rstrip('/')}/{name}", e) for folder, entries in tree.walk(root, workers=4)
                for name, e in entries.items() if not e.is_dir]
            total = sum(e.size for _, e in files)
            progress = _Progress(total, len(files), quiet=args.quiet)
            for file_path, e in files:
                try:
                    tree.store_file(file_path, e, progress.add)
                except OSError as exc:
                    failed += 1
                    print(printable(f"desfs cache fetch: {file_path}: {exc}"), file=sys.stderr)
                progress.file_done()
            progress.end()
            tree.blocks.flush()  # on disk, all of it
            if args.pin:
                pinned = tree.caches.disk.pin(url if not entry.is_dir else url.rstrip("/") + "/")
                if not args.quiet:
                    print(f"pinned {pinned} blocks of {printable(path)}", file=sys.stderr)
        finally:
            tree.close()
    return 1 if failed else 0


class _Progress:
    def __init__(self, total: int, files: int, quiet: bool) -> None:
        self.total, self.files, self.quiet = total, files, quiet
        self.done = self.files_done = 0
        self.started = self.shown = time.monotonic()
        self.tty = sys.stderr.isatty()

    def add(self, n: int) -> None:
        self.done += n
        if not self.quiet and self.tty and time.monotonic() - self.shown > 0.2:
            self._show("\r")

    def file_done(self) -> None:
        self.files_done += 1

    def _show(self, end: str) -> None:
        self.shown = time.monotonic()
        rate = self.done / max(self.shown - self.started, 1e-6)
        sys.stderr.write(f"{end}{_human(self.done)} of {_human(self.total)}, {self.files_done}/{self.files} files, "
                         f"{_human(rate)}/s ")
        sys.stderr.flush()

    def end(self) -> None:
        if not self.quiet:
            self._show("\r" if self.tty else "")
            sys.stderr.write("\n")


def _human(n: float) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)
