"""Credentials layer: finds the DESaccess user name and password, in the order users expect.

`--user`, then ~/.netrc (machine = the API host), then the environment
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
                     netrc_file: str | None = None) -> Credentials:
    host = urlsplit(api_url).hostname or ""
    from_netrc = _netrc(host, netrc_file)
    if from_netrc and (user is None or from_netrc[0] == user):
        return Credentials(from_netrc[0], from_netrc[1], "netrc")
    env_user, env_password = environ.get("DESACCESS_USER"), environ.get("DESACCESS_PASSWORD")
    if env_password and (user is None or env_user in (None, user)):
        name = user or env_user
        if name:
            return Credentials(name, env_password, "environment")
    if stdin is not None and stdin.isatty():
        name = user or env_user or input(f"DESaccess user name for {host}: ").strip()
        password = getpass.getpass(f"DESaccess password for {name}: ")
        if name and password:
            return Credentials(name, password, "prompt")
    raise NoCredentials(
        f"no DESaccess credentials: give --user and type the password, or add 'machine {host} login NAME "
        f"password ...' to ~/.netrc, or set DESACCESS_USER and DESACCESS_PASSWORD")


def _netrc(host: str, path: str | None) -> tuple[str, str] | None:
    path = path or os.path.join(os.path.expanduser("~"), ".netrc")
    if not os.path.exists(path):
        return None
    try:
        found = netrc.netrc(path).authenticators(host)
    except (netrc.NetrcParseError, OSError):
        return None
    if not found or not found[0] or not found[2]:
        return None
    return found[0], found[2]
