"""Command line: `desfs mount` and `desfs umount`.

Turns SOURCE into what to mount (a job folder's URL, or the whole account),
then either serves it here (`-f`, daemon.serve) or starts the process that will,
handing it the URLs and credentials through a pipe (never its command line,
which every local user can read), and waits until that mount is live.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import select
import subprocess
import sys
import time

from desfs.cli.common import DEFAULT_LOG, UsageError, open_log, source_url
from desfs.cli.daemon import TreeMaker, serve
from desfs.cli.fstab import ACCOUNT_SOURCE
from desfs.cli.jobs import credentials, resolve_source, sign_in, site_urls
from desfs.credentials import Credentials
from desfs.mounting import MountError, check_mountpoint, unmount
from desfs.settings import ACCOUNT_MOUNT, CACHING, LISTINGS, NETWORK, Settings, default_disk_cache

log = logging.getLogger("desfs")

MOUNT_GROUPS = (NETWORK, LISTINGS, CACHING, ACCOUNT_MOUNT)  # the option groups of `desfs mount`


def cmd_mount(args: argparse.Namespace) -> int:
    if args.handoff_fd is not None:  # the serving process of a background mount
        url = take_handoff(args, _read_handoff(args.handoff_fd))
    else:
        url = mount_source(args)
    options = fuse_options(args.options)
    if url is None and "allow_other" in options:
        log.warning("-o allow_other: every local user can read every file of every job of this account "
                    "through %s", args.mountpoint)
    if not args.foreground:
        return _mount_in_background(args, url)
    return serve(args.mountpoint, mount_settings(args), tree_maker(args, url), fuse_options=options,
                 log_file=args.log_file, ready_fd=args.ready_fd)


def mount_settings(args: argparse.Namespace) -> Settings:
    """The settings of a mount: the disk cache is on, in its default folder, unless --disk-cache names
    another or --no-disk-cache (an empty name) turns it off; a folder named relative to here is made absolute."""
    settings = Settings.from_args(args)
    folder = default_disk_cache() if settings.disk_cache is None else settings.disk_cache
    return dataclasses.replace(settings, disk_cache=folder and os.path.abspath(os.path.expanduser(folder)))


def tree_maker(args: argparse.Namespace, url: str | None) -> TreeMaker:
    """What builds the tree to mount: one folder's (checked by listing it), or the whole account's."""
    from desfs.client import Client
    from desfs.tree import Tree

    def job_tree(settings: Settings):
        tree = Tree(Client(url, **settings.client_options()), settings)
        try:
            tree.list_dir("/")
        except OSError as exc:
            raise MountError(f"cannot mount {url}: {exc.strerror}") from exc
        _record(settings, url)
        return tree, url

    def account_tree(settings: Settings):
        from desfs.account import AccountTree

        api = _signed_in_or_stored(settings)
        _, files_url, _ = site_urls(args)
        tree = AccountTree(api, files_url, settings)
        try:
            jobs = tree.jobs()
        except OSError as exc:
            raise MountError(f"cannot list the jobs of {api.username}: {exc.strerror}") from exc
        log.info("%d jobs of %s", len(jobs), api.username)
        _record(settings, f"{files_url}{api.username}/")
        return tree, f"{api.username}@{files_url}"

    def _signed_in_or_stored(settings: Settings):
        """The signed-in API; or, when it cannot be reached (or --offline), the job list the disk cache
        kept of this account (with a warning), which then stays as it is."""
        import errno as errnos

        from desfs.account import FixedJobs
        from desfs.api import Job
        from desfs.errors import DesfsError

        problem = "--offline"
        if not settings.offline:
            try:
                return sign_in(args)
            except DesfsError as exc:
                if exc.errno == errnos.EACCES or not settings.disk_cache:
                    raise
                problem = str(exc)
        from desfs.diskcache import ListingStore

        api_url = site_urls(args)[0]
        user = credentials(args).username
        stored = ListingStore(settings.disk_cache).load_jobs(api_url, user) if settings.disk_cache else None
        if stored is None:
            raise MountError(f"{problem}: and no job list of {user} is stored in the disk cache")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(stored.get("time", 0)))
        log.warning("DESaccess API not reached (%s): mounting the job list of %s stored %s, which stays as it "
                    "is until the next mount", problem, stored["username"], when)
        return FixedJobs(stored["username"], [Job(**j) for j in stored["jobs"]])

    def _record(settings: Settings, base_url: str) -> None:
        if settings.disk_cache:  # so that `desfs cache` knows the URL of a path in this mount
            from desfs.diskcache import record_mount

            try:
                record_mount(settings.disk_cache, os.path.realpath(args.mountpoint), base_url)
            except OSError as exc:
                log.warning("disk cache: could not note the mount: %s", exc)

    return account_tree if url is None else job_tree

def mount_source(args: argparse.Namespace) -> str | None:
    """The folder URL to mount (None: every job of the account); a lone argument is the mount point."""
    if args.source is None:
        raise UsageError("give MOUNTPOINT (every job of your account) or SOURCE MOUNTPOINT (one job folder)")
    if args.mountpoint is None:  # desfs mount ~/des: the whole account
        args.mountpoint, args.source = args.source, None
        return None
    if args.source == ACCOUNT_SOURCE:  # desfs mount desaccess ~/des (an fstab line's SOURCE)
        args.source = None
        return None
    if "://" not in args.source:
        return source_url(resolve_source(args, args.source))  # a job id: signs in to find the job's folder
    return source_url(args.source)

def handoff(args: argparse.Namespace, url: str | None, creds: Credentials | None) -> dict:
    """What the serving process of a background mount gets through a pipe instead of its command line,
    which every local user can read: the URLs (a job's URL is the only key to its files) and the
    user name and password."""
    data = {"source": url, "api_url": args.api_url, "files_url": args.files_url}
    if creds is not None:
        data.update(username=creds.username, password=creds.password)
    return data

def take_handoff(args: argparse.Namespace, data: dict) -> str | None:
    """The serving process's side of `handoff`: its one argument is the mount point; the URLs and
    credentials are put on `args`. Returns the URL to mount (None: the account)."""
    args.mountpoint, args.source = args.source, None
    args.api_url, args.files_url = data.get("api_url"), data.get("files_url")
    if data.get("username") is not None:
        args.handed_credentials = Credentials(data["username"], data.get("password") or "", "parent")
    return data.get("source")

def _read_handoff(fd: int) -> dict:
    try:
        with os.fdopen(fd, "r", encoding="utf-8") as pipe:
            data = json.load(pipe)
    except (OSError, ValueError) as exc:
        raise MountError(f"nothing to mount came from the starting command ({exc})") from None
    if not isinstance(data, dict):
        raise MountError("nothing to mount came from the starting command")
    return data

def fuse_options(groups: list[str]) -> dict:
    """The FUSE options of a mount: desfs's own, then those given with -o (`groups`)."""
    # auto_cache: libfuse keeps the kernel's page cache across opens while size and mtime are unchanged.
    # fsname is shown to every local user (/proc/mounts, df): never the URL, the key to the job's files.
    options: dict = {"ro": True, "nosuid": True, "nodev": True, "subtype": "desfs", "auto_cache": True,
                     "fsname": "desfs"}
    overridden = []
    for group in groups:
        for opt in filter(None, group.split(",")):
            key, eq, value = opt.partition("=")
            if key in ("rw", "dev", "suid"):  # mount(8) and mount.fuse3 hand these over on every mount
                overridden.append(key)
                continue
            if key in ("ro", "nosuid", "nodev"):
                continue
            options[key] = value if eq else True
    if overridden:
        log.info("options %s accepted and ignored: a desfs mount is always ro,nosuid,nodev", ",".join(overridden))
    return options

def child_argv(args: argparse.Namespace, mountpoint: str, log_file: str, ready_fd: int, handoff_fd: int) -> list[str]:
    """The command line of the process that serves a background mount: this one's options, in the
    foreground, reporting on `ready_fd`, reading the URLs and credentials (`handoff`) from `handoff_fd`."""
    settings = mount_settings(args)
    if settings.ca_bundle:  # the child runs in /
        settings = dataclasses.replace(settings, ca_bundle=os.path.abspath(settings.ca_bundle))
    argv = (["--debug"] if args.debug else []) + [
        "mount", "--foreground", "--ready-fd", str(ready_fd), "--handoff-fd", str(handoff_fd), "--log-file", log_file,
        *settings.argv(*MOUNT_GROUPS)]
    for group in args.options:
        argv += ["-o", group]
    argv += ["--site", args.site]
    if args.database:
        argv += ["--database", args.database]
    return argv + [mountpoint]

def _mount_in_background(args: argparse.Namespace, url: str | None) -> int:
    mountpoint = check_mountpoint(args.mountpoint)  # fail fast, before a child exists
    creds = credentials(args) if url is None else None  # may prompt: the terminal is here, not in the child
    log_file = os.path.abspath(os.path.expanduser(args.log_file or DEFAULT_LOG))
    logf = open_log(log_file)
    read_end, write_end = os.pipe()
    hand_read, hand_write = os.pipe()
    child = [sys.executable, "-m", "desfs", *child_argv(args, mountpoint, log_file, write_end, hand_read)]
    env = {k: v for k, v in os.environ.items() if k != "DESACCESS_PASSWORD"}  # it has it through the pipe
    try:
        proc = subprocess.Popen(child, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, cwd="/",
                                pass_fds=[write_end, hand_read], start_new_session=True, env=env)
    finally:
        os.close(logf)
        os.close(write_end)
        os.close(hand_read)
    try:
        with os.fdopen(hand_write, "w", encoding="utf-8") as pipe:
            json.dump(handoff(args, url, creds), pipe)
    except BrokenPipeError:
        pass  # the child is gone already: its answer (or its silence) says why
    # The child answers after its first listing (bounded by timeout and retries) and the FUSE INIT.
    deadline = time.monotonic() + Settings.from_args(args).patience(1 << 20) + 30
    answer = b""
    try:
        while b"\n" not in answer and time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], 0.5)
            if ready:
                chunk = os.read(read_end, 4096)
                if not chunk:
                    break
                answer += chunk
            elif proc.poll() is not None:
                break
    finally:
        os.close(read_end)
    line = answer.decode(errors="replace").strip()
    if line == "ok":  # sent once the kernel has answered a stat through the mount (DesfsOperations._mounted)
        log.debug("mounted %s on %s (pid %d, log %s)", url, mountpoint, proc.pid, log_file)
        return 0
    if proc.poll() is None:
        proc.terminate()
    if line.startswith("error: "):
        raise MountError(line[len("error: "):])
    raise MountError(f"the mount process stopped before the mount was live; see {log_file}")

def cmd_umount(args: argparse.Namespace) -> int:
    what = unmount(args.mountpoint)
    if what != "unmounted":
        print(f"desfs umount: {args.mountpoint}: {what}", file=sys.stderr)
    return 0
