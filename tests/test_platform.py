"""The platform module: every Linux-only call has a fallback, and the fallbacks work (run here on Linux
with `platform.LINUX` set False). The rest of desfs imports with no Linux-only call at import time."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from desfs import mounting, platform

from conftest import wait_for


@pytest.fixture
def elsewhere(monkeypatch):
    """desfs.platform as on a system that is not Linux (macOS with macFUSE)."""
    monkeypatch.setattr(platform, "LINUX", False)


def test_mount_command_lines_of_macos_and_util_linux_are_parsed(elsewhere, monkeypatch, tmp_path):
    fake = tmp_path / "mount"
    fake.write_text("#!/bin/sh\ncat <<'END'\n"
                    "/dev/disk3s1s1 on / (apfs, sealed, local, read-only, journaled)\n"
                    "desfs on /Users/ann/des (macfuse, nodev, nosuid, read-only, synchronous, mounted by ann)\n"
                    "desfs on /tmp/with space (fuse.desfs, nodev)\n"
                    "desfs on /mnt/x type fuse.desfs (ro,nosuid,nodev,relatime,user_id=0,group_id=0)\n"
                    "END\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert platform.mount_table() == [("/", "apfs", "/dev/disk3s1s1"),
                                      ("/Users/ann/des", "fuse.desfs", "desfs"),
                                      ("/tmp/with space", "fuse.desfs", "desfs"),
                                      ("/mnt/x", "fuse.desfs", "desfs")]


def test_the_fallbacks_of_the_rest(elsewhere):
    assert platform.unmount_argv("/m")[-1] == "/m" and "umount" in platform.unmount_argv("/m")[0]
    assert platform.unmount_argv("/m", lazy=True)[1] == "-f"
    assert platform.kernel_readahead(os.stat("/").st_dev, 1024) is None
    assert platform.forbid_core_dumps() is False
    assert platform.limit_malloc_arenas() is False
    platform.malloc_trim()  # a no-op, no error


@pytest.mark.mount
def test_a_live_mount_is_found_and_unmounted_through_the_fallbacks(elsewhere, mount, sample, nginx):
    """mount(8)'s table and umount(8) instead of /proc/self/mountinfo and fusermount3 (root here, as
    a macOS user is for umount of a mount of their own)."""
    m = mount(sample.url(nginx.base_url))
    found = mounting.find_mount(str(m.path))
    assert found is not None and found.fstype == "fuse.desfs" and found.source == "desfs"
    assert mounting.unmount(str(m.path)) == "unmounted"
    wait_for(lambda: not os.path.ismount(m.path))


def test_the_other_modules_make_no_linux_only_call_at_import():
    """Every desfs module imports with /proc and /sys out of reach (as on macOS): they are touched only
    through desfs.platform, when asked."""
    code = ("import builtins, io\n"
            "real = io.open\n"
            "def guarded(file, *a, **k):\n"
            "    if str(file).startswith(('/proc', '/sys')):\n"
            "        raise AssertionError(f'opened {file} at import')\n"
            "    return real(file, *a, **k)\n"
            "builtins.open = io.open = guarded\n"
            "import desfs.platform; desfs.platform.LINUX = False\n"
            "import desfs.cli, desfs.fuse_ops, desfs.account, desfs.download, desfs.mounting\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr

