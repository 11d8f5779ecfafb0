"""desfs under mount(8): `mount -t fuse.desfs`, an fstab line (a temporary fstab, `mount -T`), `setuid=`,
through libfuse's real mount.fuse3. mount(8) runs helpers with a minimal PATH, so each test runs in a
mount namespace of its own where a folder holding `desfs` is bound over /usr/local/bin (and a home
holding a .netrc over the user's home): nothing outside the test is changed."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from desfs.cli.common import UsageError
from desfs.cli.fstab import helper_argv
from desfs.mounting import find_mount, lazy_unmount
from conftest import wait_for

pytestmark = [pytest.mark.mount, pytest.mark.nginx]
needs_root_tools = pytest.mark.skipif(
    os.getuid() != 0 or not shutil.which("unshare") or not shutil.which("mount.fuse3"),
    reason="needs root, unshare and mount.fuse3 (fuse3)")

USER, PASSWORD = "astrobuff", "s3cret-Pa55word"


def in_namespace(script: str, homes: dict[str, str], fstab: str | None = None,
                 timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `script` (sh) in a private mount namespace where `desfs` is on mount(8)'s PATH and each home
    of `homes` (a user's home → a folder of the test's) is bound over the real one. root's home is
    always replaced (by an empty one unless given), with this Python reachable in it for every user
    (pyenv keeps it in /root); `fstab` is bound over /etc/fstab. Whatever the script mounted is
    unmounted by its own trap."""
    bin_dir = public_dir()
    Path(bin_dir, "desfs").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m desfs \"$@\"\n")
    os.chmod(Path(bin_dir, "desfs"), 0o755)
    homes = dict(homes)
    made_root_home = "/root" not in homes
    if made_root_home:
        homes["/root"] = str(public_dir())
    root_home = Path(homes["/root"])
    prelude = f"set -e\nmount --bind {bin_dir} /usr/local/bin\n"
    python = os.path.realpath(sys.executable)
    if python.startswith("/root/"):
        top = python.split("/")[2]  # e.g. .pyenv
        (root_home / top).mkdir(exist_ok=True)
        prelude += f"mount --bind /root/{top} {root_home / top}\n"
    for target, source in homes.items():
        prelude += f"mount --rbind {shlex.quote(source)} {shlex.quote(target)}\n"
    if fstab:
        prelude += f"mount --bind {shlex.quote(fstab)} /etc/fstab\n"
    if os.stat("/dev/fuse").st_mode & 0o006 != 0o006:  # as distributions ship it: every user may mount
        prelude += f"mknod -m 666 {bin_dir}/fuse c 10 229\nmount --bind {bin_dir}/fuse /dev/fuse\n"
    # Other users run this checkout's Python and desfs: the folders above it must let them through
    # (a checkout in a 0700 folder, as `mktemp -d` makes, would not); opened for the run, closed after.
    closed = [d for d in Path(sys.prefix).resolve().parents if d != Path("/") and not d.stat().st_mode & 0o001]
    for d in closed:
        d.chmod(d.stat().st_mode | 0o001)
    try:
        return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", prelude + script],
                              capture_output=True, text=True, timeout=timeout)
    finally:
        for d in closed:
            d.chmod(d.stat().st_mode & ~0o001)
        shutil.rmtree(bin_dir, ignore_errors=True)
        if made_root_home:
            shutil.rmtree(root_home, ignore_errors=True)  # (the mounts inside are gone with the namespace)


def public_dir(owner: str = "root") -> Path:
    """A folder other users can reach (pytest's tmp_path is root's alone), owned by `owner`."""
    path = Path(tempfile.mkdtemp(prefix="desfs-fstab-"))
    os.chmod(path, 0o755)
    pw = pwd.getpwnam(owner)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


UNMOUNT_AT_EXIT = 'trap \'desfs umount "$MP" >/dev/null 2>&1 || true\' EXIT\n'


def report(mp: str) -> str:
    """Lines the test reads: the mount's options and source, its serving process's owner and command line."""
    return (f'echo "OPTIONS $(findmnt -no FSTYPE,OPTIONS,SOURCE {mp})"\n'
            f'pid=$(sed -n "s/.*(pid \\([0-9]*\\)).*/\\1/p" "$LOG" | tail -1)\n'
            'echo "OWNER $(stat -c %U /proc/$pid)"\n'
            'echo "CMDLINE $(tr "\\0" " " < /proc/$pid/cmdline)"\n')


@needs_root_tools
def test_mount_t_fuse_desfs_with_options_the_rclone_way(sample, nginx):
    folder = public_dir()
    try:
        mp, log = folder / "mnt", folder / "mount.log"
        mp.mkdir()
        url = sample.url(nginx.base_url)
        script = (f"MP={mp}; LOG={log}\n" + UNMOUNT_AT_EXIT +
                  f'mount -t fuse.desfs {shlex.quote(url)} "$MP" '
                  f'-o cache_size=16M,listing_ttl=5,_netdev,nofail,x-systemd.automount,log_file={log}\n'
                  'echo "LISTED $(ls "$MP" | tr "\\n" " ")"\n' + report(str(mp)) +
                  'desfs umount "$MP"; echo UNMOUNTED\n')
        out = in_namespace(script, {})
        assert "UNMOUNTED" in out.stdout, out.stdout + out.stderr + (log.read_text() if log.exists() else "")
        lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
        assert "summary.json" in lines["LISTED"]
        fstype, options, source = lines["OPTIONS"].split()
        assert fstype == "fuse.desfs" and source == "desfs"
        assert {"ro", "nosuid", "nodev"} <= set(options.split(","))
        assert "--cache-size 16777216 " in lines["CMDLINE"] and "--listing-ttl 5.0 " in lines["CMDLINE"]
        assert url not in lines["CMDLINE"]
        text = log.read_text()
        assert text.count("options rw,dev,suid accepted and ignored") == 1, text
        assert "Traceback" not in text
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def api(one_job_api):
    return one_job_api


def fstab_test(sample, nginx, api, user: str, how: str, line: str | None = None) -> dict[str, str]:
    """An fstab line for the whole account (SOURCE desaccess), the password from the ~/.netrc of `user` (a
    home of the test's, bound over the user's). `how`: "root" (root runs `mount -T FSTAB MOUNTPOINT`),
    "setuid" (the same with `setuid=USER` in the line) or "user" (the line says `user`, the fstab is
    bound over /etc/fstab, and the user runs `mount MOUNTPOINT`). `line`: the fstab line, with MOUNTPOINT
    for the mount point's path (the account's, by default)."""
    pw = pwd.getpwnam(user)
    folder, home = public_dir(user), public_dir(user)
    try:
        mp, fstab = folder / "des", folder / "fstab"
        mp.mkdir()
        os.chown(mp, pw.pw_uid, pw.pw_gid)
        netrc = home / ".netrc"
        netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
        os.chmod(netrc, 0o600)
        os.chown(netrc, pw.pw_uid, pw.pw_gid)
        extra = {"root": "", "setuid": f"setuid={user},", "user": "user,"}[how]
        line = line or (f"desaccess MOUNTPOINT fuse.desfs noauto,_netdev,nofail,{extra}"
                        "x-systemd.automount,x-systemd.mount-timeout=30,jobs_ttl=30 0 0")
        source, _, fstype, options, *rest = line.split()
        options += f",api_url={api.url},files_url={nginx.base_url}"  # the test's DESaccess
        fstab.write_text(f"# a temporary fstab\n{source} {mp} {fstype} {options} {' '.join(rest)}\n")
        log = Path(pw.pw_dir) / ".cache" / "desfs" / "mount.log"  # the default log, in the bound home
        as_user = f"setpriv --reuid={pw.pw_uid} --regid={pw.pw_gid} --init-groups"
        mount = f'{as_user} mount "$MP"' if how == "user" else f'mount -T {fstab} "$MP"'
        script = (f"MP={mp}; LOG={log}\n" + UNMOUNT_AT_EXIT + mount + "\n"
                  # a mount without allow_other answers its own user only (root too is refused)
                  f'echo "LISTED $({as_user} ls "$MP" | tr "\\n" " ")"\n' + report(str(mp)) +
                  f'cat "$LOG" > {folder / "log.txt"}\n'
                  'desfs umount "$MP"; echo UNMOUNTED\n')
        out = in_namespace(script, {pw.pw_dir: str(home)}, fstab=str(fstab) if how == "user" else None)
        log_text = (folder / "log.txt").read_text() if (folder / "log.txt").exists() else ""
        assert "UNMOUNTED" in out.stdout, out.stdout + out.stderr + log_text
        lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
        assert lines["OWNER"] == user
        assert lines["OPTIONS"].split()[0] == "fuse.desfs"
        assert PASSWORD not in lines["CMDLINE"] and "Traceback" not in log_text
        if source == "desaccess":
            assert lines["LISTED"].split() == ["by-name", "cutout", "query"]
            assert f"jobs of {USER}" in log_text
        else:
            assert "summary.json" in lines["LISTED"].split()
        return lines
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


@needs_root_tools
def test_an_fstab_line_for_the_account(sample, nginx, api):
    lines = fstab_test(sample, nginx, api, "root", "root")
    assert "--jobs-ttl 30.0 " in lines["CMDLINE"]


@needs_root_tools
@pytest.mark.skipif(not any(p.pw_uid >= 1000 and p.pw_uid != 65534 for p in pwd.getpwall()),
                    reason="needs an unprivileged user")
def test_the_readmes_fstab_lines(sample, nginx, api):
    """The README's fstab lines, as written there, for its user `ann` (here: a user of this machine)."""
    text = (Path(__file__).parent.parent / "README.md").read_text()
    block = text.split("```fstab\n", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) == 2
    user = a_user()
    for line in lines:
        line = (line.replace("c39008aa52f54b9e94335b566743af0c", sample.cutout_job)
                .replace("/home/ann/des", "MOUNTPOINT").replace("/home/ann/cutout1", "MOUNTPOINT")
                .replace("setuid=ann", f"setuid={user}"))
        fstab_test(sample, nginx, api, user, "setuid", line)


@needs_root_tools
@pytest.mark.skipif(not any(p.pw_uid >= 1000 and p.pw_uid != 65534 for p in pwd.getpwall()),
                    reason="needs an unprivileged user")
def test_an_fstab_line_with_setuid_mounts_as_that_user_with_their_netrc(sample, nginx, api):
    fstab_test(sample, nginx, api, a_user(), "setuid")


@needs_root_tools
@pytest.mark.skipif(not any(p.pw_uid >= 1000 and p.pw_uid != 65534 for p in pwd.getpwall()),
                    reason="needs an unprivileged user")
def test_an_fstab_line_with_user_is_mounted_by_that_user_with_their_netrc(sample, nginx, api):
    """mount(8) leaves such a helper HOME=/root: desfs finds the user's home (and ~/.netrc) itself."""
    fstab_test(sample, nginx, api, a_user(), "user")


def a_user() -> str:
    return next(p.pw_name for p in pwd.getpwall() if p.pw_uid >= 1000 and p.pw_uid != 65534)


def test_helper_arguments_become_desfs_mount_arguments():
    flags = {"cache_size": True, "listing_ttl": True, "debug": False, "log_file": True, "foreground": False}
    assert helper_argv(["https://h/j/", "/m", "-o", "rw,dev,suid,cache_size=1G,debug,_netdev,nofail,x-systemd.a=1,"
                        "allow_other"], flags) == [
        "mount", "--cache-size", "1G", "--debug", "-o", "rw,dev,suid,allow_other", "https://h/j/", "/m"]
    assert helper_argv(["desaccess", "/m", "-o", "listing_ttl=5,user,user=ann,users"], {**flags, "user": True}) == [
        "mount", "--listing-ttl", "5", "--user", "ann", "/m"]
    with pytest.raises(UsageError):
        helper_argv(["desaccess", "/m", "-o", "foreground"], flags)
    with pytest.raises(UsageError):
        helper_argv(["desaccess", "/m", "-o", "cache_size"], flags)


def test_the_readmes_systemd_unit(sample, nginx, api, tmp_path):
    """The README's user unit: systemd-analyze finds nothing wrong in it, and its commands, run as systemd
    runs them (%h the home, stop by SIGTERM), mount the account and unmount it."""
    text = (Path(__file__).parent.parent / "README.md").read_text()
    unit = text.split("```ini\n", 1)[1].split("```", 1)[0]
    home = tmp_path / "home"
    (home / ".venvs" / "desfs" / "bin").mkdir(parents=True)
    (home / ".venvs" / "desfs" / "bin" / "desfs").symlink_to(Path(sys.executable).parent / "desfs")
    netrc = home / ".netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    netrc.chmod(0o600)
    if shutil.which("systemd-analyze"):
        (tmp_path / "desfs.service").write_text(unit)
        (tmp_path / "run").mkdir(mode=0o700)
        env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(tmp_path / "run")}
        check = subprocess.run(["systemd-analyze", "verify", "--user", str(tmp_path / "desfs.service")],
                               capture_output=True, text=True, timeout=60, env=env)
        assert check.returncode == 0 and "desfs.service" not in check.stderr, check.stderr
    service = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESACCESS_")}
    env["HOME"] = str(home)
    subprocess.run(shlex.split(service["ExecStartPre"].replace("%h", str(home))), check=True, env=env)
    argv = shlex.split(service["ExecStart"].replace("%h", str(home)))
    proc = subprocess.Popen([*argv, "--api-url", api.url, "--files-url", nginx.base_url], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: find_mount(str(home / "des")) or proc.poll() is not None, 30)
        assert sorted(os.listdir(home / "des")) == ["by-name", "cutout", "query"], proc.stderr
        proc.send_signal(signal.SIGTERM)  # systemctl --user stop desfs
        assert proc.wait(10) == 0
        assert find_mount(str(home / "des")) is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if find_mount(str(home / "des")):
            lazy_unmount(str(home / "des"))
