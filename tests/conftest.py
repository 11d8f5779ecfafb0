"""Shared fixtures: the sample tree, nginx configured like the DES file server, the fault
server, and a real-mount harness that mounts through the CLI and always cleans up."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from desfs.mounting import find_mount, lazy_unmount
from desfs.sample import MTIME, Sample, make_sample

from faultserver import FaultServer
from nginxserver import Nginx, free_port, start_nginx, stop_nginx  # noqa: F401  (re-exported for tests)

# Names a listing can hold that a URL must encode (shared/DESACCESS.md).
ODD_NAMES = ["with space.txt", "hash#1.txt", "what?.txt", "100%.txt", "a+b=c.txt", "ünïcødé ✓.txt",
             'quote".txt', "back\\slash.txt", "semi;colon&amp.txt", "~tilde'apos.txt"]
BIG_SIZE = 12 * 1024 * 1024 + 12345  # several blocks, not a multiple of the block size


@pytest.fixture(scope="session", autouse=True)
def _no_proxies():
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        os.environ.pop(var, None)
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"


@pytest.fixture(autouse=True)
def _private_disk_cache(tmp_path, monkeypatch):
    """Every test's mounts keep their disk cache in a folder of the test's own ($XDG_CACHE_HOME), never
    in the user's ~/.cache: no test warms another's cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def _add_odd_tree(sample: Sample) -> None:
    """Odd names, a folder named json, empty/big files, hidden and `other` entries."""
    top = Path(sample.cutout_dir) / "odd names"
    (top / "json").mkdir(parents=True)
    (top / "json" / "inside json.txt").write_bytes(b"in a folder named json\n")
    (top / "sub #2?").mkdir()
    (top / "sub #2?" / "deep%20file.txt").write_bytes(b"deep\n")
    for i, name in enumerate(ODD_NAMES):
        (top / name).write_bytes(f"file {i}: {name}\n".encode() * (i + 1))
    (top / "empty.dat").write_bytes(b"")
    (top / "empty folder").mkdir()
    (top / ".hidden").write_bytes(b"never listed\n")
    rng = random.Random(7)
    (Path(sample.cutout_dir) / "big.bin").write_bytes(rng.randbytes(BIG_SIZE))
    os.mkfifo(top / "a fifo")  # listed by nginx as type "other"
    for folder, dirs, files in os.walk(sample.cutout_dir):
        for name in dirs + files:
            p = os.path.join(folder, name)
            if not os.path.islink(p):
                os.utime(p, (MTIME, MTIME))


@pytest.fixture(scope="session")
def sample(tmp_path_factory) -> Sample:
    root = tmp_path_factory.mktemp("des-root")
    s = make_sample(str(root), user="astrobuff")
    _add_odd_tree(s)
    return s


@pytest.fixture(scope="session")
def nginx(sample, tmp_path_factory):
    try:
        server, proc = start_nginx(sample.root, tmp_path_factory.mktemp("nginx"))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server
    stop_nginx(proc)


@pytest.fixture(scope="session")
def _fault_server(sample):
    server = FaultServer(sample.root).start()
    yield server
    server.stop()


@pytest.fixture
def server(_fault_server) -> FaultServer:
    """The in-process DES-like server with every fault switch off and an empty request log."""
    _fault_server.reset()
    yield _fault_server
    _fault_server.reset()


# -- real mounts ------------------------------------------------------------

DESFS = [sys.executable, "-m", "desfs"]


def run_desfs(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*DESFS, *args], capture_output=True, text=True, timeout=timeout, **kwargs)


@dataclass
class Mounted:
    path: Path
    log: Path
    url: str

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def mount(tmp_path):
    """mount(url, *options) mounts through the CLI (in the background) and returns a Mounted.

    On teardown: `desfs umount`, or a lazy unmount if that fails; then the mount
    process must have exited cleanly and logged no traceback.
    """
    made: list[Mounted] = []

    def do_mount(url: str | None, *options: str, name: str = "mnt", env: dict | None = None) -> Mounted:
        """url None: an account mount (desfs mount MOUNTPOINT)."""
        path = tmp_path / name
        path.mkdir()
        log = tmp_path / f"{name}.log"
        source = [url] if url else []
        result = run_desfs("mount", *source, str(path), "--log-file", str(log), *options, env=env)
        m = Mounted(path, log, url or "")
        assert result.returncode == 0, f"mount failed: {result.stderr}\n{m.log_text()}"
        made.append(m)
        assert os.path.ismount(path)
        return m

    yield do_mount
    problems = []
    for m in made:
        if find_mount(str(m.path)):
            result = run_desfs("umount", str(m.path))
            if result.returncode != 0:
                problems.append(f"umount {m.path}: {result.stderr}")
                lazy_unmount(str(m.path))
        deadline = time.monotonic() + 10
        while "unmounted " not in m.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        text = m.log_text()
        if "Traceback" in text:
            problems.append(f"traceback in the mount log:\n{text}")
        if "unmounted" not in text:
            problems.append(f"mount process did not exit cleanly:\n{text}")
    assert not problems, "\n".join(problems)


def source_files(folder: str) -> dict[str, str]:
    """Relative path → absolute path of every regular, visible file below `folder`."""
    found = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            p = os.path.join(root, name)
            if not name.startswith(".") and os.path.isfile(p):
                found[os.path.relpath(p, folder)] = p
    return found


def read_range(client, path: str, start: int, stop: int, expect) -> bytes:
    """Bytes [start, stop) of version `expect` of a file, through Client.fetch (for tests)."""
    buf = bytearray()
    client.fetch(path, start, stop, expect, buf.extend)
    return bytes(buf)


def has_block(cache, key, index: int) -> bool:
    """Whether a BlockCache holds block `index` of the file `key` (for tests)."""
    return (key, index, cache.block_size) in cache.blocks


def wait_for(condition, seconds: float = 10.0, interval: float = 0.05):
    """Poll `condition` until it returns something true (returned); fail the test after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not so within {seconds} s: {getattr(condition, '__name__', condition)}")
        time.sleep(interval)


ACCOUNT_USER, ACCOUNT_PASSWORD = "astrobuff", "s3cret-Pa55word"  # the emulated account of the sample


@pytest.fixture
def one_job_api(sample):
    """The emulated DESaccess API (fakeapi.py) of an account whose one job is the sample's cutout job."""
    from fakeapi import FakeApi

    jobs = [{"job_id": sample.cutout_job, "job_type": "cutout", "job_name": "my cutouts", "job_status": "success",
             "job_time_start": "2026-11-24 23:50:00", "job_time_complete": "2026-11-24 23:59:00",
             "expiration_date": "2026-12-08 23:59:00", "query_files": [], "cutout_files": []}]
    server = FakeApi({ACCOUNT_USER: ACCOUNT_PASSWORD}, {ACCOUNT_USER: jobs}).start()
    yield server
    server.stop()


@pytest.fixture
def kill_after():
    """Processes registered here are killed at teardown, whatever happened."""
    procs: list[subprocess.Popen] = []
    yield procs.append
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)


def parse_python(source: str):
    """ast.parse, tried again on CPython's "AST constructor recursion depth mismatch" (a SystemError of
    3.11 before 3.11.8, gh-106905: the AST's recursion counter is not kept per parse; seen once in a full run)."""
    import ast

    for attempt in range(3):
        try:
            return ast.parse(source)
        except SystemError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
