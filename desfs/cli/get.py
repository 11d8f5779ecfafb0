"""Command line: `desfs get` and `desfs ls`.

Wires a Client and Tree for SOURCE and hands them to the download layer or
prints listings; prints one line per failure, as the rest of the CLI.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from desfs.cli.common import printable, shown, source_url
from desfs.cli.jobs import resolve_source
from desfs.tree import join

def open_source(args: argparse.Namespace):
    """(tree, remote path, entry) for SOURCE: a folder URL, or a file URL (found by HEAD, since a
    job's .log and .tar.gz sit in a folder that cannot be listed)."""
    from urllib.parse import unquote

    from desfs.client import Client
    from desfs.errors import NotFound
    from desfs.listing import Entry
    from desfs.settings import Settings
    from desfs.tree import Tree

    text = resolve_source(args, args.source)  # a job id becomes its folder's URL (signing in)
    url = source_url(text)  # checks the scheme, drops /json, adds a slash
    if not (text.endswith("/") or text.endswith("/json")):
        url = url[:-1]  # maybe a file: tried as a folder first, below
    name = unquote(url.rstrip("/").rsplit("/", 1)[-1])

    def tree_at(folder_url: str) -> Tree:
        settings = Settings.from_args(args)
        # the transfers at once (files, or one file's segments), and the listings of a walk
        pool = max(16, max(getattr(args, "jobs", 1), getattr(args, "segments", 1)) + 4)
        client = Client(folder_url, **{**settings.client_options(), "connections": pool})
        return Tree(client, settings)

    folder_url = url if url.endswith("/") else url + "/"
    tree = tree_at(folder_url)
    try:
        tree.list_dir("/")
        return tree, "/", Entry(name=name, is_dir=True, size=0, mtime=0.0)
    except NotFound:
        if url.endswith("/"):
            raise
    tree.close()
    parent = url.rsplit("/", 1)[0] + "/"
    tree = tree_at(parent)
    return tree, "/" + name, tree.stat_file("/" + name)

def cmd_ls(args: argparse.Namespace) -> int:
    from desfs.download import human

    tree, path, entry = open_source(args)
    tty = sys.stdout.isatty()
    try:
        if not entry.is_dir:
            print(_ls_line(entry, human, tty) if args.long else shown(entry.name, tty))
            return 0
        if args.recursive:  # listings fetched level by level in parallel, printed depth-first as ls -R does
            listings = dict(tree.walk(path, workers=8))
            folders = list(_depth_first(path, listings))
        else:
            folders = [(path, tree.list_dir(path))]
        for n, (folder, entries) in enumerate(folders):
            if args.recursive:
                print(("\n" if n else "") + shown("." + folder if folder != "/" else ".", tty) + ":")
            for name, e in entries.items():
                print(_ls_line(e, human, tty) if args.long else shown(name, tty))
    finally:
        tree.close()
    return 0

def _depth_first(folder: str, listings: dict):
    entries = listings[folder]
    yield folder, entries
    for name, e in entries.items():
        if e.is_dir:
            yield from _depth_first(join(folder, name), listings)

def _ls_line(entry, human, tty: bool) -> str:
    mode = "dr-xr-xr-x" if entry.is_dir else "-r--r--r--"
    when = time.gmtime(entry.mtime)
    recent = abs(time.time() - entry.mtime) < 182 * 86400
    stamp = time.strftime("%b %e %H:%M", when) if recent else time.strftime("%b %e  %Y", when)
    return f"{mode} {human(entry.size):>6} {stamp} {shown(entry.name, tty)}"

def cmd_get(args: argparse.Namespace) -> int:
    from desfs.download import Downloader, Progress, human, plan_file, plan_tree
    from desfs.settings import Settings

    tree, path, entry = open_source(args)
    try:
        if entry.is_dir:
            dest = args.dest or entry.name or "download"
            plan = plan_tree(tree, dest, args.include, args.exclude, workers=args.jobs)
        else:
            dest = args.dest or entry.name
            if os.path.isdir(dest):
                dest = os.path.join(dest, entry.name)
            plan = plan_file(entry, path, dest)
        if args.dry_run:
            for item in plan.fetch:
                print(f"{human(item.entry.size):>6}  {shown(item.local, sys.stdout.isatty())}")
            print(f"desfs get: would fetch {len(plan.fetch)} files, {human(plan.bytes_to_fetch)}B "
                  f"({plan.bytes_to_fetch} bytes); {len(plan.up_to_date)} up to date", file=sys.stderr)
            return 0
        progress = Progress(plan.bytes_to_fetch, len(plan.fetch), stream=None if args.quiet else sys.stderr,
                            interval=args.progress_every)
        settings = Settings.from_args(args)
        downloader = Downloader(tree, jobs=args.jobs, progress=progress, segments=settings.segments,
                                segment_size=settings.segment_size)
        progress.start()
        try:
            outcome = downloader.run(plan)
        except KeyboardInterrupt:
            progress.stop()
            print(f"desfs get: interrupted; {progress.files} files complete, partial files kept "
                  f"(run the same command again to continue)", file=sys.stderr)
            return 130
        progress.stop()
    finally:
        tree.close()
    rate = outcome.bytes_done / outcome.seconds / 1e6 if outcome.seconds else 0.0
    print(f"desfs get: {len(outcome.done)} files, {human(outcome.bytes_done)}B in {outcome.seconds:.1f}s "
          f"({rate:.1f} MB/s); {len(plan.up_to_date)} already up to date; {len(outcome.failed)} failed "
          f"-> {shown(dest, False)}", file=sys.stderr)
    for item, reason in outcome.failed:
        print(f"desfs get: failed: {shown(item.remote.lstrip('/'), False)}: {printable(str(reason))}", file=sys.stderr)
    return 1 if outcome.failed else 0
