"""Platform layer: every call that only Linux has, each with a fallback, so the rest of desfs imports and
runs anywhere (macOS with macFUSE, where mfusepy uses the FUSE 2 API).

    mount_table()          /proc/self/mountinfo; elsewhere the output of mount(8)
    unmount_argv()         fusermount3 -u [-z]; elsewhere umount [-f]
    kernel_readahead()     /sys/class/bdi/<dev>/read_ahead_kb; elsewhere nothing to read or raise
    forbid_core_dumps()    prctl(PR_SET_DUMPABLE, 0); elsewhere a no-op
    limit_malloc_arenas()  glibc's mallopt(M_ARENA_MAX); elsewhere a no-op

`LINUX` chooses; the unit tests set it False to run the fallbacks on Linux.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys

LINUX = sys.platform.startswith("linux")


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \ooo
    return field.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "surrogateescape")


def mount_table() -> list[tuple[str, str, str]]:
    """(mount point, type, source) of every mount, the last mounted last."""
    if LINUX:
        found = []
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, tail = left.split(), right.split()
                if len(fields) >= 5 and len(tail) >= 2:
                    found.append((_unescape(fields[4]), tail[0], _unescape(tail[1])))
        return found
    return _mount_command_table()


# mount(8) on macOS and the BSDs: "SOURCE on MOUNTPOINT (TYPE, opt, opt)"; util-linux: "SOURCE on MP type TYPE (opts)"
_MOUNT_LINE = re.compile(r"^(?P<source>.*?) on (?P<point>.*?) (?:\((?P<bsd>[^,)]+)[,)]|type (?P<linux>\S+) \()")


def _mount_command_table() -> list[tuple[str, str, str]]:
    tool = shutil.which("mount") or "/sbin/mount"
    try:
        # in /: util-linux shows a source that names a file in its folder as that file's path
        out = subprocess.run([tool], capture_output=True, text=True, timeout=10, errors="surrogateescape",
                             cwd="/").stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.splitlines():
        m = _MOUNT_LINE.match(line)
        if m:
            fstype = m["bsd"] or m["linux"]
            if fstype in ("macfuse", "osxfuse", "fusefs") or fstype.startswith("fusefs."):
                fstype = "fuse.desfs" if m["source"] == "desfs" else fstype  # macFUSE shows its own type
            found.append((m["point"], fstype, m["source"]))
    return found


def unmount_argv(mountpoint: str, lazy: bool = False) -> list[str]:
    """The command that unmounts a FUSE mount of this user: fusermount3 (Linux), umount elsewhere."""
    if LINUX:
        tool = shutil.which("fusermount3") or shutil.which("fusermount")
        if tool is None:
            raise FileNotFoundError("fusermount3 not found: install the 'fuse3' package")
        return [tool, "-uz" if lazy else "-u", mountpoint]
    tool = shutil.which("umount") or "/sbin/umount"
    return [tool, "-f", mountpoint] if lazy else [tool, mountpoint]


def kernel_readahead(device: int, want_kb: int | None = None) -> int | None:
    """The kernel readahead (KiB) of the mount on `device`, raised to `want_kb` first where allowed
    (root on Linux); None where there is none to read (not Linux, no sysfs)."""
    if not LINUX:
        return None
    entry = f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb"
    try:
        with open(entry) as f:
            now = int(f.read())
    except (OSError, ValueError):
        return None
    if want_kb is None or now >= want_kb:
        return now
    try:
        with open(entry, "w") as f:
            f.write(str(want_kb))
    except OSError:  # not root
        return now
    return want_kb


PR_SET_DUMPABLE = 4  # linux/prctl.h


def forbid_core_dumps() -> bool:
    """Make this process non-dumpable (Linux; a no-op elsewhere): no core file of it, no ptrace or
    /proc/<pid>/mem, environ or maps for its user, only for root: the password and tokens a mount
    holds stay in its memory. True when it took effect."""
    if not LINUX:
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


M_ARENA_MAX = -8  # glibc's malloc.h
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> bool:
    """Let glibc's malloc keep at most MALLOC_ARENAS arenas (its default: 8 per CPU). A mount runs up to
    128 FUSE threads; each thread that allocates (a block's bookkeeping, a parsed listing) would
    otherwise get an arena of its own, and memory freed in one is kept there: measured on the
    concurrent-faults test, peak RSS 76-83 MiB with the default, 63 MiB with 2. Call before
    threads start. True when it took effect (glibc only)."""
    if not LINUX:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(M_ARENA_MAX, MALLOC_ARENAS) == 1


def malloc_trim() -> None:
    """Hand the memory malloc holds free back to the system (glibc; a no-op elsewhere)."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None) if LINUX else None
    if trim is not None:
        trim(0)


def get_xattr(path: str, name: str) -> bytes:
    """An extended attribute of `path` (following symlinks): os.getxattr on Linux; elsewhere libc's
    getxattr, which on macOS takes a position and options too. OSError when it has none."""
    if LINUX:
        return os.getxattr(path, name)
    libc = ctypes.CDLL(None, use_errno=True)
    args = (os.fsencode(path), name.encode())
    extra = (ctypes.c_uint32(0), ctypes.c_int(0)) if sys.platform == "darwin" else ()
    size = libc.getxattr(*args, None, ctypes.c_size_t(0), *extra)
    if size >= 0:
        buf = ctypes.create_string_buffer(size)
        size = libc.getxattr(*args, buf, ctypes.c_size_t(size), *extra)
    if size < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return buf.raw[:size]


def memory_rss() -> int | None:
    """This process's resident memory in bytes (Linux: /proc/self/statm); None elsewhere."""
    if not LINUX:
        return None
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
