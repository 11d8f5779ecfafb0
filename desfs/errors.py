"""Errors shared by every layer; imports nothing of desfs.

Each error is an OSError with a real errno, so the FUSE adapter can pass it on
unchanged and a CLI can print it as one line:

    DesfsError(OSError)                        EIO      any other failure
    ├── NotFound(DesfsError, FileNotFoundError)  ENOENT   404, 410, a name not in a listing
    ├── AccessDenied(DesfsError, PermissionError) EACCES  401, 403
    ├── Timeout(DesfsError, TimeoutError)      ETIMEDOUT  no answer within --timeout
    ├── Stale(DesfsError)                      ESTALE   the file changed on the server while open
    ├── ServerError(DesfsError)                EIO      5xx/429 after retries, connection failures
    ├── BadListing(DesfsError)                 EIO      a `/json` listing that is not a listing
    └── TooLarge(DesfsError)                   EFBIG    a listing larger than the memory allowed for it

str() of an error never shows the user name and password of a URL (`redact`).
"""

from __future__ import annotations

import errno
import re

# scheme://userinfo@: everything from "://" to the last '@' of the line, whatever the password holds
# ('/', '#', '?', spaces); a line with an '@' further on loses more than it must, never less
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\n]*@")


def redact(text: str) -> str:
    """`text` with the user name and password of every URL in it hidden: http://user:pw@host → http://***@host."""
    return _USERINFO.sub(r"\1***@", text)


class DesfsError(OSError):
    """Root of every desfs error; errno EIO unless a subclass says otherwise."""

    default_errno = errno.EIO

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(self.default_errno, message)
        self.url = url

    def __str__(self) -> str:
        return redact(self.strerror if not self.url else f"{self.strerror}: {self.url}")


class NotFound(DesfsError, FileNotFoundError):
    default_errno = errno.ENOENT


class AccessDenied(DesfsError, PermissionError):
    default_errno = errno.EACCES


class Timeout(DesfsError, TimeoutError):
    default_errno = errno.ETIMEDOUT


class Stale(DesfsError):
    default_errno = errno.ESTALE


class ServerError(DesfsError):
    default_errno = errno.EIO


class BadListing(DesfsError):
    default_errno = errno.EIO


class TooLarge(DesfsError):
    default_errno = errno.EFBIG


class Unreachable(ServerError):
    """The server cannot be reached (no connection), or the mount is --offline: nothing was asked."""
