"""`desfs status`: every desfs mount of this user, asked over each mount's private socket, never through
the mount: a live mount with its counters, a hung one and a dead one, each within seconds."""

from __future__ import annotations

import json
import os
import signal
import stat
import time

import pytest

from conftest import run_desfs, wait_for
from test_leaks import serving_pid

pytestmark = [pytest.mark.mount]


@pytest.fixture
def env(tmp_path):
    """This test's own runtime folder: status sees only the mounts made here (other tests mount too)."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    return {**os.environ, "XDG_RUNTIME_DIR": str(run)}


def status(env) -> list[dict]:
    result = run_desfs("status", "--json", env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_live_mount_with_its_counters(mount, server, sample, env):
    m = mount(sample.url(server.base_url), env=env)
    data = (m.path / "summary.json").read_bytes()
    (found,) = status(env)
    assert found["state"] == "live" and found["mountpoint"] == str(m.path) and found["source"] == m.url
    assert found["pid"] == serving_pid(m.log_text())
    assert found["requests"] >= 2 and found["bytes_fetched"] >= len(data) and found["in_flight"] == 0
    memory = found["memory"]
    assert memory["block_cache"]["used"] > 0 and memory["block_cache"]["max"] == 256 * 2**20
    assert memory["listings"]["used"] > 0 and memory["rss"] > 10 * 2**20
    assert memory["block_cache_misses"] >= 1 and found["uptime"] >= 0
    disk = found["disk_cache"]  # on by default: the test's own cache folder
    assert disk["folder"].startswith(env["XDG_CACHE_HOME"]) and disk["max"] > 0 and disk["misses"] >= 1, disk
    text = run_desfs("status", env=env).stdout
    assert f"{m.path}: live, {m.url}" in text and "hit rate" in text and "in flight" in text
    folder = os.path.join(env["XDG_RUNTIME_DIR"], "desfs")
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    for name in os.listdir(folder):
        if not name.endswith(".lock"):
            assert stat.S_IMODE(os.lstat(os.path.join(folder, name)).st_mode) == 0o600, name


def test_the_last_errors_are_shown(mount, server, sample, env):
    m = mount(sample.url(server.base_url), "--retries", "0", env=env)
    server.faults.match, server.faults.status, server.faults.status_count = "summary.json", 503, 1000
    with pytest.raises(OSError):
        (m.path / "summary.json").read_bytes()
    (found,) = status(env)
    assert any("HTTP 503" in line and "WARNING" in line for line in found["errors"]), found["errors"]
    assert "last errors:" in run_desfs("status", env=env).stdout


def test_a_hung_mount_does_not_hang_status(mount, server, sample, env):
    m = mount(sample.url(server.base_url), env=env)
    pid = serving_pid(m.log_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        (found,) = status(env)
        assert time.monotonic() - started < 10
        assert found["state"] == "hung" and found["clean_up"] == f"desfs umount {m.path}"
        assert "NOT ANSWERING" in run_desfs("status", env=env).stdout
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: status(env)[0]["state"] == "live")


def test_a_dead_mount_shows_with_its_clean_up(mount, server, sample, env):
    m = mount(sample.url(server.base_url), env=env)
    pid = serving_pid(m.log_text())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"))
    (found,) = status(env)
    assert found == {"state": "dead", "pid": pid, "mountpoint": str(m.path), "source": m.url,
                     "started": found["started"], "clean_up": f"desfs umount {m.path}"}
    assert f"clean it up with: desfs umount {m.path}" in run_desfs("status", env=env).stdout
    assert run_desfs("umount", str(m.path), env=env).returncode == 0
    assert status(env) == []  # unmounted: its leftover files are gone too
    m.log.write_text(m.log_text() + "\nunmounted (killed by the test)\n")  # the fixture's clean-exit check


def test_no_mounts(env):
    assert status(env) == []
    assert run_desfs("status", env=env).stdout == "no desfs mounts\n"
