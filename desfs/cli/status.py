"""Command line: `desfs status`, and the status socket every mount's process answers it on.

Each process serving a mount listens on a Unix socket of its own, `<pid>.sock` in `$XDG_RUNTIME_DIR/desfs`
(or `~/.cache/desfs/run`), a folder only its user may enter (0700), the socket itself 0600, beside
`<pid>.json`, which says what it serves (so that a mount whose process died can still be named).
`desfs status` asks each socket, never the mount itself, and gives each at most STATUS_SECONDS: a
hung mount cannot hang it. Imports no other module of desfs.cli but common.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import socket
import threading
import time

from desfs import platform
from desfs.cli.common import _RedactingFormatter, printable
from desfs.mounting import find_mount
from desfs.stats import COUNTERS

log = logging.getLogger("desfs")

STATUS_SECONDS = 2.0  # how long `desfs status` waits for a mount's process to answer
LAST_ERRORS = 10


def state_folder(create: bool = False) -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        folder = os.path.join(runtime, "desfs")
    else:
        folder = os.path.join(os.path.expanduser("~"), ".cache", "desfs", "run")
    if create:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)
    return folder


class _LastErrors(logging.Handler):
    """The last warnings and errors of the process, as the log shows them (redacted)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: collections.deque[str] = collections.deque(maxlen=LAST_ERRORS)
        self.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record).splitlines()[0])
        except Exception:  # noqa: BLE001 - a log line must never break the mount
            pass


class StatusServer:
    """The status socket of the process serving `mountpoint`."""

    def __init__(self, mountpoint: str, source: str, tree) -> None:
        self.mountpoint, self.source, self.tree = mountpoint, source, tree
        self.started = time.time()
        self.errors = _LastErrors()
        self._sock: socket.socket | None = None
        folder = state_folder(create=True)
        self.path = os.path.join(folder, f"{os.getpid()}.sock")
        self.meta = os.path.join(folder, f"{os.getpid()}.json")

    def start(self) -> None:
        logging.getLogger().addHandler(self.errors)
        for stale in (self.path, self.meta):  # a pid used before by a process that died
            if os.path.lexists(stale):
                os.unlink(stale)
        meta = {"pid": os.getpid(), "mountpoint": self.mountpoint, "source": self.source, "started": self.started}
        fd = os.open(self.meta, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket file is 0600 from its birth
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        sock.listen(8)
        self._sock = sock
        threading.Thread(target=self._serve, name="desfs-status", daemon=True).start()

    def _serve(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # closed
            try:
                with conn:
                    conn.settimeout(STATUS_SECONDS)
                    conn.sendall(json.dumps(self.snapshot()).encode())
            except OSError:
                pass  # the asker gave up waiting (a stopped process answers late)
            except Exception as exc:  # noqa: BLE001 - one failed answer must not end the server
                log.warning("status answer failed: %r", exc)

    def snapshot(self) -> dict:
        counters = COUNTERS.snapshot()
        caches = getattr(self.tree, "caches", None)
        hits, misses = counters.pop("block_hits"), counters.pop("block_misses")
        memory = {"rss": platform.memory_rss()}
        if caches is not None:
            memory["block_cache"] = {"used": caches.blocks.memory_bytes,
                                     "max": caches.settings.cache_size}
            memory["listings"] = {"used": caches.listings.current_size, "max": caches.listings.max_size}
        memory["block_cache_hits"], memory["block_cache_misses"] = hits, misses
        memory["block_cache_hit_rate"] = round(hits / (hits + misses), 3) if hits + misses else None
        disk = getattr(caches, "disk", None)
        disk_cache = None if disk is None else {
            "folder": disk.folder, "used": disk.current_size, "max": disk.max_size, "hits": disk.hits,
            "misses": disk.misses,
            "hit_rate": round(disk.hits / (disk.hits + disk.misses), 3) if disk.hits + disk.misses else None}
        return {"state": "live", "pid": os.getpid(), "mountpoint": self.mountpoint, "source": self.source,
                "started": self.started, "uptime": round(time.time() - self.started, 1), **counters,
                "memory": memory, "disk_cache": disk_cache, "errors": list(self.errors.lines)}

    def close(self) -> None:
        sock, self._sock = self._sock, None
        logging.getLogger().removeHandler(self.errors)
        if sock is not None:
            sock.close()
        for path in (self.path, self.meta):
            try:
                os.unlink(path)
            except OSError:
                pass


# -- desfs status -------------------------------------------------------------

def ask(path: str, timeout: float = STATUS_SECONDS) -> dict:
    """A mount's status from its socket; OSError (ConnectionRefused, FileNotFound: no process there;
    TimeoutError: it did not answer in time)."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        data = b""
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _state_folders() -> list[str]:
    """Where mounts of this user may have put their sockets: a mount started by mount(8) or systemd may
    have seen another XDG_RUNTIME_DIR than this shell (or none)."""
    folders = [state_folder(), f"/run/user/{os.getuid()}/desfs",
               os.path.join(os.path.expanduser("~"), ".cache", "desfs", "run")]
    return [f for i, f in enumerate(folders) if f not in folders[:i] and os.path.isdir(f)]


def mounts_status() -> list[dict]:
    """The status of every desfs mount of this user (those whose process has a status file)."""
    metas = []
    for folder in _state_folders():
        try:
            metas += [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.endswith(".json")]
        except OSError:
            continue
    found = []
    for meta_path in metas:
        sock_path = meta_path[: -len(".json")] + ".sock"
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            pid, mountpoint = int(meta["pid"]), str(meta["mountpoint"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        try:
            found.append(ask(sock_path))
            continue
        except TimeoutError:
            state = "hung"
        except (OSError, ValueError):
            state = "hung" if _alive(pid) else "dead"
        mounted = find_mount(mountpoint)
        if state == "dead" and (mounted is None or mounted.fstype != "fuse.desfs"):
            for stale in (meta_path, sock_path):  # gone, and unmounted already: nothing to show
                try:
                    os.unlink(stale)
                except OSError:
                    pass
            continue
        found.append({"state": state, "pid": pid, "mountpoint": mountpoint, "source": meta.get("source"),
                      "started": meta.get("started"), "clean_up": f"desfs umount {mountpoint}"})
    return found


def _size(n) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return (f"{d}d{h:02d}h" if d else f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s")


def cmd_status(args: argparse.Namespace) -> int:
    found = mounts_status()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    if not found:
        print("no desfs mounts")
        return 0
    for st in found:
        where, source = printable(st["mountpoint"]), printable(str(st.get("source") or "?"))
        if st["state"] == "dead":
            print(f"{where}: DEAD (process {st['pid']} is gone; {source})\n"
                  f"  clean it up with: desfs umount {where}")
            continue
        if st["state"] == "hung":
            print(f"{where}: NOT ANSWERING within {STATUS_SECONDS:g} s (process {st['pid']} stopped or stuck; "
                  f"{source})\n  unmount it with: desfs umount {where}")
            continue
        mem = st["memory"]
        rate = mem.get("block_cache_hit_rate")
        lines = [f"{where}: live, {source}",
                 f"  process {st['pid']}, up {_duration(st['uptime'])}",
                 f"  requests {st['requests']} ({st['in_flight']} in flight), fetched {_size(st['bytes_fetched'])}",
                 f"  memory {_size(mem.get('rss'))}: block cache {_size(mem.get('block_cache', {}).get('used'))} "
                 f"of {_size(mem.get('block_cache', {}).get('max'))}, hit rate "
                 f"{'-' if rate is None else f'{rate:.0%}'} ({mem['block_cache_hits']} hits, "
                 f"{mem['block_cache_misses']} misses); listings {_size(mem.get('listings', {}).get('used'))} "
                 f"of {_size(mem.get('listings', {}).get('max'))}"]
        disk = st.get("disk_cache")
        if disk:
            rate = disk.get("hit_rate")
            lines.append(f"  disk cache {_size(disk['used'])} of {_size(disk['max'])} in {disk['folder']}, hit rate "
                         f"{'-' if rate is None else f'{rate:.0%}'} ({disk['hits']} hits, {disk['misses']} misses)")
        else:
            lines.append("  disk cache: none")
        if st["errors"]:
            lines.append("  last errors:")
            lines += [f"    {printable(line)}" for line in st["errors"]]
        print("\n".join(lines))
    return 0
