"""Command-line layer: `desfs` and its commands; builds objects from user input and wires the layers.

    common   usage errors, SOURCE URLs, logging, printing hostile text safely
    status   `desfs status`, and the status socket of a mount's process
    jobs     the DESaccess account: sign-in options, credentials, job ids as SOURCE; `desfs jobs`
    daemon   the process serving a mount: serve(), stop signals
    mount    `desfs mount` (SOURCE, background start, the pipe to the daemon) and `desfs umount`
    demo     `desfs demo`
    get      `desfs get` and `desfs ls`
    url      `desfs url`
    fstab    desfs as mount(8)'s helper: `desfs SOURCE MOUNTPOINT -o OPTIONS`
    completion  `desfs completion bash|zsh` (shtab)
    cache    `desfs cache status|clear|fetch`

Each imports only modules listed above it. Expected failures are one line on
stderr (a traceback only with --debug). Exit codes: 0 ok, 1 failure, 2 usage
error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from desfs import __version__
from desfs.cli.completion import FILE, FOLDER, MOUNTPOINTS, SHELLS
from desfs.cli.completion import script as completion_script
from desfs.cli.cache import cmd_cache
from desfs.cli.common import DEFAULT_LOG, UsageError, log, printable, setup_logging
from desfs.cli.demo import cmd_demo
from desfs.cli.fstab import helper_argv, helper_environment, is_helper_call
from desfs.cli.get import cmd_get, cmd_ls
from desfs.cli.jobs import add_account_options, cmd_jobs
from desfs.cli.mount import MOUNT_GROUPS, cmd_mount, cmd_umount
from desfs.cli.status import cmd_status
from desfs.cli.url import cmd_url
from desfs.credentials import NoCredentials
from desfs.errors import redact
from desfs.mounting import MountError
from desfs.settings import DOWNLOAD, LISTINGS, NETWORK, Settings, parse_size, positive_float


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="desfs",
        description="Mount DESaccess job output as a read-only filesystem, reading only the bytes you need.")
    parser.add_argument("--version", action="version", version=f"desfs {__version__}")
    parser.add_argument("--debug", action="store_true", help="log every request; tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    m = sub.add_parser("mount", help="mount every job of an account, or one job folder", description=(
        "desfs mount MOUNTPOINT mounts every job of a DESaccess account (signing in); desfs mount SOURCE "
        "MOUNTPOINT mounts one job folder: a URL whose folders answer <folder>/json, or <type>/<job_id> or a "
        "job id of the signed-in account. Goes to the background once the mount is live, unless -f."))
    m.add_argument("source", metavar="SOURCE", nargs="?",
                   help="URL of a job folder (or a folder below one), <type>/<job_id>, or a job id"
                   ).complete = FOLDER  # or the mount point of an account mount
    m.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?", help="an empty folder").complete = FOLDER
    m.add_argument("-f", "--foreground", action="store_true", help="stay attached; Ctrl-C unmounts")
    m.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
                   help="FUSE mount options, passed through (e.g. allow_other)")
    m.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="log every request (to the log file, or stderr with -f); tracebacks on errors")
    m.add_argument("--log-file", metavar="FILE",
                   help=f"where a background mount logs, private to you (default: {DEFAULT_LOG})").complete = FILE
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    m.add_argument("--handoff-fd", type=int, help=argparse.SUPPRESS)
    Settings.add_options(m, *MOUNT_GROUPS)
    m.add_argument("--no-disk-cache", dest="disk_cache", action="store_const", const="",
                   help="keep no disk cache: blocks in memory only, gone at unmount")
    add_account_options(m)

    u = sub.add_parser("umount", help="unmount a desfs mount", description=(
        "Unmount a desfs mount; also cleans up a mount whose process died."))
    u.add_argument("mountpoint", metavar="MOUNTPOINT").complete = MOUNTPOINTS

    g = sub.add_parser("get", help="download a job folder or file, resumably", description=(
        "Download the folder or file at SOURCE into DEST (default: a folder or file named after it), several "
        "files at once. Files already complete (size and time match) are skipped; an interrupted run leaves "
        "hidden .desfs-part files that the next run continues. A large file is fetched as several ranges at once "
        "(--segments), each resumed where it stopped."))
    g.add_argument("source", metavar="SOURCE", help="URL of a job folder, a folder below one, or a file")
    g.add_argument("dest", metavar="DEST", nargs="?", help="where to put it").complete = FILE
    g.add_argument("-j", "--jobs", type=int, default=4, metavar="N", help="downloads at once (default: 4)")
    g.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="only files matching GLOB (name, or path if it has '/'); repeatable, e.g. '*_r.fits'")
    g.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="skip files matching GLOB; repeatable")
    g.add_argument("-n", "--dry-run", action="store_true", help="list what would be fetched, fetch nothing")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress, only errors and the summary")
    g.add_argument("--progress-every", type=positive_float, metavar="SECONDS",
                   help="seconds between progress lines when not on a terminal (default: 10)")
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="log every request")
    Settings.add_options(g, NETWORK, LISTINGS, DOWNLOAD)
    add_account_options(g)

    ls = sub.add_parser("ls", help="list a remote folder", description="List the folder at SOURCE, as ls would.")
    ls.add_argument("source", metavar="SOURCE", help="URL of a job folder, a folder below one, or a file")
    ls.add_argument("-l", dest="long", action="store_true", help="long listing: type, size (human-readable), time")
    ls.add_argument("-R", dest="recursive", action="store_true", help="list sub-folders too")
    ls.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="log every request")
    Settings.add_options(ls, NETWORK, LISTINGS)
    add_account_options(ls)

    j = sub.add_parser("jobs", help="list the account's jobs", description=(
        "List the jobs of a DESaccess account: type, id, name, status, when it finished, when it expires."))
    j.add_argument("--json", action="store_true", help="as JSON, for scripts")
    j.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="log every request")
    Settings.add_options(j, NETWORK)
    add_account_options(j)

    st = sub.add_parser("status", help="what each of your desfs mounts is doing", description=(
        "Every live desfs mount of yours: source, mount point, process, uptime, requests and bytes fetched, "
        "cache use and hit rate, transfers in flight, the last errors; a mount whose process died or does "
        "not answer, with the command that cleans it up. Asks each mount's process over a private socket, "
        "never the mount itself."))
    st.add_argument("--json", action="store_true", help="as JSON, for scripts")

    url = sub.add_parser("url", help="print the URL of files and folders of a mount", description=(
        "Print the URL of each PATH in a desfs mount (its user.desfs.url attribute), one a line: to share a "
        "file, or to hand it to another tool. Anyone with a job's URL can read the job's files."))
    url.add_argument("paths", metavar="PATH", nargs="+", help="a file or folder in a desfs mount").complete = FILE

    c = sub.add_parser("cache", help="the disk cache: status, clear, fetch (and pin)", description=(
        "The disk cache that mounts keep across unmounts (--disk-cache, default $XDG_CACHE_HOME/desfs, else "
        "~/.cache/desfs). PATHs are paths in a desfs mount, or SOURCEs as for desfs get."))
    csub = c.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    for name, text in (("status", "size, files, jobs, pinned, and the disk hits of each mount using it"),
                       ("clear", "remove the stored blocks of PATHs (all, and the stored listings, without PATH)"),
                       ("fetch", "store whole files or trees now, with progress; --pin keeps them out of eviction")):
        a = csub.add_parser(name, help=text, description=text)
        a.add_argument("--disk-cache", metavar="DIR", help="the cache folder (default: $XDG_CACHE_HOME/desfs)")
        a.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="log every request")
        if name == "clear":
            a.add_argument("paths", metavar="PATH", nargs="*")
        if name == "fetch":
            a.add_argument("paths", metavar="PATH", nargs="+")
            a.add_argument("--pin", action="store_true", help="keep them out of eviction (pinned go last)")
            a.add_argument("-q", "--quiet", action="store_true", help="no progress")
            a.add_argument("--disk-cache-size", type=parse_size, metavar="SIZE", default=Settings.disk_cache_size,
                           help="the cache's budget (default: 5G), as the mounts' --disk-cache-size")
            Settings.add_options(a, NETWORK, LISTINGS)
            add_account_options(a)

    d = sub.add_parser("demo", help="mount a built-in sample job (no network, no account)", description=(
        "Start a local file server that answers like the DES file server, over a generated sample "
        "cutout job and query job, and mount the cutout job. Ctrl-C unmounts and stops."))
    d.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?", help="an empty folder (default: a temporary one)"
                   ).complete = FOLDER
    d.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    c = sub.add_parser("completion", help="print the shell completion script for bash or zsh", description=(
        "Print a completion script for bash or zsh, made from desfs's own parser. bash: "
        "desfs completion bash > ~/.local/share/bash-completion/completions/desfs; zsh: "
        "desfs completion zsh > ~/.zfunc/_desfs, with fpath+=(~/.zfunc) before compinit in ~/.zshrc."))
    c.add_argument("shell", choices=SHELLS)
    return parser


def cmd_completion(args: argparse.Namespace) -> int:
    sys.stdout.write(completion_script(build_parser(), args.shell).rstrip("\n") + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if is_helper_call(argv, COMMANDS):  # desfs SOURCE MOUNTPOINT -o OPTIONS: mount(8) through mount.fuse3
        try:
            argv = helper_argv(argv, _mount_flags(parser))
        except UsageError as exc:
            print(printable(redact(f"desfs: {exc}")), file=sys.stderr)
            return 2
        helper_environment()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        setup_logging(args)
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(printable(redact(f"desfs {args.command}: {exc}")), file=sys.stderr)
        return 2
    except (MountError, NoCredentials, OSError) as exc:
        if args.debug:
            log.exception("failed")
        print(printable(redact(f"desfs {args.command}: {exc}")), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("desfs: interrupted", file=sys.stderr)
        return 130


def _mount_flags(parser: argparse.ArgumentParser) -> dict[str, bool]:
    """desfs mount's long options ('_' for '-', no dashes) → whether they take a value."""
    mount = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices["mount"]
    return {o[2:].replace("-", "_"): a.nargs != 0 for o, a in mount._option_string_actions.items()
            if o.startswith("--") and a.help != argparse.SUPPRESS}


COMMANDS = {"mount": cmd_mount, "umount": cmd_umount, "demo": cmd_demo, "get": cmd_get, "ls": cmd_ls,
            "jobs": cmd_jobs, "url": cmd_url, "completion": cmd_completion,
            "status": cmd_status, "cache": cmd_cache}
