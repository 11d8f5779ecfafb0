"""Shared fixtures: the sample tree, nginx configured like the DES file server, the fault
server, and a real-mount harness that mounts through the CLI and always cleans up."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

from desfs.mounting import find_mount, lazy_unmount
from desfs.sample import MTIME, Sample, make_sample

from faultserver import FaultServer

# Names a listing can hold that a URL must encode (shared/DESACCESS.md).
ODD_NAMES = ["with space.txt", "hash#1.txt", "what?.txt", "100%.txt", "a+b=c.txt", "ünïcødé ✓.txt",
             'quote".txt', "back\\slash.txt", "semi;colon&amp.txt", "~tilde'apos.txt"]
BIG_SIZE = 12 * 1024 * 1024 + 12345  # several blocks, not a multiple of the block size


@pytest.fixture(scope="session", autouse=True)
def _no_proxies():
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        os.environ.pop(var, None)
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NGINX_CONF = """
daemon off;
master_process on;
worker_processes 2;
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 512; }}
http {{
    default_type application/octet-stream;
    log_format desfs '$request_method "$request_uri" "$http_range" $status $body_bytes_sent';
    access_log {dir}/access.log desfs;
    client_body_temp_path {dir}/tmp; proxy_temp_path {dir}/tmp; fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp; scgi_temp_path {dir}/tmp;
    server {{
        listen 127.0.0.1:{port};
        # The DES file server's locations, as in shared/DESACCESS.md.
        location ~ ^/files-desaccess/.+/jupyter/public/.+/$ {{ root {root}; autoindex on; autoindex_format html; }}
        location ~ ^/files-desaccess/.+/jupyter/.+/$        {{ root {root}; autoindex off; }}
        location ~ ^/files-desaccess/.+/.+/.+/json$ {{
            rewrite ^(/files-desaccess/.+/.+/.+/)json$ $1 break;
            root {root}; autoindex on; autoindex_format jsonp; }}
        location ~ ^/files-desaccess/.+/.+/.+/$ {{ root {root}; autoindex on; autoindex_format html; }}
        location / {{ root {root}; index index.html index.htm; }}
    }}
}}
"""


@dataclass
class Nginx:
    base_url: str
    access_log: Path
    port: int

    def log_lines(self) -> list[str]:
        return self.access_log.read_text(errors="replace").splitlines()

    def mark(self) -> int:
        return len(self.log_lines())

    def requests_since(self, mark: int) -> list[tuple[str, str, str, int, int]]:
        """(method, decoded path, range, status, body bytes) of each request after `mark`."""
        out = []
        for line in self.log_lines()[mark:]:
            m = re.match(r'(\S+) "(.*)" "(.*)" (\d+) (\d+)$', line)
            if m:
                out.append((m[1], unquote(m[2]), m[3], int(m[4]), int(m[5])))
        return out


def start_nginx(root: str, workdir: Path) -> tuple[Nginx, subprocess.Popen]:
    """nginx configured like the DES file server, serving `root` on a free loopback port."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(binary):
        pytest.fail("nginx is not installed: the README's test command installs it (apt-get install nginx-light)")
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        port = free_port()
        conf = workdir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=workdir, port=port, root=root))
        proc = subprocess.Popen([binary, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return Nginx(f"http://127.0.0.1:{port}/files-desaccess/", workdir / "access.log", port), proc
            except OSError:
                time.sleep(0.05)
        stop_nginx(proc)
    pytest.fail(f"nginx did not start: {(workdir / 'error.log').read_text(errors='replace')}")


def stop_nginx(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def nginx(sample, tmp_path_factory):
    server, proc = start_nginx(sample.root, tmp_path_factory.mktemp("nginx"))
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

    def do_mount(url: str, *options: str, name: str = "mnt") -> Mounted:
        path = tmp_path / name
        path.mkdir()
        log = tmp_path / f"{name}.log"
        result = run_desfs("mount", url, str(path), "--log-file", str(log), *options)
        m = Mounted(path, log, url)
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


@pytest.fixture
def kill_after():
    """Processes registered here are killed at teardown, whatever happened."""
    procs: list[subprocess.Popen] = []
    yield procs.append
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)
