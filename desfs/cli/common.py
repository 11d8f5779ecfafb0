"""Command line, common to every command: usage errors, SOURCE URLs, logging and its file, and how
text from the server is printed (never raw: names and messages are hostile).

Imports no other module of desfs.cli.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import stat
import sys
from itertools import groupby
from urllib.parse import urlsplit

from desfs.errors import redact
from desfs.mounting import MountError

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


def setup_logging(args: argparse.Namespace) -> None:
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


# Names from the server are hostile: printed, they could move the cursor, retitle or clear the
# terminal, or reorder what is shown (bidi overrides). On a terminal, names are quoted as GNU ls
# quotes them (shell-escape style, ready to paste into a shell); anywhere, a name holding a character
# that is not printable (C0, DEL, C1, bidi and other format characters, line separators) is shown
# escaped, $'\033' for ESC, so no such character ever leaves desfs raw.
_SHELL_SPECIAL = set(" !\"$&'()*;<=>?[\\^`|")

_C_ESCAPES = {"\a": "a", "\b": "b", "\t": "t", "\n": "n", "\v": "v", "\f": "f", "\r": "r"}

def shown(name: str, terminal: bool) -> str:
    """`name` for printing: quoted as `ls` does on a terminal, raw otherwise unless it holds an
    unprintable character, which is always escaped ('a'$'\\n''b')."""
    if name.isprintable():
        if not terminal or not (any(c in _SHELL_SPECIAL for c in name) or name[:1] in ("#", "~")
                                or name in ("{", "}")):
            return name
        if "'" in name and not any(c in '"$`\\!' for c in name):
            return f'"{name}"'
    parts = []
    for printable, run in groupby(name, str.isprintable):
        text = "".join(run)
        parts.append("'" + text.replace("'", "'\\''") + "'" if printable
                     else "$'" + "".join(_escape(c) for c in text) + "'")
    if parts[0].startswith("$"):
        parts.insert(0, "''")
    return "".join(parts)

def _escape(c: str) -> str:
    if c in _C_ESCAPES:
        return "\\" + _C_ESCAPES[c]
    return "".join(f"\\{b:03o}" for b in c.encode("utf-8", "surrogateescape"))
