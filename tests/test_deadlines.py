"""Deadlines (issue 10): no server, however slow or odd, makes a mount, a read, `desfs umount` or the
API hang; and the answers a careless server sends (gzip ranges, bad lengths, redirects of the
login) are refused with a defined error. Every test goes through a real mount or the real CLI."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import DESFS, run_desfs, wait_for
from desfs.mounting import find_mount, lazy_unmount
from fakeapi import FakeApi
from faultserver import Faults

pytestmark = pytest.mark.mount

USER, PASSWORD = "astrobuff", "s3cret-Pa55word"


def daemon_pid(log_text: str) -> int:
    return int(log_text.split("(pid ")[1].split(")")[0])


def timed_call(fn, limit: float):
    """(result or exception, seconds) of fn() run in a thread; (None, limit) if it has not ended by then."""
    box: list = []
    started = time.monotonic()

    def run():
        try:
            box.append(fn())
        except BaseException as exc:  # noqa: B036 - handed to the test
            box.append(exc)
        box.append(time.monotonic() - started)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit)
    return (box[0], box[1]) if len(box) == 2 else (None, limit)


def tile_files(mnt: Path) -> list[Path]:
    return sorted(p for p in mnt.rglob("*") if p.is_file() and "/DES0" in str(p))


def test_a_dripping_file_fails_with_etimedout(mount, server, sample):
    """One byte every 0.5 s never trips a 1 s socket timeout; the total deadline (1 s + 64 KiB at 64 KiB/s) does."""
    m = mount(sample.url(server.base_url), "--timeout", "1", "--retries", "0", "--block-size", "64K")
    target = m.path / "big.bin"
    os.stat(target)
    server.faults = Faults(match="big.bin", drip_seconds=0.5)

    def read():
        with open(target, "rb") as f:
            return os.pread(f.fileno(), 65536, 0)

    result, seconds = timed_call(read, 30)
    server.reset()
    assert isinstance(result, OSError) and result.errno == errno.ETIMEDOUT, (result, seconds)
    assert seconds < 12  # 2 s a try; the kernel tries a failed page read twice
    assert "ETIMEDOUT" not in m.log_text() or "Traceback" not in m.log_text()


def test_a_dripping_listing_fails_with_etimedout(mount, server, sample):
    m = mount(sample.url(server.base_url), "--timeout", "1", "--retries", "0")
    server.faults = Faults(match="DES0226-1541/json", drip_seconds=0.3)
    result, seconds = timed_call(lambda: os.listdir(m.path / "DES0226-1541"), 30)
    server.reset()
    assert isinstance(result, OSError) and result.errno == errno.ETIMEDOUT, (result, seconds)
    assert seconds < 8


def test_readers_stuck_on_a_dripping_server_do_not_starve_ls(mount, server, sample, kill_after):
    """16 programs each stuck reading a file that drips: ls and stat of other files still answer at once."""
    m = mount(sample.url(server.base_url), "--timeout", "8", "--retries", "0")
    files = tile_files(m.path)  # every listing below is cached now
    assert len(files) >= 16
    server.faults = Faults(match="/DES0", drip_seconds=0.5)
    readers = []
    try:
        for path in files[:16]:
            readers.append(subprocess.Popen(["cat", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            kill_after(readers[-1])
        wait_for(lambda: server.count("GET", "/DES0") >= 12, seconds=20)  # the kernel sends at most 12 at once
        time.sleep(0.5)  # let the rest arrive, if the kernel sends them
        assert all(r.poll() is None for r in readers)  # still stuck

        def look():
            os.listdir(m.path / "odd names" / "sub #2?")  # a listing not yet cached: one request
            return [os.stat(p).st_size for p in (m.path / "odd names").iterdir()]

        result, seconds = timed_call(look, 30)
        print(f"ls and stat while 16 reads hang: {seconds:.3f} s")
        assert not isinstance(result, BaseException) and result is not None, result
        assert seconds < 1.0, f"ls took {seconds:.2f} s while 16 reads hang"
    finally:
        for r in readers:  # a reader waiting on a page in the kernel ends when its read does (deadline)
            r.kill()
        for r in readers:
            r.wait(60)
        server.reset()


def test_sigterm_unmounts_within_two_seconds_while_reads_hang(mount, server, sample, kill_after):
    m = mount(sample.url(server.base_url), "--timeout", "20", "--retries", "0")
    files = tile_files(m.path)
    server.faults = Faults(match="/DES0", drip_seconds=0.5)
    readers = [subprocess.Popen(["cat", str(p)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for p in files[:4]]
    for r in readers:
        kill_after(r)
    try:
        wait_for(lambda: server.count("GET", "/DES0") >= 4, seconds=20)
        pid = daemon_pid(m.log_text())
        started = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: find_mount(str(m.path)) is None, seconds=10)
        unmounted = time.monotonic() - started
        wait_for(lambda: not _alive(pid), seconds=10)
        ended = time.monotonic() - started
        assert unmounted < 2.0 and ended < 3.0, (unmounted, ended)
        wait_for(lambda: all(r.poll() is not None for r in readers), seconds=10)  # the readers get an error
    finally:
        server.reset()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("busy", [False, True])
def test_umount_of_a_hung_mount_does_not_hang(server, sample, tmp_path, busy):
    """The mount's process is stopped (SIGSTOP): any stat of the mount would hang. desfs umount still
    unmounts, in a few seconds, and says so in one line."""
    mnt, log = tmp_path / "m", tmp_path / "m.log"
    mnt.mkdir()
    assert run_desfs("mount", sample.url(server.base_url), str(mnt), "--log-file", str(log)).returncode == 0
    pid = daemon_pid(log.read_text())
    holder = None
    try:
        if busy:
            with open(mnt / "summary.json", "rb") as f:
                holder = subprocess.Popen(["sleep", "60"], stdin=f)
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        r = run_desfs("umount", str(mnt), timeout=30)
        seconds = time.monotonic() - started
        assert r.returncode == 0, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "not answering" in lines[0] and ("lazily" in lines[0]) == busy, r.stderr
        assert seconds < 10 and find_mount(str(mnt)) is None
    finally:
        if holder:
            holder.kill()
            holder.wait()
        os.kill(pid, signal.SIGKILL)
        if find_mount(str(mnt)):
            lazy_unmount(str(mnt))


# -- the account mount: a slow API -----------------------------------------------


@pytest.fixture
def api(one_job_api):
    return one_job_api


@pytest.fixture
def env(tmp_path):
    e = {k: v for k, v in os.environ.items() if not k.startswith("DESACCESS_")}
    e.update(HOME=str(tmp_path / "home"), DESACCESS_USER=USER, DESACCESS_PASSWORD=PASSWORD)
    (tmp_path / "home").mkdir()
    return e


def test_a_slow_api_never_holds_lookups(mount, api, server, sample, env):
    m = mount(None, "--api-url", api.url, "--files-url", server.base_url, "--jobs-ttl", "1", "--timeout", "20",
              env=env)
    summary = m.path / "cutout" / sample.cutout_job / "summary.json"
    expected = summary.read_bytes()
    calls = len(api.calls)
    api.delay = 15.0
    try:
        time.sleep(1.1)  # the job list is now older than --jobs-ttl
        for look in (lambda: os.stat(summary), lambda: os.listdir(m.path / "cutout"), summary.read_bytes):
            result, seconds = timed_call(look, 30)
            assert not isinstance(result, BaseException), result
            assert seconds < 1.0, f"a lookup waited {seconds:.1f} s for the API"
        assert summary.read_bytes() == expected
        wait_for(lambda: len(api.calls) > calls)  # the list is being fetched again, in the background
    finally:
        api.delay = 0.0


def test_the_login_is_not_redirected(api, server, env):
    """A 307 of the login would carry the password (a POST body) to wherever it points."""
    other = FakeApi({USER: PASSWORD}, {USER: []}).start()
    try:
        api.redirect_login = other.url + "/login"
        r = run_desfs("jobs", "--api-url", api.url, "--files-url", server.base_url, "--timeout", "5", env=env)
        assert r.returncode == 1, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "redirect" in lines[0] and "Traceback" not in r.stderr, r.stderr
        assert other.calls == []  # nothing, so no password, reached the other server
    finally:
        other.stop()


# -- what a careless server sends ---------------------------------------------------


def test_a_gzipped_range_is_eio_never_wrong_bytes(mount, server, sample, tmp_path):
    m = mount(sample.url(server.base_url), "--retries", "0")
    target = m.path / "summary.json"
    os.stat(target)
    server.faults = Faults(match="summary.json", gzip_body=True)
    with pytest.raises(OSError) as info:
        target.read_bytes()
    assert info.value.errno == errno.EIO
    r = run_desfs("get", sample.url(server.base_url) + "summary.json", str(tmp_path / "got.json"), "-q")
    assert r.returncode == 1 and not (tmp_path / "got.json").exists(), r.stderr
    assert "Content-Encoding" in r.stderr and "Traceback" not in r.stderr


def test_a_bad_content_length_is_a_server_error(server, sample, api, env, mount):
    server.faults = Faults(match=".log", bad_length="12abc")
    log_url = server.base_url + f"{USER}/cutout/{sample.cutout_job}.log"
    r = run_desfs("ls", "-l", log_url, "--retries", "0")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Content-Length" in r.stderr and "Traceback" not in r.stderr
    # an account mount: the bad HEAD of one job's log hides its sidecar files, not the whole type folder
    m = mount(None, "--api-url", api.url, "--files-url", server.base_url, "--retries", "0", env=env)
    names = os.listdir(m.path / "cutout")
    assert sample.cutout_job in names and f"{sample.cutout_job}.log" not in names
    assert (m.path / "cutout" / sample.cutout_job / "summary.json").read_bytes()


def test_a_wait_for_another_threads_load_is_bounded():
    """A thread that finds a block being loaded by another waits at most that load's patience."""
    from desfs.cache import LoadingCache

    cache = LoadingCache(10, 60, patience=0.3)
    loading, release = threading.Event(), threading.Event()
    load = lambda: (loading.set(), release.wait(10), "v")[2]  # noqa: E731
    loader = threading.Thread(target=cache.get, args=("k", load), daemon=True)
    loader.start()
    assert loading.wait(5)  # the load is under way
    started = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        cache.get("k", lambda: "never called")
    assert info.value.errno == errno.ETIMEDOUT and time.monotonic() - started < 2
    release.set()
    loader.join(5)
    assert cache.get("k", lambda: "again") == "v"  # the load itself went on and was kept


def test_a_foreground_mount_of_a_job_id_stops_on_sigterm(api, server, sample, env, tmp_path, kill_after):
    """The sign-in that finds a job id's folder runs before the mount: the thread it starts (the
    deadline watchdog) must not swallow the stop signals the mount waits for."""
    mnt = tmp_path / "m"
    mnt.mkdir()
    proc = subprocess.Popen([*DESFS, "mount", "-f", f"cutout/{sample.cutout_job}", str(mnt), "--api-url", api.url,
                             "--files-url", server.base_url], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    kill_after(proc)
    try:
        wait_for(lambda: os.path.ismount(mnt) or proc.poll() is not None, 20)
        assert os.path.ismount(mnt), proc.stderr.read()
        # every thread blocks the stop signals (the signal thread takes them with sigwait): one that
        # does not, the deadline watchdog started by the sign-in say, would get and lose them
        stop_bits = sum(1 << (sig - 1) for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM))
        for status in Path(f"/proc/{proc.pid}/task").glob("*/status"):
            if "sigtimedwait" in (status.parent / "wchan").read_text():
                continue  # the signal thread, in sigwait: the kernel unblocks what it waits for meanwhile
            blocked = int(next(line for line in status.read_text().splitlines() if line.startswith("SigBlk:"))
                          .split()[1], 16)
            assert blocked & stop_bits == stop_bits, f"{status}: SigBlk {blocked:x}"
        for sig in (signal.SIGTERM,):
            started = time.monotonic()
            proc.send_signal(sig)
            assert proc.wait(10) == 0 and time.monotonic() - started < 2
        assert find_mount(str(mnt)) is None
    finally:
        if find_mount(str(mnt)):
            lazy_unmount(str(mnt))


def test_umount_of_a_live_busy_mount_on_a_slow_server_says_busy(mount, server, sample, kill_after):
    """Whether a mount answers is asked of its process, not of the server: a slow server is no hung mount."""
    m = mount(sample.url(server.base_url), "--listing-ttl", "1")
    holder = subprocess.Popen(["sleep", "60"], cwd=m.path)
    kill_after(holder)
    server.faults = Faults(match="/json", stall="before-headers", stall_count=100, stall_seconds=5)
    time.sleep(1.1)  # the root listing is stale now: a lookup in it would ask the stalling server
    r = run_desfs("umount", str(m.path), timeout=30)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "is busy" in lines[0] and find_mount(str(m.path)), r.stderr
    holder.kill()
    holder.wait()
    server.reset()


def test_passwords_in_urls_are_hidden_whatever_they_hold():
    from desfs.errors import redact

    for password in ("s3cret", "s cret", "se/cret", "se#cret", "se?cret", "a@b"):
        text = redact(f"cannot mount http://bob:{password}@127.0.0.1:9/files/x/: refused")
        assert password not in text and "bob" not in text and "127.0.0.1:9/files/x/: refused" in text, text


def test_the_minimum_rate_is_shared_by_the_transfers_at_once():
    """Two tries in flight at once each get their bytes at half the minimum rate (64 KiB/s shared)."""
    from desfs.client import _Watchdog

    dog = _Watchdog()
    first = dog.begin(1.0, 64 * 1024)
    assert first.seconds == 2.0  # alone: 1 s + 64 KiB at 64 KiB/s
    other = threading.Thread(target=lambda: dog.begin(1.0, 64 * 1024))
    other.start()
    other.join()
    assert first.seconds == 3.0  # two at once: its 64 KiB at 32 KiB/s
    dog.end(first)
