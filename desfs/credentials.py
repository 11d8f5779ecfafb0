"""Credentials layer: finds the DESaccess user name and password, in the order users expect.

`--user`, then ~/.netrc (machine = the API host; refused with one line saying
`chmod 600` when group or others may access it), then the environment
(DESACCESS_USER, DESACCESS_PASSWORD), then a prompt when a terminal is
attached. Knows no HTTP and no FUSE; the password is returned, never logged.
"""

from __future__ import annotations

import getpass
import netrc
import os
import sys
from dataclasses import dataclass, field
from urllib.parse import urlsplit


class NoCredentials(Exception):
    """No password could be found; str() says where desfs looked."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    source: str  # where they came from: "netrc", "environment", "prompt", or "parent" (a background mount's pipe)


def find_credentials(api_url: str, user: str | None = None, environ=os.environ, stdin=sys.stdin,
                     netrc_file: str | None = None, warn=None) -> Credentials:
    """`warn(line)` (default: a line on stderr) is told when a ~/.netrc that would have served was
    refused and another source is used instead; with no other source, that reason is the error."""
    host = urlsplit(api_url).hostname or ""
    from_netrc = _netrc(host, netrc_file)
    refused = None
    if from_netrc and (user is None or from_netrc[0] == user):
        refused = _too_open(netrc_file)
        if refused is None:
            return Credentials(from_netrc[0], from_netrc[1], "netrc")
    tell = (lambda: (warn or _warn)(refused)) if refused else (lambda: None)
    env_user, env_password = environ.get("DESACCESS_USER"), environ.get("DESACCESS_PASSWORD")
    if env_password and (user is None or env_user in (None, user)):
        name = user or env_user
        if name:
            tell()
            return Credentials(name, env_password, "environment")
    if stdin is not None and stdin.isatty():
        tell()
        name = user or env_user or input(f"DESaccess user name for {host}: ").strip()
        password = getpass.getpass(f"DESaccess password for {name}: ")
        if name and password:
            return Credentials(name, password, "prompt")
    if refused:
        raise NoCredentials(f"no DESaccess credentials: {refused}")
    raise NoCredentials(
        f"no DESaccess credentials: give --user and type the password, or add 'machine {host} login NAME "
        f"password ...' to ~/.netrc, or set DESACCESS_USER and DESACCESS_PASSWORD")


def _netrc_path(path: str | None) -> str:
    return path or os.path.join(os.path.expanduser("~"), ".netrc")


def _too_open(path: str | None) -> str | None:
    """Why a netrc that holds a password must not be used (group or others may access it, as Python's
    netrc module and ssh refuse too), or None."""
    path = _netrc_path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & 0o077 == 0:
        return None
    home = os.path.expanduser("~")
    shown = "~" + path[len(home):] if path.startswith(home + os.sep) else path
    return (f"{shown} holds a password but is open to other users (mode {mode & 0o777:o}), so it was not "
            f"used: chmod 600 {shown}")


def _warn(line: str) -> None:
    print(f"desfs: {line}", file=sys.stderr)


def _netrc(host: str, path: str | None) -> tuple[str, str] | None:
    path = _netrc_path(path)
    if not os.path.exists(path):
        return None
    try:
        found = netrc.netrc(path).authenticators(host)
    except (netrc.NetrcParseError, OSError):
        return None
    if not found or not found[0] or not found[2]:
        return None
    return found[0], found[2]
