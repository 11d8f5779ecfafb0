"""FUSE adapter layer: the only module that imports mfusepy (fusepy's maintained fork).

Turns the Tree's plain records into st_* dicts, file handles and errnos; holds
no HTTP and no caching of its own. Every callback goes through `_errno`, so
nothing but an OSError with a real errno reaches mfusepy (which would turn
anything else into EINVAL).

Internals of others relied on here (each guarded by a test that fails if it changes):
- mfusepy's `FUSE.read(path, buf, size, offset, fip)`, the ctypes callback it wraps, is
  overridden by `_FUSE.read` to copy a memoryview without making bytes of it; and
- `ctypes._memmove_addr`, CPython's memmove, called under the GIL (`_memmove`).
  Both: tests/test_mount.py::test_every_file_reads_back_byte_identical (and every read).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import logging
import os
import stat
import threading
from collections.abc import Callable

from ctypes.util import find_library

# mfusepy loads libfuse when it is imported. libfuse 3 is preferred: it lets the kernel send
# reads of up to 1 MiB (libfuse 2: 128 KiB), an eighth of the round trips through this process.
if not ({"FUSE_LIBRARY_PATH", "FUSE_LIBRARY_NAME"} & os.environ.keys()) and find_library("fuse3"):
    os.environ["FUSE_LIBRARY_NAME"] = "fuse3"

from mfusepy import FUSE, FuseOSError, Operations, fuse_version_major  # noqa: E402

from desfs import platform
from desfs.listing import NAME_MAX, Entry
from desfs.mounting import PROBE_PREFIX
from desfs.tree import MountTree, OpenFile

log = logging.getLogger(__name__)

DIR_MODE = stat.S_IFDIR | 0o555
FILE_MODE = stat.S_IFREG | 0o444
LINK_MODE = stat.S_IFLNK | 0o777
XATTR_PREFIX = "user.desfs."  # the extended attributes desfs shows (tree.MountTree.attributes)
BLKSIZE = 1024 * 1024  # tells cp, cat and friends to read in big chunks


ENOATTR = getattr(errno, "ENOATTR", errno.ENODATA)  # macOS names it ENOATTR
# a user's mistake, not a fault
_QUIET = frozenset({errno.ENOENT, errno.EROFS, errno.EISDIR, errno.ENOTDIR, ENOATTR, errno.ENOTSUP})


def _errno(method: Callable) -> Callable:
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as exc:
            if isinstance(exc.errno, int) and exc.errno > 0:
                if exc.errno not in _QUIET:
                    log.warning("%s%r: %s", method.__name__, args[:1], exc)
                raise FuseOSError(exc.errno) from None
            log.error("%s%r failed", method.__name__, args[:1], exc_info=True)
            raise FuseOSError(errno.EIO) from None
        except Exception:
            log.error("%s%r failed", method.__name__, args[:1], exc_info=True)
            raise FuseOSError(errno.EIO) from None

    return wrapper




class DesfsOperations(Operations):
    """Read-only FUSE operations over a MountTree (a Tree or an AccountTree).

    Writes, creates, renames, chmod and the rest are not defined here, so
    libfuse never offers them, and the mount is `ro`: the kernel answers EROFS
    to them itself. Opening for writing answers EROFS too. An open file reads
    the version it was opened on, whatever the server does meanwhile; the
    kernel's page cache is kept across opens while size and mtime stay the same
    (the `auto_cache` mount option).
    """

    use_ns = True

    def __init__(self, tree: MountTree, on_ready: Callable[[], None] | None = None,
                 mountpoint: str | None = None, xattrs: bool = True) -> None:
        self.tree = tree
        if not xattrs:  # left out of libfuse's table: the kernel, told ENOSYS once, stops asking for any
            self.getxattr = self.listxattr = self.setxattr = self.removexattr = None
        self.mountpoint = mountpoint
        self.started = False  # the kernel has sent INIT: mounted
        self.uid, self.gid = os.getuid(), os.getgid()
        self._on_ready = on_ready
        self._files: dict[int, OpenFile] = {}
        self._next_fh = itertools.count(1)
        self._lock = threading.Lock()

    def init(self, path):
        self.started = True
        # The kernel takes the INIT reply only after this returns: finish settling in a thread.
        threading.Thread(target=self._mounted, name="desfs-mounted", daemon=True).start()

    def _mounted(self) -> None:
        try:
            if self.mountpoint:
                readahead = raise_kernel_readahead(self.mountpoint)
                log.info("serving through libfuse %d; kernel readahead %s KiB", fuse_version_major, readahead or "?")
        finally:
            if self._on_ready:
                self._on_ready()

    def destroy(self, path):
        self.tree.close()

    @_errno
    def getattr(self, path, fh=None):
        if path.rpartition("/")[2].startswith(PROBE_PREFIX):  # `desfs umount` asking whether we answer
            raise FuseOSError(errno.ENOENT)
        return self._stat(self.tree.lookup(path))

    @_errno
    def readdir(self, path, fh):
        entries = self.tree.read_folder(path)
        # lazily, and only the mode (all the kernel takes from readdir): a folder of 100 000 names
        # would otherwise cost ~40 MB of st dicts at once
        return itertools.chain((".", ".."), ((name, _mode(e), 0) for name, e in entries.items()))

    @_errno
    def open(self, path, fi):
        if fi.flags & os.O_ACCMODE != os.O_RDONLY or fi.flags & (os.O_TRUNC | os.O_CREAT):
            raise FuseOSError(errno.EROFS)
        entry = self.tree.lookup(path)
        if entry.is_dir:
            raise FuseOSError(errno.EISDIR)
        opened = self.tree.open(path, entry)
        with self._lock:
            fh = next(self._next_fh)
            self._files[fh] = opened
        fi.fh = fh
        return 0

    @_errno
    def read(self, path, size, offset, fi):
        opened = self._files.get(fi.fh)
        if opened is None:
            raise FuseOSError(errno.EBADF)
        return opened.read(offset, size)

    @_errno
    def release(self, path, fi):
        with self._lock:
            self._files.pop(fi.fh, None)
        return 0

    @_errno
    def opendir(self, path):
        if not self.tree.lookup(path).is_dir:
            raise FuseOSError(errno.ENOTDIR)
        # Fail here rather than in readdir: glibc reads ENOENT from getdents as the end of an
        # emptied folder, so a deleted job would list as empty instead of failing.
        self.tree.list_dir(path)
        return 0

    @_errno
    def readlink(self, path):
        return self.tree.readlink(path)

    @_errno
    def access(self, path, amode):
        self.tree.lookup(path)
        if amode & os.W_OK:
            raise FuseOSError(errno.EROFS)
        return 0

    # -- extended attributes: user.desfs.url, .etag; .job_name, .status, .expires of an account's job folder

    @_errno
    def listxattr(self, path):
        return [XATTR_PREFIX + key for key in self.tree.attributes(path)]

    @_errno
    def getxattr(self, path, name, position=0):
        if not name.startswith(XATTR_PREFIX):  # ls asks every file for its ACL and SELinux label: none
            raise FuseOSError(ENOATTR)
        value = self.tree.attributes(path).get(name[len(XATTR_PREFIX):])
        if value is None:
            raise FuseOSError(ENOATTR)
        return value.encode("utf-8", "surrogateescape")

    @_errno
    def setxattr(self, path, name, value, options, position=0):
        raise FuseOSError(errno.EROFS if name.startswith(XATTR_PREFIX) else errno.ENOTSUP)

    @_errno
    def removexattr(self, path, name):
        raise FuseOSError(errno.EROFS if name.startswith(XATTR_PREFIX) else errno.ENOTSUP)

    def statfs(self, path):
        return {"f_bsize": BLKSIZE, "f_frsize": BLKSIZE, "f_namemax": NAME_MAX}

    def _stat(self, entry: Entry) -> dict:
        ns = int(entry.mtime * 1e9)
        if entry.is_dir:
            mode, size = DIR_MODE, 0
        elif entry.link is not None:
            mode, size = LINK_MODE, len(entry.link.encode())
        else:
            mode, size = FILE_MODE, entry.size
        return {
            "st_mode": mode,
            "st_nlink": 1,  # unknown link count: find and du must not guess sub-folder counts
            "st_size": size,
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_mtime": ns,
            "st_ctime": ns,
            "st_atime": ns,
            "st_blksize": BLKSIZE,
            "st_blocks": (size + 511) // 512,
        }


def _mode(entry: Entry) -> int:
    return DIR_MODE if entry.is_dir else FILE_MODE if entry.link is None else LINK_MODE


# memmove under the GIL: ctypes.memmove lets the GIL go for the copy and must win it back
# after, which under load means queueing behind the readahead threads for every FUSE read.
_memmove = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)(ctypes._memmove_addr)


class _FUSE(FUSE):
    """mfusepy's FUSE, with a read that copies a memoryview (a view of a cached block) straight
    into the kernel's buffer: mfusepy's own read takes only bytes, which would mean one more
    copy of every byte read. (Always raw_fi, as `run` mounts it.)"""

    def read(self, path, buf, size, offset, fip):
        data = self.operations.read(None if path is None else path.decode(self.encoding, self.errors), size,
                                    offset, fip.contents)
        n = len(data)
        if n > size:  # never more than asked for (mfusepy asserts the same)
            raise FuseOSError(errno.EIO)
        if n:
            if isinstance(data, memoryview):
                data = (ctypes.c_char * n).from_buffer(data) if not data.readonly else data.tobytes()
            _memmove(buf, data, n)
        return n


KERNEL_READAHEAD_KB = 1024  # one FUSE read of 1 MiB (libfuse 3's largest) at a time, one block


def raise_kernel_readahead(mountpoint: str) -> int | None:
    """Let the kernel read ahead 1 MiB on this mount instead of its default 128 KiB, where allowed.

    The FUSE protocol can only lower a mount's readahead, so the kernel would
    never send reads larger than 128 KiB, whatever libfuse 3 offers. Raising it
    takes writing the mount's /sys/class/bdi entry, which only root may do; for
    anyone else the default stays (sequential reads then cost 8 FUSE requests per
    MiB instead of 1). Must run after the kernel has taken libfuse's INIT reply,
    which sets the readahead too: the stat here waits for that. Returns the
    readahead now in effect (KiB), or None when it cannot be read.
    """
    try:
        st = os.stat(mountpoint)
    except OSError:
        return None
    if fuse_version_major < 3:  # libfuse 2 sends 128 KiB reads whatever the readahead is
        return platform.kernel_readahead(st.st_dev)
    return platform.kernel_readahead(st.st_dev, KERNEL_READAHEAD_KB)

FUSE_THREADS = 128  # libfuse 3's worker threads at most (its default, 10, lets a few hung reads freeze the mount)


def run(operations: DesfsOperations, mountpoint: str, options: dict) -> None:
    """Serve the mount in this thread until it is unmounted (or Ctrl-C)."""
    logging.getLogger("fuse").setLevel(logging.INFO)  # mfusepy logs a traceback for every ENOENT at DEBUG
    if fuse_version_major >= 3:
        # Each FUSE request holds a worker thread until desfs answers it: a read waiting on a slow
        # server holds one for up to its deadline. Enough threads that such reads cannot starve
        # ls and stat of other files; only busy ones exist (libfuse 3.14 also warns on stderr at
        # every mount unless max_idle_threads is given).
        options = {"max_idle_threads": 10, "max_threads": FUSE_THREADS, **options}
    _FUSE(operations, mountpoint, raw_fi=True, foreground=True, **options)

