"""The command line as a user meets it: messages, exit codes, mount lifecycle, the demo."""

import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from desfs.mounting import find_mount, lazy_unmount

from conftest import DESFS, free_port, run_desfs
from faultserver import FaultServer

pytestmark = pytest.mark.mount


def one_line_error(result, *words):
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_version_and_module():
    from desfs import __version__

    assert run_desfs("--version").stdout.strip() == f"desfs {__version__}"
    script = os.path.join(os.path.dirname(sys.executable), "desfs")  # the console script
    out = subprocess.run([script, "--version"], capture_output=True, text=True)
    assert out.stdout.strip() == f"desfs {__version__}"


def test_help_lists_the_settings():
    out = run_desfs("mount", "--help").stdout
    for option in ("--timeout", "--cache-size", "--listing-ttl", "--block-size", "-f, --foreground", "-o"):
        assert option in out


def test_usage_errors_exit_2(tmp_path):
    r = run_desfs("mount")
    assert r.returncode == 2 and "MOUNTPOINT" in r.stderr and "Traceback" not in r.stderr
    r = run_desfs("mount", "ftp://x/y", str(tmp_path))
    assert r.returncode == 2 and "URL" in r.stderr
    r = run_desfs("mount", "http://x/y", str(tmp_path), "--cache-size", "lots")
    assert r.returncode == 2 and "not a size" in r.stderr
    assert run_desfs().returncode == 2


def test_unreachable_server(tmp_path):
    (tmp_path / "m").mkdir()
    started = time.monotonic()
    r = run_desfs("mount", f"http://127.0.0.1:{free_port()}/files-desaccess/u/cutout/j/", str(tmp_path / "m"),
                  "--retries", "1", "--log-file", str(tmp_path / "log"))
    line = one_line_error(r, "cannot mount", "connect")
    assert time.monotonic() - started < 20, line
    assert not find_mount(str(tmp_path / "m"))


def test_not_a_listing(tmp_path, server, sample):
    (tmp_path / "m").mkdir()
    one_line_error(run_desfs("mount", f"{server.base_url}{sample.user}/cutout/", str(tmp_path / "m")), "not found")
    server.faults.html_for_json = True
    one_line_error(run_desfs("mount", sample.url(server.base_url), str(tmp_path / "m")), "not valid JSON")


def test_bad_mountpoints(tmp_path, server, sample, mount):
    url = sample.url(server.base_url)
    one_line_error(run_desfs("mount", url, str(tmp_path / "missing")), "does not exist")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    one_line_error(run_desfs("mount", url, str(tmp_path / "full")), "not empty")
    (tmp_path / "file").write_text("x")
    one_line_error(run_desfs("mount", url, str(tmp_path / "file")), "not a folder")
    m = mount(url)
    one_line_error(run_desfs("mount", url, str(m.path)), "already a mount point")


def test_umount_messages(tmp_path):
    one_line_error(run_desfs("umount", str(tmp_path)), "not mounted")
    one_line_error(run_desfs("umount", "/proc"), "not a desfs mount")


def test_umount_of_a_busy_mount_says_so(mount, server, sample):
    m = mount(sample.url(server.base_url))
    holder = subprocess.Popen(["sleep", "60"], cwd=m.path)
    try:
        one_line_error(run_desfs("umount", str(m.path)), "busy", f"fuser -vm {m.path}")
        assert find_mount(str(m.path))
    finally:
        holder.kill()
        holder.wait()


def test_killed_mount_is_cleaned_by_umount(tmp_path, server, sample):
    mnt = tmp_path / "m"
    mnt.mkdir()
    log = tmp_path / "log"
    assert run_desfs("mount", sample.url(server.base_url), str(mnt), "--log-file", str(log)).returncode == 0
    try:
        pid = int(log.read_text().split("(pid ")[1].split(")")[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.stat(mnt)
            except OSError as exc:
                assert exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
                break
            time.sleep(0.05)
        r = run_desfs("umount", str(mnt))
        assert r.returncode == 0 and "dead mount" in r.stderr
        assert not find_mount(str(mnt)) and os.listdir(mnt) == []
    finally:
        if find_mount(str(mnt)):
            lazy_unmount(str(mnt))


def interrupt_and_check(proc: subprocess.Popen, mnt) -> str:
    """Ctrl-C a foreground desfs: it must unmount, exit 0 and print no traceback; returns its stderr."""
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    assert not find_mount(str(mnt))
    err = proc.stderr.read()
    assert "Traceback" not in err
    return err


def test_foreground_mount_and_ctrl_c(tmp_path, server, sample, kill_after):
    mnt = tmp_path / "m"
    mnt.mkdir()
    proc = subprocess.Popen([*DESFS, "mount", "-f", sample.url(server.base_url), str(mnt)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kill_after(proc)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.ismount(mnt), proc.stderr.read() if proc.poll() is not None else "not mounted"
        assert "summary.json" in os.listdir(mnt)
        assert interrupt_and_check(proc, mnt) == ""  # a quiet mount: nothing from libfuse either
    finally:
        if find_mount(str(mnt)):
            lazy_unmount(str(mnt))


def test_mount_options_pass_through_and_safe_defaults(mount, server, sample):
    m = mount(sample.url(server.base_url), "-o", "allow_other,noatime")
    line = next(row for row in open("/proc/self/mounts") if f" {m.path} " in row)
    options = line.split()[3].split(",")
    assert {"ro", "nosuid", "nodev", "allow_other", "noatime"} <= set(options), line
    assert line.split()[2] == "fuse.desfs"


def test_unknown_fuse_option_says_what_libfuse_said(server, sample, tmp_path):
    (tmp_path / "m").mkdir()
    r = run_desfs("mount", sample.url(server.base_url), str(tmp_path / "m"), "-o", "no_such_option",
                  "--log-file", str(tmp_path / "m.log"))
    assert r.returncode == 1 and not find_mount(str(tmp_path / "m"))
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown option" in lines[0] and "no_such_option" in lines[0], r.stderr


def test_default_has_no_allow_other(mount, server, sample):
    m = mount(sample.url(server.base_url))
    line = next(row for row in open("/proc/self/mounts") if f" {m.path} " in row)
    assert "allow_other" not in line


def test_demo(tmp_path, kill_after):
    from desfs.sample import CUTOUT_JOB, QUERY_JOB

    mnt = tmp_path / "demo"
    mnt.mkdir()
    proc = subprocess.Popen([*DESFS, "demo", str(mnt)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kill_after(proc)
    try:
        first = proc.stdout.readline()
        assert "mounted on" in first, first + proc.stderr.read()
        listing = subprocess.run(["ls", "-lR", str(mnt)], capture_output=True, text=True, check=True).stdout
        assert "_r.fits" in listing and "summary.json" in listing and "results.fits" in listing
        assert sorted(os.listdir(mnt / "cutout")) == sorted([CUTOUT_JOB, f"{CUTOUT_JOB}.log", f"{CUTOUT_JOB}.tar.gz"])
        assert os.readlink(mnt / "by-name" / "sample gold query") == f"../query/{QUERY_JOB}"
        from astropy.io import fits

        obj = "DESJ030510.9606-341521.6000"
        with fits.open(mnt / "cutout" / CUTOUT_JOB / "DES0305-3415" / obj / f"{obj}_i.fits") as h:
            assert h[0].header["BAND"] == "i" and h[0].data.shape == (64, 64)
        with fits.open(mnt / "by-name" / "sample gold query" / "results.fits") as h:
            assert len(h[1].data) == 2000
        interrupt_and_check(proc, mnt)
    finally:
        if find_mount(str(mnt)):
            lazy_unmount(str(mnt))


# -- a server that goes away or stalls, seen through the mount ------------------


@pytest.fixture
def own_server(sample):
    """own_server(port=0) starts a fault server of the test's own (on `port`, once it is free)."""
    servers = []

    def start(port=0):
        for _ in range(50):
            try:
                server = FaultServer(sample.root, port=port)
                break
            except OSError:
                time.sleep(0.1)
        servers.append(server.start())
        return server

    yield start
    for s in servers:
        s.stop()


def test_stopped_server_gives_eio_quickly_then_recovers(mount, own_server, sample):
    srv = own_server()
    port = srv.server_address[1]
    m = mount(sample.url(srv.base_url), "--timeout", "5", "--retries", "2")
    cached = m.path / "summary.json"
    data = cached.read_bytes()
    os.listdir(m.path / "DES0226-1541")
    srv.stop()
    target = m.path / f"positions_{sample.cutout_job}.csv"
    started = time.monotonic()
    with pytest.raises(OSError) as info:
        open(target, "rb").read()
    took = time.monotonic() - started
    assert info.value.errno == errno.EIO
    # a refused connection does not wait for --timeout: 3 tries with 0.25 + 0.5 s of backoff (+25 % jitter),
    # and the kernel asks twice for a page it could not read
    assert took < 4, took
    # what is cached still reads: the listings, and the file's blocks (the kernel's copy of them dropped first)
    assert sorted(os.listdir(m.path / "DES0226-1541"))
    with open(cached, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert f.read() == data
    own_server(port)
    assert open(target, "rb").read().startswith(b"RA,DEC")


def test_stalled_server_gives_etimedout(mount, server, sample):
    m = mount(sample.url(server.base_url), "--timeout", "2")
    os.listdir(m.path)
    server.faults.stall, server.faults.stall_count, server.faults.stall_seconds = "before-headers", 5, 15
    started = time.monotonic()
    with pytest.raises(OSError) as info:
        open(m.path / "summary.json", "rb").read()
    assert info.value.errno == errno.ETIMEDOUT
    assert time.monotonic() - started < 5


# What a background mount hands its serving process: every option of `desfs mount` is either
# forwarded (on its command line, or through the pipe for the URLs and credentials), or deliberately
# replaced. A new option must be put in one of the two.
FORWARDED = {"debug", "timeout", "retries", "cache_size", "block_size", "listing_ttl", "readahead", "connections",
             "listing_cache_size", "options", "ca_bundle", "site", "jobs_ttl", "api_url", "files_url", "database",
             "mountpoint", "xattrs", "disk_cache", "disk_cache_size", "offline", "walk_ahead"}
REPLACED = {"command", "foreground", "ready_fd", "handoff_fd", "log_file",
            "user", "source"}  # the user and password go through the pipe; a source is resolved to its URL


@pytest.mark.parametrize("source", [None, "https://files.example/files-desaccess/u/cutout/j/"])
def test_background_mount_forwards_every_option(source):
    import json

    from desfs.cli import build_parser
    from desfs.cli.mount import child_argv, handoff, mount_source, take_handoff
    from desfs.credentials import Credentials

    given = ["mount", "--debug", "--timeout", "7.5", "--retries", "5", "--cache-size", "64M", "--block-size", "512K",
             "--listing-ttl", "9", "--readahead", "8M", "--connections", "3", "-o", "allow_other", "-o", "noatime",
             "--listing-cache-size", "48M", "--xattrs", "off", "--walk-ahead", "5",
             "--disk-cache", "/var/cache/d", "--disk-cache-size", "1G", "--offline",
             "--ca-bundle", "/etc/ssl/ca.pem", "--site", "collab", "--jobs-ttl", "11", "--user", "someone",
             "--api-url", "https://api.example/", "--files-url", "https://files.example/", "--database", "desdr",
             *([source] if source else []), "/mnt/des"]
    parser = build_parser()
    args = parser.parse_args(given)
    assert set(vars(args)) == FORWARDED | REPLACED
    url = mount_source(args)
    creds = Credentials("someone", "pw", "prompt") if source is None else None
    argv = child_argv(args, "/mnt/des", "/var/log/desfs.log", 5, 6)
    assert not any("example" in a or "someone" in a for a in argv), argv  # URLs and the user: the pipe only
    child = parser.parse_args(argv)
    assert take_handoff(child, json.loads(json.dumps(handoff(args, url, creds)))) == url
    assert {k: getattr(child, k) for k in FORWARDED} == {k: getattr(args, k) for k in FORWARDED}
    assert child.foreground and child.ready_fd == 5 and child.handoff_fd == 6 and child.log_file == "/var/log/desfs.log"
    handed = getattr(child, "handed_credentials", None)
    assert child.user is None and (handed and (handed.username, handed.password)) == (creds and ("someone", "pw"))
