"""`desfs completion bash|zsh`: scripts generated from desfs's parser (shtab), run in a real bash (and
zsh when installed): commands, options, choices, and the desfs mount points of the moment for umount."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import DESFS, run_desfs

BASH_DRIVER = r"""
source <("$@" completion bash)
comp() { COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}; COMPREPLY=()
         _shtab_desfs; printf '%s\n' "${COMPREPLY[@]}"; }
"""


def bash_complete(*words: str) -> list[str]:
    """What bash offers for the last of `words` (the completion function called as bash calls it)."""
    script = BASH_DRIVER + "comp " + " ".join(f"'{w}'" for w in words) + "\n"
    out = subprocess.run(["bash", "-c", script, "bash", *DESFS], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if line]


def test_bash_completes_commands_options_and_choices():
    assert bash_complete("desfs", "") == ["mount", "umount", "get", "ls", "jobs", "status", "url", "cache",
                                           "demo", "completion"]
    assert bash_complete("desfs", "um") == ["umount"]
    assert bash_complete("desfs", "mount", "--cache-") == ["--cache-size"]
    assert "--include" in bash_complete("desfs", "get", "--")
    assert bash_complete("desfs", "mount", "--site", "") == ["collab", "public"]
    assert bash_complete("desfs", "completion", "") == ["bash", "zsh"]
    assert not [w for w in bash_complete("desfs", "mount", "--") if "fd" in w]  # the hidden options stay hidden


@pytest.mark.mount
@pytest.mark.nginx
def test_umount_completes_the_live_desfs_mount_points(mount, sample, nginx):
    m = mount(sample.url(nginx.base_url), name="mnt with space")
    assert str(m.path) in bash_complete("desfs", "umount", "")
    assert bash_complete("desfs", "umount", str(m.path)[:-3]) == [str(m.path)]
    if shutil.which("zsh"):
        zsh = ('source <("$@" completion zsh | sed -n "/^# Custom Preamble/,/^# End Custom Preamble/p")\n'
               '_describe() { print -rl -- "${(@P)4}" }\n_desfs_mounted_dirs\n')
        out = subprocess.run(["zsh", "-fc", zsh, "zsh", *DESFS], capture_output=True, text=True, timeout=60)
        assert str(m.path) in out.stdout.splitlines(), out.stderr


def test_zsh_script_is_a_compdef_of_every_command():
    result = run_desfs("completion", "zsh")
    assert result.returncode == 0
    text = result.stdout
    assert text.startswith("#compdef desfs")
    for word in ("mount", "umount", "--cache-size", "--listing-ttl", "_desfs_mounted_dirs", "(bash zsh)"):
        assert word in text
    assert "--ready-fd" not in text and "--handoff-fd" not in text
    if shutil.which("zsh"):
        check = subprocess.run(["zsh", "-n"], input=text, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
