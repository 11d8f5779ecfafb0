"""Command line: `desfs url PATH...`, the URL of files and folders of a mount (its `user.desfs.url`).

Asks the mount itself (an extended attribute, answered from its caches without a request);
imports no other module of desfs.cli but common.
"""

from __future__ import annotations

import argparse
import errno
import sys

from desfs.cli.common import printable
from desfs.platform import get_xattr

URL_ATTRIBUTE = "user.desfs.url"  # fuse_ops.XATTR_PREFIX + "url"
NO_ATTRIBUTE = {errno.ENODATA, getattr(errno, "ENOATTR", errno.ENODATA), errno.ENOTSUP, errno.EOPNOTSUPP}


def cmd_url(args: argparse.Namespace) -> int:
    """Print one URL a line, in the order given; a PATH without one is said on stderr (exit 1)."""
    failed = 0
    for path in args.paths:
        try:
            url = get_xattr(path, URL_ATTRIBUTE).decode("utf-8", "replace")
        except OSError as exc:
            failed += 1
            why = ("no URL: not in a desfs mount, or a folder desfs makes up (by-name)"
                   if exc.errno in NO_ATTRIBUTE else exc.strerror)
            print(f"desfs url: {printable(path)}: {why}", file=sys.stderr)
            continue
        print(printable(url), flush=True)
    return 1 if failed else 0
