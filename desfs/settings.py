"""Settings layer: every tunable of a mount, its default and its command-line option, in one place.

`Settings` is a frozen dataclass. Each field that the user may set carries its
option (flag, parser, help) in its metadata: the CLI builds its options from it
(`add_options`), reads them back (`from_args`) and writes them for the process
that serves a background mount (`argv`); the layers take the object itself
(tree.Caches, account.AccountTree) or the part they need (`client_options`).
Adding an option means adding a field here, using it in its layer, and a line
in the README. Imports nothing of desfs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field

MiB = 1024 * 1024
UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
RETRY_AFTER_MAX = 30.0  # seconds: the longest Retry-After honoured (client.py)
MIN_RATE = 64 * 1024  # bytes/s: an answer slower than this on average is given up (client.py, ETIMEDOUT)
CLIENT_EXTRA_CONNECTIONS = 16  # kept-alive connections beyond readahead's, for the FUSE threads' own reads


def parse_size(text: str) -> int:
    """'256M', '1G', '65536', '1.5G' → bytes (binary units)."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B") or "0"
    unit = value[-1] if value[-1] in UNITS else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 512M, 2G)") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return int(number * UNITS[unit])


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


SEGMENTS_MAX = 32  # desfs get: most parallel ranges of one file (aria2c allows 16)


def segment_count(text: str) -> int:
    value = count(text)
    if not 1 <= value <= SEGMENTS_MAX:
        raise argparse.ArgumentTypeError(f"must be from 1 to {SEGMENTS_MAX}: {text!r}")
    return value


def on_off(text: str) -> bool:
    value = text.strip().lower()
    if value in ("on", "yes", "true", "1"):
        return True
    if value in ("off", "no", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"not on or off: {text!r}")


def allowance(timeout: float, nbytes: int) -> float:
    """Seconds one try of a request for `nbytes` may take in all: `timeout`, plus the bytes at MIN_RATE.
    Enforced by client.py's watchdog (the socket is shut when it runs out), so a server that keeps
    sending a byte now and then cannot hold a read forever."""
    return timeout + nbytes / MIN_RATE


def _size_text(n: int) -> str:
    for unit in ("G", "M", "K"):
        if n and n % UNITS[unit] == 0:
            return f"{n // UNITS[unit]}{unit}"
    return str(n)


def option(group: str, parse, metavar: str, help: str, shown: str | None = None, short: str | None = None) -> dict:
    """The metadata of a field the user may set: its option's group, parser, metavar and help
    ("%s" in the help is replaced by the default, or by `shown`), and a short flag if it has one."""
    return {"group": group, "parse": parse, "metavar": metavar, "help": help, "shown": shown, "short": short}


# Option groups: which commands take them (cli builds each command's options from these names).
NETWORK, LISTINGS, CACHING, ACCOUNT_MOUNT = "network", "listings", "caching", "account mount"
DOWNLOAD = "download"  # desfs get


@dataclass(frozen=True)
class Settings:
    # -- the user's (command-line options) --
    timeout: float = field(default=30.0, metadata=option(
        NETWORK, positive_float, "SECONDS",
        "longest wait for the server: to connect and for an answer's headers; a whole answer must arrive within "
        "this plus its size at 64 KiB/s, else ETIMEDOUT (default: %s)"))
    retries: int = field(default=3, metadata=option(
        NETWORK, count, "N", "further tries after a lost connection, a cut body or HTTP 5xx/429 (default: %s)"))
    ca_bundle: str | None = field(default=None, metadata=option(
        NETWORK, str, "FILE", "CA certificates to verify the server with (private CAs)"))
    listing_cache_size: int = field(default=64 * MiB, metadata=option(
        LISTINGS, parse_size, "SIZE", "memory for folder listings, about 250 bytes a name; a folder that needs more "
        "is refused (EFBIG) (default: %s)"))
    cache_size: int = field(default=256 * MiB, metadata=option(
        CACHING, parse_size, "SIZE", "memory for cached file blocks, e.g. 512M, 2G (default: %s)"))
    block_size: int = field(default=1 * MiB, metadata=option(
        CACHING, parse_size, "SIZE", "bytes fetched per range request and cached together (default: %s)"))
    listing_ttl: float = field(default=120.0, metadata=option(
        CACHING, positive_float, "SECONDS",
        "how long a folder listing is trusted before it is fetched again (default: %s)"))
    readahead: int = field(default=64 * MiB, metadata=option(
        CACHING, parse_size, "SIZE", "largest window fetched ahead of a sequential reader; 0 turns readahead off "
        "(default: %s, at most a quarter of --cache-size)"))
    connections: int = field(default=16, metadata=option(
        CACHING, count, "N", "most range requests that readahead makes at once; how many it makes follows the "
        "link (default: %s)"))
    xattrs: bool = field(default=True, metadata=option(
        CACHING, on_off, "on|off", "extended attributes user.desfs.* (URL, ETag, job): 'off' spares the round "
        "trip through desfs that 'ls -l' makes per name to ask for ACLs and labels (default: on)", shown="on"))
    disk_cache: str | None = field(default=None, metadata=option(
        CACHING, str, "DIR", "folder of the disk cache, kept across mounts (default: %s); --no-disk-cache: none",
        shown="$XDG_CACHE_HOME/desfs, else ~/.cache/desfs"))
    disk_cache_size: int = field(default=5 * 1024 * MiB, metadata=option(
        CACHING, parse_size, "SIZE", "disk for cached file blocks; 10%% of its file system is always left free "
        "(default: %s)"))
    offline: bool = field(default=False, metadata=option(
        CACHING, bool, "", "never touch the network: serve what the disk cache holds, fail the rest at once"))
    walk_ahead: int = field(default=64, metadata=option(
        CACHING, count, "N", "listings fetched at once ahead of a program walking the tree (find, du, ls -R), and "
        ".log/.tar.gz checks of an account's jobs; 0: no listing ahead (default: %s)"))
    jobs_ttl: float = field(default=60.0, metadata=option(
        ACCOUNT_MOUNT, positive_float, "SECONDS", "account mount: how often the job list is fetched again "
        "(default: %s)"))
    segments: int = field(default=16, metadata=option(
        DOWNLOAD, segment_count, "N", "connections one large file is fetched over at once, each a byte range "
        "(as aria2c -x/-s), 1 to 32; 1: one stream (default: %s)", short="-x"))
    segment_size: int = field(default=8 * MiB, metadata=option(
        DOWNLOAD, parse_size, "SIZE", "smallest range of a file fetched in segments: a file of at least twice "
        "this is split, into at most --segments ranges (default: %s)"))
    # -- internal tuning (no option) --
    block_ttl: float = 3600.0  # seconds; blocks are keyed by version, so this only bounds staleness of memory
    readahead_min: int = 1 * MiB  # first readahead window of a sequential reader

    # -- the command line ---------------------------------------------------

    @classmethod
    def options(cls, *groups: str) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.metadata and f.metadata["group"] in groups]

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser, *groups: str) -> None:
        """The options of these groups, each with its default."""
        for name in groups:
            group = parser.add_argument_group(name)
            for f in cls.options(name):
                meta = f.metadata
                if meta["parse"] is bool:  # a switch: off by default
                    group.add_argument(_flag(f.name), dest=f.name, action="store_true", help=meta["help"])
                    continue
                flags = [_flag(f.name)] + ([meta["short"]] if meta.get("short") else [])
                shown = meta["shown"] or (_size_text(f.default) if meta["parse"] is parse_size else f"{f.default:g}"
                                          if isinstance(f.default, float) else str(f.default))
                group.add_argument(*flags, dest=f.name, type=meta["parse"], default=f.default,
                                   metavar=meta["metavar"], help=meta["help"].replace("%s", shown))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """The settings given on a command line (options it does not have keep their defaults)."""
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.metadata and hasattr(args, f.name)}
        return cls(**given)

    def argv(self, *groups: str) -> list[str]:
        """These settings as options of the same command (for the process serving a background mount)."""
        out: list[str] = []
        for f in self.options(*groups):
            value, parse = getattr(self, f.name), f.metadata["parse"]
            if parse is bool:  # a switch
                out += [_flag(f.name)] if value else []
            elif parse is on_off:
                out += [_flag(f.name), "on" if value else "off"]
            elif value is not None:
                out += [_flag(f.name), repr(value) if isinstance(value, float) else str(value)]
        return out

    # -- what the layers derive from them -------------------------------------

    def client_options(self) -> dict:
        """Keyword arguments of client.Client for a mount."""
        return {"timeout": self.timeout, "retries": self.retries, "ca_bundle": self.ca_bundle,
                "connections": self.connections + CLIENT_EXTRA_CONNECTIONS + self.walk_ahead, "offline": self.offline}

    @property
    def readahead_window(self) -> int:
        """The largest readahead window: a window larger than a quarter of the cache would evict its own
        blocks before they are read."""
        return min(self.readahead, self.cache_size // 4)

    def patience(self, nbytes: int) -> float:
        """Seconds a whole operation on `nbytes` may take, every try and pause between tries included: how
        long a thread waiting for another one's load of the same bytes waits at most."""
        return (self.retries + 1) * allowance(self.timeout, nbytes) + self.retries * RETRY_AFTER_MAX + 1.0


def default_disk_cache() -> str:
    """Where a mount keeps its disk cache unless told: $XDG_CACHE_HOME/desfs, else ~/.cache/desfs."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "desfs")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


DEFAULTS = Settings()
