"""Mount lifecycle: is a path mounted, can it be mounted on (one mount at a time), and unmounting it;
the serving process kept out of core dumps.

Reads the mount table and unmounts through desfs.platform (Linux: /proc/self/mountinfo and
fusermount3); knows nothing of HTTP, caches or FUSE callbacks. Failures are MountError with a
one-line message for the user.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import subprocess
import sys
from dataclasses import dataclass

from desfs import platform
from desfs.platform import forbid_core_dumps, limit_malloc_arenas  # noqa: F401 (the daemon's, from here)

FSTYPE = "fuse.desfs"
log = logging.getLogger(__name__)


class MountError(Exception):
    """A mount or unmount that cannot be done; str() is the line shown to the user."""


@dataclass(frozen=True)
class MountInfo:
    mountpoint: str
    fstype: str
    source: str


def mounts() -> list[MountInfo]:
    return [MountInfo(*row) for row in platform.mount_table()]


def absolute(path: str) -> str:
    """Absolute path with every symlink resolved (a mount is made on, and listed at, the real path).
    Symlinks are followed one at a time and a mount point is never looked at: its desfs may be
    dead or stopped, and a stat of it would fail or wait for it."""
    path = os.path.abspath(os.path.expanduser(path))
    points = {m.mountpoint for m in mounts()}
    for _ in range(40):  # as many links as the kernel follows
        head, tail = os.path.split(path)
        path = os.path.join(os.path.realpath(head), tail)
        if tail in ("", ".", ".."):
            return os.path.realpath(path)
        if path in points or not os.path.islink(path):
            return path
        path = os.path.join(os.path.dirname(path), os.readlink(path))
    return path


def find_mount(path: str) -> MountInfo | None:
    target = absolute(path)
    found = [m for m in mounts() if m.mountpoint == target]
    return found[-1] if found else None


def check_mountpoint(path: str) -> str:
    """The absolute mountpoint, or MountError saying why nothing can be mounted there."""
    target = absolute(path)
    if find_mount(target):
        raise MountError(f"{path} is already a mount point (desfs umount {path} first)")
    try:
        names = os.listdir(target)
    except FileNotFoundError:
        raise MountError(f"mount point {path} does not exist (mkdir it first)") from None
    except NotADirectoryError:
        raise MountError(f"mount point {path} is not a folder") from None
    except OSError as exc:
        raise MountError(f"mount point {path}: {exc.strerror}") from None
    if names:
        raise MountError(f"mount point {path} is not empty")
    if not os.access(target, os.W_OK) and os.getuid() != 0:
        raise MountError(f"mount point {path}: permission denied")
    return target


class MountpointLock:
    """One mount at a time per mount point: an exclusive lock on a private file named after the mount
    point's real path, taken before the mount point is checked and released once the mount is live
    or has failed (by the kernel, too, when the process ends)."""

    def __init__(self) -> None:
        self._fd: int | None = None

    def claim(self, path: str) -> str:
        """The checked mount point, locked; MountError if another desfs is mounting there or it is unfit."""
        target = absolute(path)
        try:
            folder = _lock_folder()
            name = hashlib.sha256(os.fsencode(target)).hexdigest()[:32] + ".lock"
            fd = os.open(os.path.join(folder, name), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:  # no private folder for locks: mount unlocked rather than not at all
            log.warning("no lock for mount point %s (%s): not guarded against a second mount", target, exc)
            return check_mountpoint(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise MountError(f"{path}: another desfs is mounting on it right now") from None
            log.warning("no lock for mount point %s (%s): not guarded against a second mount", target, exc)
            return check_mountpoint(path)
        self._fd = fd
        try:
            return check_mountpoint(path)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _lock_folder() -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        folder = os.path.join(runtime, "desfs")
    else:
        folder = os.path.join(os.path.expanduser("~"), ".cache", "desfs", "locks")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    return folder


PROBE_PREFIX = ".desfs-probe-"  # names `desfs umount` looks up to see whether a mount's process answers
PROBE_SECONDS = 2.0  # how long `desfs umount` lets a mount answer a stat before calling it hung


def _start_probe(path: str) -> subprocess.Popen:
    """A child process that looks up a name in `path`: exit 3 when its FUSE process is gone (ENOTCONN).

    The stat runs in a child because a stat of a mount whose process hangs would
    hang this process (in D state) too; a child that takes too long is killed (a
    fatal signal ends a wait on a FUSE answer)."""
    code = ("import os,sys\ntry: os.stat(sys.argv[1])\n"
            "except OSError as e: sys.exit(3 if e.errno in (%d, %d) else 0)" % (errno.ENOTCONN, errno.ECONNABORTED))
    # a name nobody has looked up: the kernel cannot answer from its caches, the mount's process must
    # (and answers it at once, without asking the server: fuse_ops)
    missing = os.path.join(path, f"{PROBE_PREFIX}{os.urandom(8).hex()}")
    return subprocess.Popen([sys.executable, "-S", "-c", code, missing], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _probe_result(child: subprocess.Popen, timeout: float = PROBE_SECONDS) -> str:
    """'live', 'dead' (its process is gone) or 'hung' (no answer within `timeout`)."""
    try:
        return "dead" if child.wait(timeout) == 3 else "live"
    except subprocess.TimeoutExpired:
        child.kill()  # ends it unless the mount's process has taken its request: then it waits for the answer
        try:
            child.wait(0.5)
        except subprocess.TimeoutExpired:
            pass  # left behind; it ends when its request does (or its mount's process does)
        return "hung"


def unmount(path: str) -> str:
    """Unmount the desfs mount at `path`; returns what was done, or raises MountError.

    Never hangs: the mount itself is never looked at from this process (a hung
    mount would hold it); whether it answers is probed first in a child given
    PROBE_SECONDS. A mount that is dead or hung and still held by a program is
    detached lazily; a live one that is busy is left mounted ("busy")."""
    info = find_mount(path)
    if info is None:
        raise MountError(f"{path} is not mounted")
    if info.fstype != FSTYPE:
        raise MountError(f"{path} is not a desfs mount (it is {info.fstype})")
    state = _probe_result(_start_probe(info.mountpoint))
    result = _fusermount(["-u", info.mountpoint])
    if result.returncode == 0:
        return {"live": "unmounted", "dead": "cleaned up dead mount",
                "hung": "unmounted (it was not answering)"}[state]
    message = (result.stderr or result.stdout).strip()
    if "busy" in message.lower():
        if state != "live" and _fusermount(["-uz", info.mountpoint]).returncode == 0:
            if state == "dead":
                return "cleaned up dead mount (lazily: a process still had it open)"
            return "unmounted lazily: it was not answering and a process still had it open"
        raise MountError(f"{path} is busy: a process is using it (see: fuser -vm {path})")
    raise MountError(f"cannot unmount {path}: {message.splitlines()[-1] if message else 'fusermount failed'}")


def detach(mountpoint: str) -> None:
    """Unmount `mountpoint` for the process serving it (on a stop signal): lazily when busy."""
    if _fusermount(["-u", mountpoint]).returncode != 0:
        result = _fusermount(["-uz", mountpoint])
        if result.returncode != 0:
            raise MountError((result.stderr or result.stdout).strip() or "fusermount failed")


def lazy_unmount(path: str) -> None:
    """Detach a mount now whatever holds it (tests, clean-up after a crash)."""
    _fusermount(["-uz", absolute(path)])


def _fusermount(args: list[str]) -> subprocess.CompletedProcess:
    """fusermount3 -u or -uz (`args`), or what unmounts on this platform (desfs.platform)."""
    try:
        argv = platform.unmount_argv(args[1], lazy=args[0] == "-uz")
    except FileNotFoundError as exc:
        raise MountError(str(exc)) from None
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)
