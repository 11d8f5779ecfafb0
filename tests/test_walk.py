"""Walks at scale (issue 11, item 4): the listings a program walks into are fetched many at once,
bounded, ahead of it; the .log/.tar.gz HEADs of a job type folder go out many at once; a finished
job's are kept. Real FUSE mounts through the CLI, against the fault server holding each answer a
while (a far server), counting how many it is answering at once."""

import collections
import contextlib
import os
import re
import subprocess
import time

import pytest

from conftest import run_desfs, wait_for
from fakeapi import FakeApi
from faultserver import FaultHandler, FaultServer

pytestmark = pytest.mark.mount

USER, PASSWORD = "walker", "s3cret-Pa55word"


class SlowHandler(FaultHandler):
    """Holds each answer `server.delay(kind, path)` seconds first (kind: listing, HEAD or file)."""

    def handle_request(self, head: bool) -> None:
        path = self.path_decoded()
        kind = "HEAD" if head else "listing" if path.endswith("/json") else "file"
        with self.server.answering(kind):
            time.sleep(self.server.delay(kind, path))
        return super().handle_request(head)


class SlowServer(FaultServer):
    request_queue_size = 128  # many connections opened at once (socketserver's 5 would drop some: 1 s late)

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.RequestHandlerClass = SlowHandler
        self.delay = lambda kind, path: 0.0
        self.now: collections.Counter = collections.Counter()
        self.peak: collections.Counter = collections.Counter()

    @contextlib.contextmanager
    def answering(self, kind: str):
        with self._lock:
            self.now[kind] += 1
            self.peak[kind] = max(self.peak[kind], self.now[kind])
        try:
            yield
        finally:
            with self._lock:
                self.now[kind] -= 1

    def asked(self, method: str, suffix: str) -> list[str]:
        with self._log_lock:
            return [p for m, p, _ in self.requests if m == method and p.endswith(suffix)]


def big_job(folder, tiles: int, objects: int) -> None:
    """A cutout job of `tiles` tile folders with `objects` object folders each, two files in each."""
    (folder / "summary.json").parent.mkdir(parents=True)
    (folder / "summary.json").write_text("{}")
    for t in range(tiles):
        for o in range(objects):
            obj = folder / f"DES{t:04d}+0000" / f"DESJ{o:06d}.00+000000.0"
            obj.mkdir(parents=True)
            for band in "gr":
                (obj / f"DESJ{o:06d}_{band}.fits").write_bytes(b"SIMPLE")


def expected_find(folder) -> set[str]:
    """What find prints for `folder` (relative)."""
    out = {"."}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            out.add("./" + os.path.relpath(os.path.join(root, name), folder))
    return out


def find(path) -> set[str]:
    r = subprocess.run(["find", "."], cwd=path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.splitlines())


@pytest.fixture
def job_server(tmp_path):
    root = tmp_path / "root"
    job = root / "files-desaccess" / USER / "cutout" / ("a" * 32)
    big_job(job, 6, 6)
    server = SlowServer(str(root)).start()
    yield server, job, f"{server.base_url}{USER}/cutout/{'a' * 32}/"
    server.stop()


def test_a_walk_lists_many_folders_at_once_bounded_each_once(mount, job_server):
    """find in a job of 43 folders, listings answered in 0.1 s: up to --walk-ahead of them are fetched at
    once (the walker's own besides), none twice, and find sees exactly the tree. (Before: 4 at once.)"""
    server, job, url = job_server
    server.delay = lambda kind, path: 0.1 if kind == "listing" else 0.0
    m = mount(url, "--walk-ahead", "10")
    assert find(m.path) == expected_find(job)
    listed = server.asked("GET", "/json")
    assert len(listed) == len(set(listed)) == 1 + 6 + 36, sorted(listed)  # every folder once
    assert 8 <= server.peak["listing"] <= 10 + 1, server.peak  # many at once; the bound, and find's own


def test_walk_ahead_0_lists_nothing_ahead(mount, job_server):
    server, job, url = job_server
    m = mount(url, "--walk-ahead", "0")
    assert find(m.path) == expected_find(job)
    assert server.peak["listing"] == 1


def mount_pid(m) -> int:
    return int(re.search(r"\(pid (\d+)\)", m.log_text()).group(1))


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_an_unmount_with_listings_ahead_in_flight_is_prompt(mount, job_server):
    """Listings fetched ahead that hang on the server (6 s) are not waited for at unmount: the process
    ends within 3 s. (Before: the listing threads were joined at exit.)"""
    server, job, url = job_server
    base = f"/files-desaccess/{USER}/cutout/{'a' * 32}"
    quick = {f"{base}/json", f"{base}/DES0000+0000/json"}
    server.delay = lambda kind, path: 6.0 if kind == "listing" and path not in quick else 0.0
    m = mount(url)
    pid = mount_pid(m)
    os.listdir(m.path)
    os.listdir(m.path / "DES0000+0000")  # soon after its parent: a walk, the next folders listed ahead
    assert wait_for(lambda: server.now["listing"] >= 4, 5), server.now
    started = time.monotonic()
    r = run_desfs("umount", str(m.path))
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: gone(pid), 10)
    assert time.monotonic() - started < 3.0, f"{time.monotonic() - started:.1f} s"
    assert server.now["listing"] >= 1  # they were still hanging


# -- the account ------------------------------------------------------------------------------

JOBS = 24


def job(job_id, status="success"):
    return {"job_id": job_id, "job_type": "cutout", "job_name": job_id[:6], "job_status": status,
            "job_time_start": "2026-11-24 23:50:00", "job_time_complete": "2026-11-24 23:59:00",
            "expiration_date": "2026-12-08 23:59:00", "query_files": [], "cutout_files": []}


@pytest.fixture
def account(tmp_path):
    """JOBS finished cutout jobs, each a tile folder with an object folder; every job has its .log, every
    other one its .tar.gz."""
    root = tmp_path / "root"
    cutout = root / "files-desaccess" / USER / "cutout"
    ids = [f"{i + 1:032x}" for i in range(JOBS)]
    for i, job_id in enumerate(ids):
        big_job(cutout / job_id, 1, 1)
        (cutout / f"{job_id}.log").write_text("log\n")
        if i % 2:
            (cutout / f"{job_id}.tar.gz").write_bytes(b"tar")
    (root / "files-desaccess" / USER / "query").mkdir()
    server = SlowServer(str(root)).start()
    api = FakeApi({USER: PASSWORD}, {USER: [job(j) for j in ids]}).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESACCESS_")}
    env.update(HOME=str(tmp_path), DESACCESS_USER=USER, DESACCESS_PASSWORD=PASSWORD)
    options = ["--api-url", api.url, "--files-url", server.base_url, "--timeout", "10", "--retries", "1"]
    yield server, cutout, options, env
    api.stop()
    server.stop()


def test_sidecar_heads_go_out_many_at_once_bounded(mount, account):
    """ls -l of a type folder of 24 jobs, HEADs answered in 0.2 s: up to --walk-ahead HEADs at once, each
    file once, and exactly the files that exist are shown. (Before: 8 at once.)"""
    server, cutout, options, env = account
    server.delay = lambda kind, path: 0.2 if kind == "HEAD" else 0.0
    m = mount(None, *options, "--walk-ahead", "16", env=env)
    r = subprocess.run(["ls", "-l", str(m.path / "cutout")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(m.path / "cutout")) == sorted(os.listdir(cutout))
    heads = server.asked("HEAD", "")
    assert len(heads) == len(set(heads)) == 2 * JOBS, heads
    assert 12 <= server.peak["HEAD"] <= 16, server.peak


def test_a_finished_jobs_sidecars_are_kept_whatever_the_listings_evict(mount, account):
    """A listing cache so small that a walk's listings evict each other: the .log/.tar.gz of finished jobs
    are still never asked for again. (Before: kept among the listings, and evicted with them.)"""
    server, cutout, options, env = account
    m = mount(None, *options, "--listing-cache-size", "24K", env=env)
    names = sorted(os.listdir(m.path / "cutout"))
    assert names == sorted(os.listdir(cutout))
    heads = len(server.asked("HEAD", ""))
    for _ in os.walk(m.path / "cutout"):  # every job's listings: more than the cache holds
        pass
    assert sorted(os.listdir(m.path / "cutout")) == names
    for name in names:
        os.stat(m.path / "cutout" / name)
    assert len(server.asked("HEAD", "")) == heads


def test_find_across_an_account_lists_jobs_at_once_each_once(mount, account):
    """find over an account of 24 jobs, listings answered in 0.1 s: the jobs' folders are listed many at
    once (before: one job after another), none twice, and find sees exactly every job's files."""
    server, cutout, options, env = account
    server.delay = lambda kind, path: 0.1 if kind == "listing" else 0.0
    m = mount(None, *options, "--walk-ahead", "12", env=env)
    seen = find(m.path / "cutout")
    assert seen == expected_find(cutout)
    listed = server.asked("GET", "/json")
    assert len(listed) == len(set(listed)) == 3 * JOBS, sorted(listed)  # job, tile, object: each once
    assert 8 <= server.peak["listing"] <= 12 + 1, server.peak


def listings_once_quiet(server, quiet: float = 1.0, limit: float = 20.0) -> int:
    """How many listings were asked for, once that has stopped growing for `quiet` seconds."""
    deadline = time.monotonic() + limit
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = len(server.asked("GET", "/json"))
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return n
        time.sleep(0.05)
    raise AssertionError("listings never stopped")


@pytest.fixture
def wide_job(tmp_path):
    """A job of 12 tiles of 6 objects: 85 folders."""
    root = tmp_path / "root"
    job = root / "files-desaccess" / USER / "cutout" / ("c" * 32)
    big_job(job, 12, 6)
    server = SlowServer(str(root)).start()
    yield server, job, f"{server.base_url}{USER}/cutout/{'c' * 32}/"
    server.stop()


@pytest.mark.parametrize("options, most", [((), 2 + 16 + 3 * 2),
                                           (("--walk-ahead", "2", "--listing-cache-size", "8K"), 2 + 8 + 2)],
                         ids=["the-start-of-a-walk", "half-the-listing-cache"])
def test_two_folders_read_by_hand_cost_a_few_listings(mount, wide_job, options, most):
    """A folder and one of its sub-folders read by hand (a walk begins) fetch its sub-folders and a few
    more ahead, not the job's 85: at most 16 + 3 a folder read ahead of the program, and no more than
    half the listing cache holds (with few at once, so that the bytes can be counted before the next: 4 KiB
    is 8 object folders' listings of 560 bytes, and 2 under way)."""
    server, job, url = wide_job
    m = mount(url, *options)
    os.listdir(m.path)
    os.listdir(m.path / "DES0000+0000")
    n = listings_once_quiet(server)
    assert 2 + 1 <= n <= most, n  # something ahead (its sub-folders first), a few
    assert find(m.path) == expected_find(job)  # and a walk that goes on gets everything
    listed = server.asked("GET", "/json")
    assert len(set(listed)) == 1 + 12 + 72
    if not options:  # each once (8K cannot hold the listings find needs at once: some are fetched again)
        assert len(listed) == 1 + 12 + 72
