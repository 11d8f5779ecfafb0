"""Command-line layer: parses arguments and wires Client, Tree and the FUSE adapter together.

The only module that builds objects from user input; expected failures are one
line on stderr (a traceback only with --debug). Exit codes: 0 ok, 1 failure,
2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from desfs import __version__
from desfs.cli_account import add_account_options, cmd_jobs, credentials, resolve_source, sign_in
from desfs.credentials import Credentials, NoCredentials
from desfs.errors import redact
from desfs.settings import ACCOUNT_MOUNT, CACHING, LISTINGS, NETWORK, Settings, positive_float
from desfs.mounting import (
    MountError, MountpointLock, check_mountpoint, detach, forbid_core_dumps, limit_malloc_arenas, unmount,
)

log = logging.getLogger("desfs")

DEFAULT_LOG = "~/.cache/desfs/mount.log"


class UsageError(Exception):
    """Bad command-line input: exit 2."""


def source_url(text: str) -> str:
    """The folder URL of SOURCE: scheme checked, `/json` suffix dropped, trailing slash added."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(
            "SOURCE must be the URL of a job folder "
            f"(https://<host>/files-desaccess/<user>/<type>/<job_id>/), got {text!r}"
        )
    url = text.split("#", 1)[0]
    if url.endswith("/json"):
        url = url[: -len("json")]
    return url if url.endswith("/") else url + "/"


MOUNT_GROUPS = (NETWORK, LISTINGS, CACHING, ACCOUNT_MOUNT)  # the option groups of `desfs mount`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="desfs",
        description="Mount DESaccess job output as a read-only filesystem, reading only the bytes you need.")
    parser.add_argument("--version", action="version", version=f"desfs {__version__}")
    parser.add_argument("--debug", action="store_true", help="log every request; tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    m = sub.add_parser("mount", help="mount every job of an account, or one job folder", description=(
        "desfs mount MOUNTPOINT mounts every job of a DESaccess account (signing in); desfs mount SOURCE "
        "MOUNTPOINT mounts one job folder: a URL whose folders answer <folder>/json, or <type>/<job_id> or a "
        "job id of the signed-in account. Goes to the background once the mount is live, unless -f."))
    m.add_argument("source", metavar="SOURCE", nargs="?",
                   help="URL of a job folder (or a folder below one), <type>/<job_id>, or a job id")
    m.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?", help="an empty folder")
    m.add_argument("-f", "--foreground", action="store_true", help="stay attached; Ctrl-C unmounts")
    m.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
                   help="FUSE mount options, passed through (e.g. allow_other)")
    m.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="log every request (to the log file, or stderr with -f); tracebacks on errors")
    m.add_argument("--log-file", metavar="FILE",
                   help=f"where a background mount logs, private to you (default: {DEFAULT_LOG})")
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    m.add_argument("--handoff-fd", type=int, help=argparse.SUPPRESS)
    Settings.add_options(m, *MOUNT_GROUPS)
    add_account_options(m)

    u = sub.add_parser("umount", help="unmount a desfs mount", description=(
        "Unmount a desfs mount; also cleans up a mount whose process died."))
    u.add_argument("mountpoint", metavar="MOUNTPOINT")

    g = sub.add_parser("get", help="download a job folder or file, resumably", description=(
        "Download the folder or file at SOURCE into DEST (default: a folder or file named after it), several "
        "files at once. Files already complete (size and time match) are skipped; an interrupted run leaves "
        "hidden .desfs-part files that the next run continues."))
    g.add_argument("source", metavar="SOURCE", help="URL of a job folder, a folder below one, or a file")
    g.add_argument("dest", metavar="DEST", nargs="?", help="where to put it")
    g.add_argument("-j", "--jobs", type=int, default=4, metavar="N", help="downloads at once (default: 4)")
    g.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="only files matching GLOB (name, or path if it has '/'); repeatable, e.g. '*_r.fits'")
    g.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="skip files matching GLOB; repeatable")
    g.add_argument("-n", "--dry-run", action="store_true", help="list what would be fetched, fetch nothing")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress, only errors and the summary")
    g.add_argument("--progress-every", type=positive_float, metavar="SECONDS",
                   help="seconds between progress lines when not on a terminal (default: 10)")
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="log every request")
    Settings.add_options(g, NETWORK, LISTINGS)
    add_account_options(g)

    ls = sub.add_parser("ls", help="list a remote folder", description="List the folder at SOURCE, as ls would.")
    ls.add_argument("source", metavar="SOURCE", help="URL of a job folder, a folder below one, or a file")
    ls.add_argument("-l", dest="long", action="store_true", help="long listing: type, size (human-readable), time")
    ls.add_argument("-R", dest="recursive", action="store_true", help="list sub-folders too")
    ls.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="log every request")
    Settings.add_options(ls, NETWORK, LISTINGS)
    add_account_options(ls)

    j = sub.add_parser("jobs", help="list the account's jobs", description=(
        "List the jobs of a DESaccess account: type, id, name, status, when it finished, when it expires."))
    j.add_argument("--json", action="store_true", help="as JSON, for scripts")
    j.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="log every request")
    Settings.add_options(j, NETWORK)
    add_account_options(j)

    d = sub.add_parser("demo", help="mount a built-in sample job (no network, no account)", description=(
        "Start a local file server that answers like the DES file server, over a generated sample "
        "cutout job and query job, and mount the cutout job. Ctrl-C unmounts and stops."))
    d.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?", help="an empty folder (default: a temporary one)")
    d.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        _setup_logging(args)
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(printable(redact(f"desfs {args.command}: {exc}")), file=sys.stderr)
        return 2
    except (MountError, NoCredentials, OSError) as exc:
        if args.debug:
            log.exception("failed")
        print(printable(redact(f"desfs {args.command}: {exc}")), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("desfs: interrupted", file=sys.stderr)
        return 130


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.debug else logging.WARNING
    target = getattr(args, "log_file", None)
    handler: logging.Handler
    if target and getattr(args, "foreground", False):
        log_file = os.fdopen(open_log(os.path.abspath(target)), "a", encoding="utf-8", errors="backslashreplace")
        handler = logging.StreamHandler(log_file)
        level = logging.DEBUG if args.debug else logging.INFO
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if not args.debug:
        logging.getLogger("urllib3").setLevel(logging.WARNING)


def printable(text: str, keep: str = "") -> str:
    """`text` with every unprintable character but those in `keep` escaped as Python does (\\x1b,
    \\n, \\u202e): messages carry text from the server (an API's error message, a job id), which must
    not drive the terminal that shows them, nor forge lines of a log."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)


class _RedactingFormatter(logging.Formatter):
    """Log lines with the user name and password of every URL hidden, and unprintable characters
    escaped: a message is one line; a traceback keeps its line breaks."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        return redact(printable(super().format(record), keep="\n"))


def open_log(path: str) -> int:
    """`path` (absolute) opened for appending, as a file only its owner may read (0600), never through
    a symbolic link. Folders desfs creates for it are 0700, and so is the default log's folder."""
    folder = os.path.dirname(path)
    try:
        _make_private_folders(folder)
        if folder == os.path.dirname(os.path.abspath(os.path.expanduser(DEFAULT_LOG))):
            st = os.stat(folder)
            if st.st_mode & 0o077 and st.st_uid == os.getuid():
                os.chmod(folder, 0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise MountError(f"log file {path} is a symbolic link: refused (give the path of a real file)") from None
        raise MountError(f"cannot open the log file {path}: {exc.strerror}") from None
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077 and st.st_uid == os.getuid():
        os.fchmod(fd, 0o600)  # a log made by an older desfs, readable by others
    return fd


def _make_private_folders(folder: str) -> None:
    """`folder` and its missing parents, each made 0700 (os.makedirs gives its mode to the last one only)."""
    if os.path.isdir(folder):
        return
    parent = os.path.dirname(folder)
    if parent != folder:
        _make_private_folders(parent)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass


# -- mount --------------------------------------------------------------------


def cmd_mount(args: argparse.Namespace) -> int:
    if args.handoff_fd is not None:  # the serving process of a background mount
        url = take_handoff(args, _read_handoff(args.handoff_fd))
    else:
        url = mount_source(args)
    if url is None and "allow_other" in _mount_options(args):
        log.warning("-o allow_other: every local user can read every file of every job of this account "
                    "through %s", args.mountpoint)
    if not args.foreground:
        return _mount_in_background(args, url)
    return _serve(args, url, ready_fd=args.ready_fd)


def mount_source(args: argparse.Namespace) -> str | None:
    """The folder URL to mount (None: every job of the account); a lone argument is the mount point."""
    if args.source is None:
        raise UsageError("give MOUNTPOINT (every job of your account) or SOURCE MOUNTPOINT (one job folder)")
    if args.mountpoint is None:  # desfs mount ~/des: the whole account
        args.mountpoint, args.source = args.source, None
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


def _mount_options(args: argparse.Namespace) -> dict:
    # auto_cache: libfuse keeps the kernel's page cache across opens while size and mtime are unchanged.
    # fsname is shown to every local user (/proc/mounts, df): never the URL, the key to the job's files.
    options: dict = {"ro": True, "nosuid": True, "nodev": True, "subtype": "desfs", "auto_cache": True,
                     "fsname": "desfs"}
    for group in args.options:
        for opt in filter(None, group.split(",")):
            key, eq, value = opt.partition("=")
            if key in ("rw",):
                raise UsageError("desfs is read-only: option 'rw' is not supported")
            options[key] = value if eq else True
    return options


STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
STOP_GRACE = 1.5  # seconds the FUSE loop gets to end after an unmount, before requests still hanging are abandoned


def _hold_stop_signals() -> None:
    """Block SIGTERM, SIGINT and SIGHUP in this thread and every thread started after it (libfuse's
    workers too), so that they reach only the thread of `_stop_on_signals`: libfuse's own handlers
    end its loop only once every worker is done, which a request hanging on the server delays."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def _stop_on_signals(mounted: Callable[[], str | None], finished: threading.Event) -> None:
    """On a stop signal: unmount (lazily if a program holds the mount) and end the process within
    STOP_GRACE seconds, whatever requests are still waiting on the server. `mounted()` is the mount
    point once the mount is live (before that, a stop signal just ends the process: exit 130)."""

    def wait() -> None:
        sig = signal.Signals(signal.sigwait(STOP_SIGNALS))
        mountpoint = mounted()
        if mountpoint is None:
            print("desfs: interrupted", file=sys.stderr, flush=True)
            logging.shutdown()
            os._exit(130)
        log.info("%s: unmounting %s", sig.name, mountpoint)
        try:
            detach(mountpoint)
        except (MountError, OSError, subprocess.SubprocessError) as exc:
            log.warning("unmounting %s after %s: %s", mountpoint, sig.name, exc)
        if not finished.wait(STOP_GRACE):
            log.info("unmounted %s (requests still waiting on the server were abandoned)", mountpoint)
            logging.shutdown()
            os._exit(0)

    threading.Thread(target=wait, name="desfs-signals", daemon=True).start()


def _serve(args: argparse.Namespace, url: str | None, ready_fd: int | None) -> int:
    """Mount `url` (None: the whole account) and serve in this process until unmounted;
    report readiness or failure on `ready_fd`."""
    from desfs.client import Client
    from desfs.fuse_ops import DesfsOperations, run
    from desfs.tree import Tree

    limit_malloc_arenas()  # before any thread starts
    _hold_stop_signals()
    finished = threading.Event()
    serving: list[DesfsOperations] = []
    _stop_on_signals(lambda: serving[0].mountpoint if serving and serving[0].started else None, finished)
    forbid_core_dumps()  # the serving process holds the password and tokens: no core file, no /proc/<pid>/mem
    lock = MountpointLock()  # from the check until the mount is live or failed: one mount per mount point

    def report(line: str) -> None:
        lock.release()  # the mount is live, or has failed
        if ready_fd is not None:
            try:
                os.write(ready_fd, (line + "\n").encode())
                os.close(ready_fd)
            except OSError:
                pass

    try:
        mountpoint = lock.claim(args.mountpoint)
        settings = Settings.from_args(args)
        if url is None:
            tree, source = getattr(args, "make_tree", _account_tree)(args, settings)
        else:
            client = Client(url, **settings.client_options())
            tree, source = Tree(client, settings), url
            try:
                tree.list_dir("/")
            except OSError as exc:
                raise MountError(f"cannot mount {url}: {exc.strerror}") from exc
        options = _mount_options(args)
    except (MountError, UsageError, NoCredentials, ValueError, OSError) as exc:
        report(f"error: {exc}")
        raise
    ops = DesfsOperations(tree, on_ready=lambda: (report("ok"), getattr(args, "on_ready", lambda: None)()),
                          mountpoint=mountpoint)
    serving.append(ops)
    log.info("mounting %s on %s (pid %d)", source, mountpoint, os.getpid())
    log_file = getattr(args, "log_file", None)
    logged = os.path.getsize(log_file) if log_file and os.path.exists(log_file) else 0
    try:
        run(ops, mountpoint, options)
    except RuntimeError as exc:
        if not ops.started:
            said = _libfuse_complaint(log_file, logged)
            why = f": {said}" if said else " (is /dev/fuse there, is fusermount3 installed?)"
            report(f"error: FUSE could not mount {mountpoint}{why}")
            raise MountError(f"FUSE could not mount {mountpoint}{why} ({exc})") from None
        log.debug("FUSE loop ended with code %s", exc)  # libfuse 3 ends so after a Ctrl-C or SIGTERM too
    finished.set()
    log.info("unmounted %s", mountpoint)
    return 0


def _libfuse_complaint(log_file: str | None, since: int) -> str | None:
    """The last thing libfuse (or fusermount3) wrote to the log after `since` bytes: why a mount
    failed, e.g. "fuse: unknown option(s): `-o nonempty'". libfuse writes to stderr, which a
    background mount sends to its log file."""
    if not log_file:
        return None
    try:
        with open(log_file, "rb") as f:
            f.seek(since)
            tail = f.read(64 * 1024).decode(errors="replace")
    except OSError:
        return None
    said = [line.strip() for line in tail.splitlines() if line.startswith(("fuse:", "fusermount"))]
    return said[-1] if said else None


def _account_tree(args: argparse.Namespace, settings: Settings):
    from desfs.account import AccountTree
    from desfs.cli_account import site_urls

    api = sign_in(args)
    _, files_url, _ = site_urls(args)
    tree = AccountTree(api, files_url, settings)
    try:
        jobs = tree.jobs()
    except OSError as exc:
        raise MountError(f"cannot list the jobs of {api.username}: {exc.strerror}") from exc
    log.info("%d jobs of %s", len(jobs), api.username)
    return tree, f"{api.username}@{files_url}"


def child_argv(args: argparse.Namespace, mountpoint: str, log_file: str, ready_fd: int, handoff_fd: int) -> list[str]:
    """The command line of the process that serves a background mount: this one's options, in the
    foreground, reporting on `ready_fd`, reading the URLs and credentials (`handoff`) from `handoff_fd`."""
    settings = Settings.from_args(args)
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


# -- umount, demo ---------------------------------------------------------------


def cmd_umount(args: argparse.Namespace) -> int:
    what = unmount(args.mountpoint)
    if what != "unmounted":
        print(f"desfs umount: {args.mountpoint}: {what}", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from desfs.account import AccountTree, FixedJobs
    from desfs.api import Job
    from desfs.sample import MTIME, make_sample
    from desfs.server import DesServer

    _hold_stop_signals()  # before the server's threads start: the mount's signal thread takes them
    workdir = tempfile.mkdtemp(prefix="desfs-demo-")
    mountpoint = args.mountpoint or os.path.join(workdir, "mnt")
    if args.mountpoint is None:
        os.mkdir(mountpoint)
    sample = make_sample(os.path.join(workdir, "server"))
    server = DesServer(os.path.join(workdir, "server")).start()
    finished = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(MTIME))
    account = FixedJobs(sample.user, [Job(job_id, job_type, name, "success", finished)
                                      for job_type, job_id, name in sample.jobs])
    mount_args = build_parser().parse_args(["mount", "--foreground", mountpoint])  # the mount's defaults
    mount_args.mountpoint, mount_args.source, mount_args.debug = mountpoint, None, args.debug

    def tell() -> None:
        mp, cut, obj = mountpoint, f"{mountpoint}/cutout/{sample.cutout_job}", "DESJ030510.9606-341521.6000"
        here = os.path.join(os.path.dirname(sys.executable), "desfs")
        prog = "desfs" if shutil.which("desfs") == here or not os.path.exists(here) else here
        print(f"desfs demo: a sample DESaccess account is mounted on {mp}\n"
              f"  (a cutout job and a query job, served by a local DES-like file server at {server.base_url})\n"
              f"Try, in another terminal:\n"
              f"  ls -lR {mp}\n"
              f"  ls -l {mp}/by-name\n"
              f"  cat {cut}/positions_{sample.cutout_job}.csv\n"
              f"  python3 -c \"from astropy.io import fits; fits.info('{cut}/DES0305-3415/{obj}/{obj}_r.fits')\"\n"
              f"  {prog} ls -l {sample.url(server.base_url, 'query')}\n"
              f"Press Ctrl-C here to unmount and stop.", flush=True)

    def demo_account(_args, settings):
        return AccountTree(account, server.base_url, settings), f"demo@{server.base_url}"

    mount_args.on_ready, mount_args.make_tree = tell, demo_account
    try:
        return _serve(mount_args, None, ready_fd=None)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        print("desfs demo: unmounted and stopped", file=sys.stderr)


# -- get, ls (in cli_get) ----------------------------------------------------------


def cmd_get(args: argparse.Namespace) -> int:
    from desfs.cli_get import get

    return get(args)


def cmd_ls(args: argparse.Namespace) -> int:
    from desfs.cli_get import ls

    return ls(args)


COMMANDS = {"mount": cmd_mount, "umount": cmd_umount, "demo": cmd_demo, "get": cmd_get, "ls": cmd_ls,
            "jobs": cmd_jobs}
