"""Command line: `desfs completion bash|zsh`, shell completion generated from desfs's own parser by shtab.

The parser's arguments carry shtab's `.complete` markers (plain dicts, set in build_parser): files,
folders, and for `desfs umount` the desfs mount points of the moment (read from mount(8) by the
shell function below, which works with util-linux's and macOS's mount alike). shtab is imported
only here, when a script is asked for.
"""

from __future__ import annotations

FILE = {"bash": "_shtab_compgen_files", "zsh": "_files"}
FOLDER = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/"}

# mount(8) prints "desfs on MOUNTPOINT type fuse.desfs (...)" (util-linux) or "desfs on MOUNTPOINT (macfuse, ...)"
# (run in /: util-linux shows a source that names a file in the current folder as that file's path)
_LIST_MOUNTS = r"""(cd / && mount 2>/dev/null) | sed -n -e '/^desfs on /!d' -e 's/^desfs on //' \
    -e 's/ type fuse\.desfs (.*$//p' -e 's/ ([^()]*)$//p'"""
MOUNTPOINTS = {
    "bash": "_desfs_mounted_dirs",  # "_dir" in its name: shtab has bash quote the paths as file names
    "zsh": "_desfs_mounted_dirs",
    "preamble": {
        "bash": "# the desfs mount points of the moment (desfs umount)\n"
                "_desfs_mounted_dirs() {\n"
                "  local IFS=$'\\n'\n"
                f"  compgen -W \"$({_LIST_MOUNTS})\" -- \"$1\"\n"
                "}\n",
        "zsh": "# the desfs mount points of the moment (desfs umount)\n"
               "_desfs_mounted_dirs() {\n"
               "  local -a points\n"
               f"  points=(${{(f)\"$({_LIST_MOUNTS})\"}})\n"
               "  _describe -t mountpoints 'desfs mount point' points\n"
               "}\n",
    },
}

SHELLS = ("bash", "zsh")


def script(parser, shell: str) -> str:
    """The completion script of `parser` for `shell` (shtab's, from the parser itself)."""
    import shtab

    return shtab.complete(parser, shell=shell)
