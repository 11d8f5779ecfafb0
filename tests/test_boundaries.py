"""Deadlines and boundaries: nothing outside the served tree is served, secrets stay private,
mount points are taken by one mount at a time."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from desfs.mounting import find_mount, lazy_unmount, mounts
from desfs.sample import make_sample
from desfs.server import DesHandler, DesServer

from conftest import DESFS, run_desfs

PASSWD_LINE = b"root:x:0:0:"  # /etc/passwd's first line: never in an answer


def raw_get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    """(status, whole answer) of a request sent as written: no client normalizes the path."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def port_of(base_url: str) -> int:
    return int(base_url.split(":")[2].split("/")[0])


# -- the DES-like server serves its tree and nothing else -----------------------------

JOB = "/files-desaccess/{user}/cutout/{job}"
ESCAPES = [
    "//etc/passwd",
    "/files-desaccess//etc/passwd",
    "/files-desaccess/%2Fetc%2Fpasswd",
    "/files-desaccess/%2fetc/passwd",
    "/files-desaccess///etc/ssh/json",
    "/files-desaccess/../../etc/passwd",
    "/../etc/passwd",
    "/files-desaccess/%2e%2e/%2e%2e/etc/passwd",
    "/files-desaccess/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "/files-desaccess/{user}/cutout/..%2F..%2F..%2Fetc/passwd",
    JOB + "/..%2f..%2f..%2f..%2f..%2f..%2f..%2f..%2fetc/passwd",
    JOB + "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    JOB + "/summary.json%00",
]
# paths with dot segments and doubled slashes that stay inside: served as nginx serves them
INSIDE = [
    JOB + "//summary.json",
    JOB + "/./summary.json",
    JOB + "/DES0305-3415/../summary.json",
    "/files-desaccess/{user}/cutout/%2e%2e/cutout/{job}/summary.json",
    "/files-desaccess/{user}//cutout/{job}/json",
    JOB + "/.",
    JOB + "/..",
]


@pytest.fixture(scope="module")
def plain_server(sample):
    """desfs.server.DesServer itself (the demo's), not the fault server that subclasses it."""
    server = DesServer(sample.root).start()
    yield server
    server.stop()


@pytest.fixture(params=["DesServer", "FaultServer"])
def any_server(request, plain_server, server):
    return plain_server if request.param == "DesServer" else server


@pytest.mark.parametrize("path", ESCAPES)
def test_server_serves_nothing_outside_its_tree(any_server, sample, path):
    path = path.format(user=sample.user, job=sample.cutout_job)
    status, answer = raw_get(any_server.server_address[1], path)
    assert status in (400, 404), (path, answer[:300])
    assert PASSWD_LINE not in answer


@pytest.mark.nginx
@pytest.mark.parametrize("path", ESCAPES + INSIDE)
def test_escapes_answer_as_nginx_does(nginx, plain_server, sample, path):
    path = path.format(user=sample.user, job=sample.cutout_job)
    ours, _ = raw_get(plain_server.server_address[1], path)
    theirs, _ = raw_get(nginx.port, path)
    assert ours == theirs, path


def test_symlinks_out_of_the_tree_are_not_followed(tmp_path):
    """nginx follows symlinks by default (disable_symlinks off); the demo's server does not leave its tree."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"a secret of the machine\n")
    s = make_sample(str(tmp_path / "root"), user="astrobuff", image_size=8, query_rows=10)
    job = os.path.join(s.root, "files-desaccess", s.user, "cutout", s.cutout_job)
    os.symlink(outside / "secret.txt", os.path.join(job, "abs.txt"))
    os.symlink("../../../../../outside/secret.txt", os.path.join(job, "rel.txt"))
    os.symlink(outside, os.path.join(job, "dir"))
    os.symlink("summary.json", os.path.join(job, "inside.json"))  # within the tree: served
    server = DesServer(s.root).start()
    try:
        port, base = server.server_address[1], f"/files-desaccess/{s.user}/cutout/{s.cutout_job}"
        for path in ("/abs.txt", "/rel.txt", "/dir/secret.txt", "/dir/", "/dir/json", "/dir"):
            status, answer = raw_get(port, base + path)
            assert status == 404, (path, answer[:300])
            assert b"secret" not in answer
        status, answer = raw_get(port, base + "/inside.json")
        assert status == 200 and answer.endswith(open(os.path.join(job, "summary.json"), "rb").read())
        status, listing = raw_get(port, base + "/json")
        assert status == 200
        for name in ("abs.txt", "rel.txt", "dir"):  # listed as a broken link would be, without the target's size
            assert re.search(rb'"name":"%s", "type":"other"' % name.encode(), listing), listing
    finally:
        server.stop()


@pytest.mark.mount
def test_demo_server_serves_nothing_outside_its_tree(tmp_path, kill_after):
    mnt = tmp_path / "demo"
    mnt.mkdir()
    proc = subprocess.Popen([*DESFS, "demo", str(mnt)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kill_after(proc)
    try:
        told = proc.stdout.readline() + proc.stdout.readline()
        found = re.search(r"file server at (http://\S+/files-desaccess/)", told)
        assert found, told + proc.stderr.read()
        port = port_of(found[1])
        for path in ("//etc/passwd", "/files-desaccess//etc/passwd", "/files-desaccess/%2Fetc%2Fshadow",
                     "/files-desaccess/%2e%2e/%2e%2e/etc/passwd"):
            status, answer = raw_get(port, path)
            assert status in (400, 404) and PASSWD_LINE not in answer, (path, answer[:300])
        assert raw_get(port, "//etc/passwd")[0] == 404
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if find_mount(str(mnt)):
            lazy_unmount(str(mnt))


# -- credentials: a ~/.netrc that others can read is not used --------------------------

USER, PASSWORD = "astrobuff", "s3cret-Pa55word"


@pytest.fixture
def api(one_job_api):
    return one_job_api


@pytest.fixture
def home_env(tmp_path):
    """An environment with its own HOME and no DESACCESS_* variables."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESACCESS_")}
    env["HOME"] = str(home)
    return env


def write_netrc(home, mode: int, password: str = PASSWORD):
    netrc = home / ".netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {password}\n")
    netrc.chmod(mode)
    return netrc


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604], ids=["644", "640", "604"])
def test_netrc_open_to_others_is_refused_with_the_fix(api, server, home_env, mode):
    write_netrc(Path(home_env["HOME"]), mode)
    r = run_desfs("jobs", "--api-url", api.url, "--files-url", server.base_url, "--retries", "0", env=home_env)
    assert r.returncode == 1, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "chmod 600 ~/.netrc" in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert PASSWORD not in r.stderr + r.stdout
    assert api.logins == 0  # the password of an open netrc was not sent anywhere


def test_other_sources_still_apply_after_an_open_netrc(api, server, home_env):
    write_netrc(Path(home_env["HOME"]), 0o644, password="not-this-one")
    home_env.update(DESACCESS_USER=USER, DESACCESS_PASSWORD=PASSWORD)
    r = run_desfs("jobs", "--api-url", api.url, "--files-url", server.base_url, "--retries", "0", env=home_env)
    assert r.returncode == 0, r.stderr
    assert "my cutouts" in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "chmod 600 ~/.netrc" in lines[0], r.stderr
    assert "not-this-one" not in r.stderr


def test_private_netrc_is_used(api, server, home_env):
    write_netrc(Path(home_env["HOME"]), 0o600)
    r = run_desfs("jobs", "--api-url", api.url, "--files-url", server.base_url, "--retries", "0", env=home_env)
    assert r.returncode == 0 and "my cutouts" in r.stdout and r.stderr == "", r.stderr


# -- one mount at a time per mount point; mount points resolved through symlinks -------------


class SlowListingHandler(DesHandler):
    """Listings answered after half a second: every mount attempt spends that long between its
    check of the mount point and the mount itself."""

    def handle_request(self, head: bool) -> None:
        if urlsplit(self.path).path.endswith("/json"):
            time.sleep(0.5)
        super().handle_request(head)


@pytest.fixture
def slow_server(sample):
    server = DesServer(sample.root, handler=SlowListingHandler).start()
    yield server
    server.stop()


def mounts_at(path) -> int:
    return sum(1 for m in mounts() if m.mountpoint == str(path))


@pytest.fixture
def unmount_all():
    """Paths registered here are unmounted at teardown, however many mounts are stacked on them."""
    paths = []
    yield paths.append
    for p in paths:
        for _ in range(10):
            if not find_mount(str(p)):
                break
            if run_desfs("umount", str(p)).returncode != 0:
                lazy_unmount(str(p))


def test_concurrent_mounts_on_one_folder_make_one_mount(tmp_path, slow_server, sample, unmount_all):
    mnt = tmp_path / "m"
    mnt.mkdir()
    unmount_all(mnt)
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env["HOME"] = str(tmp_path / "home")
    url = sample.url(slow_server.base_url)
    procs = [subprocess.Popen([*DESFS, "mount", url, str(mnt), "--log-file", str(tmp_path / f"{i}.log")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(5)]
    results = [(p.wait(timeout=60), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert mounts_at(mnt) == 1, results
    assert sorted(code for code, _ in results) == [0, 1, 1, 1, 1], results
    for code, err in results:
        if code == 1:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in err, err
            assert "mounting on it right now" in lines[0] or "already a mount point" in lines[0], lines[0]
    assert (mnt / "summary.json").read_bytes() == open(os.path.join(sample.cutout_dir, "summary.json"), "rb").read()
    locks = tmp_path / "home" / ".cache" / "desfs" / "locks"
    assert os.stat(locks).st_mode & 0o777 == 0o700
    assert [os.stat(f).st_mode & 0o777 for f in locks.iterdir()] == [0o600]
    r = run_desfs("umount", str(mnt))
    assert r.returncode == 0 and not find_mount(str(mnt)), r.stderr


def test_mount_and_umount_through_a_symlink(tmp_path, server, sample, unmount_all):
    target = tmp_path / "target"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    unmount_all(target)
    url = sample.url(server.base_url)
    for unmount_by in (link, target):
        r = run_desfs("mount", url, str(link), "--log-file", str(tmp_path / "log"))
        assert r.returncode == 0, r.stderr
        assert mounts_at(target) == 1 and find_mount(str(link)) == find_mount(str(target))
        assert "summary.json" in os.listdir(link)
        r = run_desfs("mount", url, str(target), "--log-file", str(tmp_path / "log"))
        assert r.returncode == 1 and "already a mount point" in r.stderr, r.stderr
        r = run_desfs("umount", str(unmount_by))
        assert r.returncode == 0, (unmount_by, r.stderr)
        assert mounts_at(target) == 0
    r = run_desfs("mount", url, str(target), "--log-file", str(tmp_path / "log"))
    assert r.returncode == 0, r.stderr
    r = run_desfs("umount", str(link))
    assert r.returncode == 0 and mounts_at(target) == 0, r.stderr


# -- the process serving a mount cannot be dumped ------------------------------------------


def test_serving_process_is_not_dumpable(tmp_path, api, server, home_env, unmount_all):
    """A non-dumpable process's /proc/<pid> files belong to root:root whatever its ids (a dumpable
    one's to its euid:egid): run desfs under a group other than root's (as a user when the tests
    are not root), so that only prctl(PR_SET_DUMPABLE, 0) makes them root:root."""
    if os.getuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("setpriv (util-linux) is needed to run desfs under another group")
        prefix = ["setpriv", "--regid=nogroup", "--clear-groups"]  # same uid (root may mount), other gid
    else:
        prefix = []
    mnt = tmp_path / "m"
    mnt.mkdir()
    unmount_all(mnt)
    home_env.update(DESACCESS_USER=USER, DESACCESS_PASSWORD=PASSWORD)
    log = tmp_path / "mount.log"
    r = subprocess.run([*prefix, *DESFS, "mount", str(mnt), "--api-url", api.url, "--files-url", server.base_url,
                        "--log-file", str(log)], capture_output=True, text=True, timeout=120, env=home_env)
    assert r.returncode == 0, r.stderr + log.read_text()
    assert find_mount(str(mnt))  # live (only its own uid and gid may look inside without allow_other)
    pid = int(re.search(r"\(pid (\d+)\)", log.read_text())[1])
    ids = {line.split(":")[0]: line.split()[1:3] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
           if line.startswith(("Uid:", "Gid:"))}
    assert ids["Uid"] != ["0", "0"] or ids["Gid"] != ["0", "0"], ids  # a dumpable process would show its ids
    for name in ("environ", "mem", "maps"):
        st = os.stat(f"/proc/{pid}/{name}")
        assert (st.st_uid, st.st_gid) == (0, 0), (name, st.st_uid, st.st_gid, ids)
    r = run_desfs("umount", str(mnt))
    assert r.returncode == 0 and not find_mount(str(mnt)), r.stderr


def test_symlink_to_a_stopped_mount_resolves_without_waiting(tmp_path, server, sample, unmount_all):
    """Resolving a symlink to a mount point never stats the mount point: its desfs may be stopped."""
    target, link = tmp_path / "target", tmp_path / "link"
    target.mkdir()
    link.symlink_to(target)
    unmount_all(target)
    log = tmp_path / "log"
    r = run_desfs("mount", sample.url(server.base_url), str(link), "--log-file", str(log), "--listing-ttl", "1")
    assert r.returncode == 0, r.stderr
    pid = int(re.search(r"\(pid (\d+)\)", log.read_text())[1])
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(1.5)  # past the kernel's attribute timeout of the mount's root: a stat would wait for desfs
        code = "import sys; from desfs.mounting import find_mount; print(find_mount(sys.argv[1]).mountpoint)"
        try:
            r = subprocess.run([DESFS[0], "-c", code, str(link)], capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("resolving the symlink waited for the stopped desfs")
        assert r.stdout.strip() == str(target), r.stderr
    finally:
        os.kill(pid, signal.SIGCONT)
