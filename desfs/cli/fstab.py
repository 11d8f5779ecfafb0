"""Command line: desfs as mount(8)'s helper. For an fstab type `fuse.desfs`, libfuse's mount.fuse3 runs

    /bin/sh -c "desfs SOURCE MOUNTPOINT -o OPTIONS"

(after handling `setuid=USER` itself), with a minimal PATH and HOME=/root. `helper_argv` turns that into
`desfs mount ...`: desfs's own options written the rclone way (`cache_size=1G` is `--cache-size 1G`),
mount(8)'s and systemd's options dropped, the rest left to FUSE; SOURCE `desaccess` is the whole
account. `helper_environment` finds this user's home and runtime folder from the user database, not
from the environment mount(8) left. Imports no other module of desfs.cli but common.
"""

from __future__ import annotations

import os
import pwd

from desfs.cli.common import UsageError

ACCOUNT_SOURCE = "desaccess"  # SOURCE of an fstab line (or desfs mount) for every job of the account
# what mount(8), mount.fuse3 and systemd hand over or leave behind, meaning nothing to desfs
IGNORED = {"_netdev", "nofail", "noauto", "auto", "user", "users", "nouser", "owner", "group", "defaults",
           "drop_privileges"}
IGNORED_PREFIXES = ("x-systemd.", "x-", "comment=")
NOT_FLAGS = {"foreground", "help"}  # desfs mount's options an fstab line must not give


def is_helper_call(argv: list[str], commands) -> bool:
    """`desfs SOURCE MOUNTPOINT [-o OPTIONS]`, as mount.fuse3 calls it (no command word)."""
    positional = [a for i, a in enumerate(argv) if not a.startswith("-") and (i == 0 or argv[i - 1] != "-o")]
    return bool(argv) and argv[0] not in commands and not argv[0].startswith("-") and len(positional) == 2


def helper_argv(argv: list[str], flags: dict[str, bool]) -> list[str]:
    """`desfs mount` arguments for a helper call. `flags`: desfs mount's long options (without the dashes,
    '_' for '-') → whether they take a value."""
    positional, groups = [], []
    i = 0
    while i < len(argv):
        if argv[i] == "-o" and i + 1 < len(argv):
            groups.append(argv[i + 1])
            i += 2
            continue
        if argv[i].startswith("-o") and len(argv[i]) > 2:
            groups.append(argv[i][2:])
        elif argv[i].startswith("-"):
            raise UsageError(f"as a mount helper desfs takes SOURCE MOUNTPOINT -o OPTIONS, not {argv[i]!r}")
        else:
            positional.append(argv[i])
        i += 1
    source, mountpoint = positional
    out = ["mount"]
    fuse = []
    for group in groups:
        for opt in filter(None, group.split(",")):
            key, eq, value = opt.partition("=")
            name = key.replace("-", "_")
            if (key in IGNORED and not (key == "user" and eq)) or opt.startswith(IGNORED_PREFIXES):
                continue  # (user=NAME is desfs's --user)
            if name == "foreground":
                raise UsageError("option foreground: not as a mount helper (a systemd unit runs desfs mount -f)")
            if key == "setuid":  # mount.fuse3 has made us this user already
                if value not in (pwd.getpwuid(os.getuid()).pw_name, str(os.getuid())):
                    raise UsageError(f"setuid={value}: run through mount.fuse3 (mount -t fuse.desfs) to mount "
                                     "as another user")
                continue
            if name in flags and name not in NOT_FLAGS:
                flag = "--" + name.replace("_", "-")
                if flags[name]:
                    if not eq:
                        raise UsageError(f"option {key} needs a value ({key}=...)")
                    out += [flag, value]
                else:
                    out.append(flag)
                continue
            fuse.append(opt)
    if fuse:
        out += ["-o", ",".join(fuse)]
    return out + ([mountpoint] if source == ACCOUNT_SOURCE else [source, mountpoint])


def helper_environment(environ=os.environ) -> None:
    """This user's HOME (for ~/.netrc and ~/.cache/desfs) and XDG_RUNTIME_DIR, from the user database:
    mount(8) leaves HOME=/root, and after mount.fuse3's setuid the root's runtime folder."""
    uid = os.getuid()
    environ["HOME"] = pwd.getpwuid(uid).pw_dir
    runtime = environ.get("XDG_RUNTIME_DIR")
    try:
        ours = runtime is not None and os.stat(runtime).st_uid == uid
    except OSError:
        ours = False
    if not ours:
        environ.pop("XDG_RUNTIME_DIR", None)
        if os.path.isdir(f"/run/user/{uid}") and os.stat(f"/run/user/{uid}").st_uid == uid:
            environ["XDG_RUNTIME_DIR"] = f"/run/user/{uid}"
