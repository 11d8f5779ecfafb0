"""`desfs get` of a large file in parallel segments, resumed after kill -9, as a user runs it
(against nginx and the in-process fault server)."""

import json
import os
import random
import signal
import stat
import subprocess

import pytest

from conftest import BIG_SIZE, DESFS, run_desfs, wait_for
from faultserver import FaultServer

pytestmark = pytest.mark.nginx

MiB = 1024 * 1024


def big_url(sample, base_url):
    return sample.url(base_url) + "big.bin"


def big_source(sample):
    return os.path.join(sample.cutout_dir, "big.bin")


def hidden(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith("."))


def ranges_of(requests, name):
    """[start, stop) of each Range GET of `name` in a server's request log."""
    out = []
    for method, path, rng, *_ in requests:
        if method == "GET" and path.endswith("/" + name):
            assert rng.startswith("bytes="), rng  # never the whole file
            a, b = rng[len("bytes="):].split("-")
            out.append((int(a), int(b) + 1))
    return out


def inside(r, ranges):
    return any(a <= r[0] and r[1] <= b for a, b in ranges)


def state_of(folder):
    """The state file of the one part in `folder`: (its path, its missing ranges)."""
    states = [n for n in os.listdir(folder) if n.endswith(".desfs-part.state")]
    if len(states) != 1:
        return None, None
    path = os.path.join(folder, states[0])
    try:
        return path, [tuple(r) for r in json.loads(open(path, "rb").read())["missing"]]
    except (OSError, ValueError):
        return path, None  # read while being replaced


def start_killable(args, kill_after):
    proc = subprocess.Popen([*DESFS, "get", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kill_after(proc)
    return proc


def test_a_large_file_is_fetched_in_parallel_segments(nginx, sample, tmp_path):
    dest = tmp_path / "big.bin"
    mark = nginx.mark()
    r = run_desfs("get", big_url(sample, nginx.base_url), str(dest), "-q", "-x", "4", "--segment-size", "1M")
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == open(big_source(sample), "rb").read()
    assert int(dest.stat().st_mtime) == int(os.stat(big_source(sample)).st_mtime)
    assert hidden(tmp_path) == []  # no part, no state file left
    got = ranges_of(nginx.requests_since(mark), "big.bin")
    starts = {a for a, _ in got}
    assert {BIG_SIZE * i // 4 for i in range(4)} <= starts  # four equal ranges, one per connection
    assert len(got) >= 4 and sum(b - a for a, b in got) < BIG_SIZE + 4 * MiB  # no range fetched twice over
    # below twice --segment-size a file is one stream, as before
    mark = nginx.mark()
    r = run_desfs("get", big_url(sample, nginx.base_url), str(tmp_path / "one.bin"), "-q", "--segment-size", "7M")
    assert r.returncode == 0, r.stderr
    assert len(ranges_of(nginx.requests_since(mark), "big.bin")) == 1


def test_a_killed_download_resumes_only_the_missing_ranges(server, sample, tmp_path, kill_after):
    dest = tmp_path / "big.bin"
    server.faults.match, server.faults.slow_chunk_delay = "big.bin", 0.05  # ~1.3 MB/s a connection
    proc = start_killable([big_url(sample, server.base_url), str(dest), "-q", "-x", "4", "--segment-size", "1M"],
                          kill_after)

    def some_in():
        assert not dest.exists()  # never the real name before the end
        path, missing = state_of(tmp_path)
        return missing is not None and BIG_SIZE - sum(b - a for a, b in missing) > 2 * MiB and (path, missing)

    wait_for(some_in, 60, 0.02)
    assert server.sending_peak >= 4  # four ranges sent at once
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert not dest.exists()
    state, missing = state_of(tmp_path)
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
    part = state[: -len(".state")]
    assert os.path.getsize(part) == BIG_SIZE and len(missing) >= 4
    left = sum(b - a for a, b in missing)
    assert 0 < left < BIG_SIZE - 2 * MiB
    server.reset()
    r = run_desfs("get", big_url(sample, server.base_url), str(dest), "-q", "-x", "4", "--segment-size", "1M")
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == open(big_source(sample), "rb").read()
    assert hidden(tmp_path) == []
    got = ranges_of(server.requests, "big.bin")
    assert got and all(inside(g, missing) for g in got), (got, missing)  # nothing fetched twice
    assert {a for a, _ in missing} <= {a for a, _ in got}  # each range resumed where it stopped


def test_an_interrupted_download_resumes_too(server, sample, tmp_path, kill_after):
    dest = tmp_path / "big.bin"
    server.faults.match, server.faults.slow_chunk_delay = "big.bin", 0.05
    proc = start_killable([big_url(sample, server.base_url), str(dest), "-x", "3", "--segment-size", "1M",
                           "--progress-every", "0.2"], kill_after)
    wait_for(lambda: (m := state_of(tmp_path)[1]) is not None and sum(b - a for a, b in m) < BIG_SIZE - MiB, 60)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 130
    err = proc.stderr.read()
    assert "interrupted" in err and "connections 3" in err  # the progress shows the ranges in flight
    _, missing = state_of(tmp_path)  # saved as it stopped
    server.reset()
    r = run_desfs("get", big_url(sample, server.base_url), str(dest), "-q", "-x", "3", "--segment-size", "1M")
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == open(big_source(sample), "rb").read()
    assert all(inside(g, missing) for g in ranges_of(server.requests, "big.bin"))


@pytest.fixture
def own_server(tmp_path):
    """A fault server of its own, over a folder whose file the test may change."""
    root = tmp_path / "root"
    folder = root / "files-desaccess" / "someone" / "cutout" / "job1"
    folder.mkdir(parents=True)
    srv = FaultServer(str(root)).start()
    yield srv, folder, f"{srv.base_url}someone/cutout/job1/"
    srv.stop()


def test_a_file_changed_on_the_server_between_runs_is_fetched_anew(own_server, tmp_path, kill_after):
    srv, folder, url = own_server
    size = 6 * MiB + 777
    old = random.Random(1).randbytes(size)
    (folder / "data.bin").write_bytes(old)
    os.utime(folder / "data.bin", (1_700_000_000, 1_700_000_000))
    dest = tmp_path / "out"
    dest.mkdir()
    srv.faults.match, srv.faults.slow_chunk_delay = "data.bin", 0.05
    proc = start_killable([url, str(dest), "-q", "-x", "4", "--segment-size", "1M"], kill_after)
    wait_for(lambda: (m := state_of(dest)[1]) is not None and sum(b - a for a, b in m) < size - MiB, 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    new = random.Random(2).randbytes(size)  # same size, new bytes and time
    (folder / "data.bin").write_bytes(new)
    os.utime(folder / "data.bin", (1_700_000_100, 1_700_000_100))
    srv.reset()
    r = run_desfs("get", url, str(dest), "-q", "-x", "4", "--segment-size", "1M")
    assert r.returncode == 0, r.stderr
    assert (dest / "data.bin").read_bytes() == new  # never a mix of the two
    assert hidden(dest) == []  # the old version's part and state are gone
    got = ranges_of(srv.requests, "data.bin")
    assert sum(b - a for a, b in got) >= size and min(a for a, _ in got) == 0


def test_a_cut_segment_is_resumed_never_left_short(server, sample, tmp_path):
    dest = tmp_path / "big.bin"
    server.faults.match, server.faults.truncate_count, server.faults.reset_count = "big.bin", 2, 1
    r = run_desfs("get", big_url(sample, server.base_url), str(dest), "-q", "-x", "4", "--segment-size", "1M")
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == open(big_source(sample), "rb").read()
    got = ranges_of(server.requests, "big.bin")
    firsts = {BIG_SIZE * i // 4 for i in range(4)}
    assert any(a not in firsts for a, _ in got)  # a cut range continued where its bytes stopped


def test_a_segment_that_keeps_failing_fails_the_file_and_keeps_the_rest(server, sample, tmp_path):
    dest = tmp_path / "big.bin"
    server.faults.match, server.faults.truncate_count = "big.bin", 1000
    r = run_desfs("get", big_url(sample, server.base_url), str(dest), "-q", "-x", "4", "--segment-size", "1M",
                  "--retries", "1")
    assert r.returncode == 1
    failed = [line for line in r.stderr.splitlines() if "failed:" in line]
    assert len(failed) == 1 and "big.bin" in failed[0] and "cut short" in failed[0]
    assert not dest.exists()
    _, missing = state_of(tmp_path)
    assert missing and sum(b - a for a, b in missing) < BIG_SIZE  # the halves that came are kept
    server.reset()
    r = run_desfs("get", big_url(sample, server.base_url), str(dest), "-q", "-x", "4", "--segment-size", "1M")
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == open(big_source(sample), "rb").read()
    assert all(inside(g, missing) for g in ranges_of(server.requests, "big.bin"))


def test_segments_in_a_tree_download(nginx, sample, tmp_path):
    """A job folder: big.bin in segments, the small files many at once beside it."""
    from test_get import assert_same_tree

    mark = nginx.mark()
    r = run_desfs("get", sample.url(nginx.base_url), str(tmp_path / "job"), "-q", "-j", "3", "-x", "4",
                  "--segment-size", "2M")
    assert r.returncode == 0, r.stderr
    assert_same_tree(sample.cutout_dir, tmp_path / "job")
    assert len(ranges_of(nginx.requests_since(mark), "big.bin")) >= 4
    assert not [n for _, _, fs in os.walk(tmp_path / "job") for n in fs if n.endswith(".state")]


def test_a_file_changed_during_the_download_fails_and_is_never_mixed(own_server, tmp_path):
    srv, folder, url = own_server
    size = 4 * MiB
    (folder / "data.bin").write_bytes(random.Random(3).randbytes(size))
    os.utime(folder / "data.bin", (1_700_000_000, 1_700_000_000))
    dest = tmp_path / "out"
    dest.mkdir()
    # the look as a folder (data.bin/json) and the HEAD pass; the ranges' first tries are put off, and the
    # file is replaced meanwhile
    srv.faults.match, srv.faults.skip = "data.bin", 2
    srv.faults.status, srv.faults.status_count, srv.faults.retry_after = 503, 2, "2"
    proc = subprocess.Popen([*DESFS, "get", url + "data.bin", str(dest / "data.bin"), "-q", "-x", "2",
                             "--segment-size", "1M"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: srv.count("GET", suffix="/data.bin") >= 2, 30)
        new = random.Random(4).randbytes(size)
        (folder / "next").write_bytes(new)
        os.utime(folder / "next", (1_700_000_100, 1_700_000_100))
        os.rename(folder / "next", folder / "data.bin")
        assert proc.wait(timeout=60) == 1, list(srv.requests)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert "failed: data.bin" in err and "changed on the server" in err
    assert os.listdir(dest) == []  # no real name, no part of the old version left
    srv.reset()
    r = run_desfs("get", url + "data.bin", str(dest / "data.bin"), "-q", "-x", "2", "--segment-size", "1M")
    assert r.returncode == 0, r.stderr
    assert (dest / "data.bin").read_bytes() == new


@pytest.mark.parametrize("state", [b"{not json", b'{"format": 1, "url": "http://elsewhere/big.bin", "size": %d, '
                                   b'"mtime": %d, "missing": []}', b'{"format": 1, "url": "%s", "size": %d, '
                                   b'"mtime": %d, "missing": [[5, 3]]}'], ids=["garbage", "other-url", "bad-range"])
def test_a_state_file_that_does_not_hold_is_not_trusted(nginx, sample, tmp_path, state):
    from desfs.sample import MTIME

    url = big_url(sample, nginx.base_url)
    part = tmp_path / f".big.bin.{BIG_SIZE:x}-{int(MTIME):x}.desfs-part"
    part.write_bytes(b"\0" * BIG_SIZE)  # a part of the full size that claims to be complete
    if b"%s" in state:
        state = state % (url.encode(), BIG_SIZE, int(MTIME))
    elif b"%d" in state:
        state = state % (BIG_SIZE, int(MTIME))
    (tmp_path / (part.name + ".state")).write_bytes(state)
    r = run_desfs("get", url, str(tmp_path / "big.bin"), "-q", "-x", "4", "--segment-size", "1M")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "big.bin").read_bytes() == open(big_source(sample), "rb").read()
    assert hidden(tmp_path) == []


def test_a_free_connection_takes_over_the_end_of_a_stalled_range(server, sample, tmp_path):
    dest = tmp_path / "big.bin"
    server.faults.match, server.faults.stall, server.faults.stall_count = "big.bin", "after-headers", 1
    server.faults.stall_seconds = 4.0  # the first range's answer stops after its headers for 4 s
    r = run_desfs("get", big_url(sample, server.base_url), str(dest), "-q", "-x", "2", "--segment-size", "1M",
                  "--timeout", "10")
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == open(big_source(sample), "rb").read()
    got = ranges_of(server.requests, "big.bin")
    # the stalled range is one of the two asked for first (the server may log them in either order)
    stalled = max(got[:2], key=lambda s: sum(b - a for a, b in got[2:] if s[0] < a < s[1]))
    taken = [g for g in got[2:] if stalled[0] < g[0] < stalled[1]]
    assert taken, got  # the other connection fetched parts of the stalled range meanwhile
    assert sum(b - a for a, b in taken) >= (stalled[1] - stalled[0]) // 2
