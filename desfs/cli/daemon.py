"""Command line: the process that serves a mount (`desfs mount -f`, a background mount's child, the demo).

`serve` mounts a tree that `make_tree` builds and serves it until it is unmounted;
stop signals are taken by one thread of its own, which unmounts and ends the
process even while requests hang on the server. Knows nothing of SOURCEs, the
account or the demo: what to mount comes in as parameters.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

from desfs.cli.common import UsageError
from desfs.cli.status import StatusServer
from desfs.credentials import NoCredentials
from desfs.mounting import MountError, MountpointLock, detach, forbid_core_dumps, limit_malloc_arenas
from desfs.settings import Settings
from desfs.tree import MountTree

log = logging.getLogger("desfs")

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
STOP_GRACE = 1.5  # seconds the FUSE loop gets to end after an unmount, before requests still hanging are abandoned

TreeMaker = Callable[[Settings], "tuple[MountTree, str]"]  # settings → (the tree, what it is, for the log)


def hold_stop_signals() -> None:
    """Block SIGTERM, SIGINT and SIGHUP in this thread and every thread started after it (libfuse's
    workers too), so that they reach only the thread of `_stop_on_signals`: libfuse's own handlers
    end its loop only once every worker is done, which a request hanging on the server delays."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def _terminal_state():
    """The terminal's settings, to put back after a stop signal ends a prompt (getpass turns echo off)."""
    try:
        import termios

        return termios.tcgetattr(sys.stdin.fileno()) if sys.stdin and sys.stdin.isatty() else None
    except (ImportError, OSError, ValueError):
        return None


def _restore_terminal(state) -> None:
    if state is not None:
        import termios

        try:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, state)
        except (OSError, ValueError):
            pass


def _stop_on_signals(mounted: Callable[[], str | None], finished: threading.Event,
                     cleanup: Callable[[], None]) -> None:
    """On a stop signal: unmount (lazily if a program holds the mount) and end the process within
    STOP_GRACE seconds, whatever requests are still waiting on the server. `mounted()` is the mount
    point once the mount is live (before that, a stop signal just ends the process: exit 130).
    `cleanup` runs before the process is ended here."""
    terminal = _terminal_state()

    def end(code: int) -> None:
        cleanup()
        logging.shutdown()
        os._exit(code)

    def wait() -> None:
        sig = signal.Signals(signal.sigwait(STOP_SIGNALS))
        mountpoint = mounted()
        if mountpoint is None:
            _restore_terminal(terminal)
            print("\ndesfs: interrupted" if terminal is not None else "desfs: interrupted", file=sys.stderr,
                  flush=True)
            end(130)
        log.info("%s: unmounting %s", sig.name, mountpoint)
        try:
            detach(mountpoint)
        except (MountError, OSError, subprocess.SubprocessError) as exc:
            log.warning("unmounting %s after %s: %s", mountpoint, sig.name, exc)
        if not finished.wait(STOP_GRACE):
            log.info("unmounted %s (requests still waiting on the server were abandoned)", mountpoint)
            end(0)

    threading.Thread(target=wait, name="desfs-signals", daemon=True).start()


def serve(mountpoint: str, settings: Settings, make_tree: TreeMaker, *, fuse_options: dict,
          log_file: str | None = None, ready_fd: int | None = None, on_ready: Callable[[], None] | None = None,
          cleanup: Callable[[], None] | None = None) -> int:
    """Mount the tree `make_tree` builds on `mountpoint` and serve it in this process until it is
    unmounted; report "ok" or "error: ..." on `ready_fd` (a background mount's parent waits for it).
    `on_ready` runs once the mount is live; `cleanup` when serving ends, however it ends."""
    from desfs.fuse_ops import DesfsOperations, run

    limit_malloc_arenas()  # before any thread starts
    hold_stop_signals()
    finished = threading.Event()
    serving: list[DesfsOperations] = []
    cleaned = threading.Lock()

    statuses: list[StatusServer] = []

    def clean_up() -> None:
        if cleaned.acquire(blocking=False):  # once, from whichever thread gets here first
            for status in statuses:
                status.close()
            if cleanup:
                cleanup()

    _stop_on_signals(lambda: serving[0].mountpoint if serving and serving[0].started else None, finished, clean_up)
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
        try:
            mountpoint = lock.claim(mountpoint)
            tree, source = make_tree(settings)
        except (MountError, UsageError, NoCredentials, ValueError, OSError) as exc:
            report(f"error: {exc}")
            raise
        ops = DesfsOperations(tree, on_ready=lambda: (report("ok"), on_ready and on_ready()), mountpoint=mountpoint,
                              xattrs=settings.xattrs)
        serving.append(ops)
        status = StatusServer(mountpoint, source, tree)  # desfs status asks it, never the mount
        try:
            status.start()
            statuses.append(status)
        except OSError as exc:
            status.close()
            log.warning("no status socket (%s): desfs status will not show this mount", exc)
        log.info("mounting %s on %s (pid %d)", source, mountpoint, os.getpid())
        logged = os.path.getsize(log_file) if log_file and os.path.exists(log_file) else 0
        try:
            run(ops, mountpoint, fuse_options)
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
    finally:
        clean_up()


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
