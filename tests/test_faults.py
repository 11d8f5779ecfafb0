"""Faults and hostile input through real mounts: every case ends in a defined outcome, never wrong bytes."""

import errno
import hashlib
import json
import os
import random
import shutil
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import run_desfs, wait_for
from faultserver import FaultServer, pattern_bytes

pytestmark = pytest.mark.mount

GiB = 1024**3


@pytest.fixture
def fmount(mount, server, sample):
    """A mount of the fault server's job with short timeouts, so failures come fast."""
    def do(*options, name="mnt"):
        return mount(sample.url(server.base_url), "--timeout", "2", "--retries", "2", *options, name=name)
    return do


def source(sample, rel):
    return open(os.path.join(sample.cutout_dir, rel), "rb").read()


def job_path(sample, rel=""):
    return f"/files-desaccess/{sample.user}/cutout/{sample.cutout_job}/" + rel


def read_or_errno(path):
    """The bytes of the file, or the errno its reading failed with."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        return exc.errno


def ranges_asked(server, name):
    """(first, last) of every range request for `name`, in the order the server got them."""
    with server._log_lock:
        return [tuple(int(x) for x in r[6:].split("-")) for m, p, r in server.requests
                if m == "GET" and p.endswith("/" + name) and r.startswith("bytes=")]


@pytest.mark.parametrize("status, code", [(401, errno.EACCES), (403, errno.EACCES),
                                          (404, errno.ENOENT), (410, errno.ENOENT)])
def test_http_status_errno_table(fmount, server, sample, status, code):
    m = fmount()
    os.stat(m.path / "summary.json")  # the listing is cached: only the file's own request meets the status
    server.faults.match, server.faults.status, server.faults.status_count = "summary.json", status, 1000
    with pytest.raises(OSError) as info:
        open(m.path / "summary.json", "rb").read()
    assert info.value.errno == code
    assert server.count(contains="summary.json") <= 2  # never retried (the kernel tries a page read twice)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_bursts_are_retried(fmount, server, sample, status):
    m = fmount()
    server.faults.match, server.faults.status, server.faults.status_count = "summary.json", status, 2
    assert open(m.path / "summary.json", "rb").read() == source(sample, "summary.json")
    assert server.count(contains="summary.json") == 3


def test_retry_after_is_honoured_up_to_30_seconds(fmount, server, sample):
    """An hour's Retry-After: the retry comes after 30 s (not at once, not in an hour)."""
    m = fmount()
    os.stat(m.path / "summary.json")
    server.faults.match, server.faults.status, server.faults.status_count = "summary.json", 503, 1
    server.faults.retry_after = "3600"
    started = time.monotonic()
    out = subprocess.run(["cat", str(m.path / "summary.json")], capture_output=True, timeout=60)
    took = time.monotonic() - started
    assert out.returncode == 0 and out.stdout == source(sample, "summary.json")
    assert 29 <= took <= 30 * 1.25 + 8, took
    assert server.count(contains="summary.json") == 2


def test_endless_5xx_is_eio_after_retries(fmount, server):
    m = fmount()
    server.faults.match, server.faults.status, server.faults.status_count = "summary.json", 503, 1000
    started = time.monotonic()
    with pytest.raises(OSError) as info:
        open(m.path / "summary.json", "rb").read()
    assert info.value.errno == errno.EIO and time.monotonic() - started < 10
    # one try and two retries per FUSE read; the kernel retries a failed page read once itself
    assert server.count(contains="summary.json") in (3, 6)
    server.reset()
    assert open(m.path / "summary.json", "rb").read()  # and it works again once the server does


@pytest.mark.parametrize("fault", ["truncate_count", "reset_count"])
def test_cut_bodies_are_resumed_never_short_or_padded(fmount, server, sample, fault):
    m = fmount("--readahead", "0")
    os.stat(m.path / "big.bin")
    server.faults.match = "big.bin"
    setattr(server.faults, fault, 2)  # the first block's body is cut twice: within --retries 2
    assert open(m.path / "big.bin", "rb").read() == source(sample, "big.bin")
    # each try asks for what is still missing: the server cut each body after half of what was asked
    # (the kernel may read the next blocks meanwhile, in parallel: only the first block's tries are in order)
    asked = ranges_asked(server, "big.bin")
    assert [r for r in asked if r[1] == 1048575] == [(0, 1048575), (524288, 1048575), (786432, 1048575)], asked
    assert (1048576, 2097151) in asked


def test_stall_mid_body_is_etimedout_then_recovers(fmount, server, sample):
    m = fmount()
    # twice: the kernel tries a failed page read once more itself
    server.faults.match, server.faults.stall, server.faults.stall_count = "summary.json", "after-headers", 2
    started = time.monotonic()
    with pytest.raises(OSError) as info:
        open(m.path / "summary.json", "rb").read()
    assert info.value.errno == errno.ETIMEDOUT and time.monotonic() - started < 2 * 2 + 1
    assert open(m.path / "summary.json", "rb").read() == source(sample, "summary.json")


def test_server_ignoring_range_gives_right_bytes(fmount, server, sample):
    m = fmount()
    server.faults.match, server.faults.ignore_range = "big.bin", True
    data = source(sample, "big.bin")
    with open(m.path / "big.bin", "rb") as f:
        for offset in (0, 3_000_000, len(data) - 100):
            f.seek(offset)
            assert f.read(100) == data[offset:offset + 100]
    assert m.log_text().count("ignores Range") == 1


def test_wrong_content_range_is_eio(fmount, server):
    m = fmount()
    server.faults.match, server.faults.shift_content_range = "big.bin", 4096
    with pytest.raises(OSError) as info:
        open(m.path / "big.bin", "rb").read(10)
    assert info.value.errno == errno.EIO


def test_file_changing_while_open_never_mixes_versions(mount, sample, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(sample.root, root, ignore=shutil.ignore_patterns("a fifo"))
    srv = FaultServer(str(root)).start()
    try:
        m = mount(sample.url(srv.base_url), "--readahead", "0", "--block-size", "1M")  # listings kept 120 s
        target = Path(root, *sample.cutout_dir.split(os.sep)[-4:]) / "big.bin"
        old = target.read_bytes()
        new = bytes(b ^ 0xFF for b in old[:4 * 1024 * 1024]) + old[4 * 1024 * 1024:]
        with open(m.path / "big.bin", "rb", buffering=0) as f:
            assert f.read(1000) == old[:1000]
            target.write_bytes(new)
            os.utime(target, (time.time() + 10, time.time() + 10))
            f.seek(2 * 1024 * 1024 + 5)
            with pytest.raises(OSError) as info:
                f.read(1000)
            assert info.value.errno == errno.ESTALE
        # the listing was dropped: a new open sees the new version (once the kernel's 1 s attribute cache
        # has let go of the old size and time)
        assert wait_for(lambda: read_or_errno(m.path / "big.bin") == new)
    finally:
        srv.stop()


def test_broken_listings_are_eio_and_the_rest_works(fmount, server, sample):
    m = fmount()
    for body in (b"not json", b"<html><body>Index</body></html>", json.dumps({"name": "x"}).encode()):
        server.faults.listing_body = {job_path(sample, "odd names/json"): body}
        with pytest.raises(OSError) as info:
            os.listdir(m.path / "odd names")
        assert info.value.errno == errno.EIO
    assert "summary.json" in os.listdir(m.path)
    assert "Traceback" not in m.log_text()


def test_hostile_names_are_refused_never_followed(fmount, server, sample):
    listing = [{"name": n, "type": "file", "size": 3, "mtime": "Thu, 26 Nov 2026 00:00:00 GMT"}
               for n in ["..", ".", "", "a/b", "../../etc/passwd", "nul\u0000x", "x" * 256, "ok.txt", "ok.txt",
                         "NOT-UTF-8", "NOT-UTF-8-DIR"]]
    listing.append({"name": "..", "type": "directory", "mtime": "Thu, 26 Nov 2026 00:00:00 GMT"})
    listing[-2]["type"] = "directory"
    body = json.dumps(listing).encode()
    # raw bytes that are no UTF-8 at all (nginx writes names as the disk holds them)
    body = body.replace(b"NOT-UTF-8-DIR", b"latin1 caf\xe9").replace(b"NOT-UTF-8", b"bad \xff\xfe.fits")
    server.faults.listing_body = {job_path(sample, "odd names/json"): body}
    m = fmount()
    assert os.listdir(m.path / "odd names") == ["ok.txt"]
    assert os.listdir(os.fsencode(m.path / "odd names")) == [b"ok.txt"]
    assert os.path.realpath(m.path / "odd names" / "..") == str(m.path)
    log = m.log_text()
    assert log.count("refused") >= 8 and "duplicate" in log and log.count("not valid UTF-8") == 2


def test_enormous_listing(fmount, server, sample):
    listing = [{"name": f"DESJ{i:06d}_r.fits", "type": "file", "size": i, "mtime": "Thu, 26 Nov 2026 00:00:00 GMT"}
               for i in range(100_000)]
    server.faults.listing_body = {job_path(sample, "odd names/json"): json.dumps(listing).encode()}
    m = fmount()
    names = os.listdir(m.path / "odd names")
    assert len(names) == 100_000
    for i in range(0, 100_000, 997):
        assert os.stat(m.path / "odd names" / f"DESJ{i:06d}_r.fits").st_size == i
    assert server.count(contains="odd names/json") == 1  # one request lists them all, and serves every stat


def test_files_over_4_gib(fmount, server, sample):
    size = 5 * GiB + 123
    listing = [{"name": "huge.fits", "type": "file", "size": size, "mtime": "Thu, 26 Nov 2026 00:00:00 GMT"}]
    server.faults.listing_body = {job_path(sample, "odd names/empty folder/json"): json.dumps(listing).encode()}
    server.faults.virtual = {job_path(sample, "odd names/empty folder/huge.fits"): size}
    m = fmount()
    path = m.path / "odd names" / "empty folder" / "huge.fits"
    assert os.stat(path).st_size == size
    with open(path, "rb", buffering=0) as f:
        for offset in (2**32 - 10, 2**32 + 12345, size - 100):
            f.seek(offset)
            assert f.read(1000) == pattern_bytes(offset, min(size, offset + 1000))
        f.seek(2**32 + 7)
        data = b"".join(f.read(1 << 20) for _ in range(8))  # sequential: readahead on, offsets past 2^32
        assert data == pattern_bytes(2**32 + 7, 2**32 + 7 + len(data))
    out = subprocess.run(["tail", "-c", "100", str(path)], capture_output=True, check=True).stdout
    assert out == pattern_bytes(size - 100, size)


def test_zero_byte_file(fmount):
    m = fmount()
    assert open(m.path / "odd names" / "empty.dat", "rb").read() == b""


def test_job_deleted_mid_use(fmount, server, sample):
    m = fmount("--listing-ttl", "1")
    fits = "DES0226-1541/DESJ022640.4160-154120.0040/DESJ022640.4160-154120.0040_r.fits"
    assert open(m.path / "summary.json", "rb").read() and open(m.path / fits, "rb").read()
    server.faults.status, server.faults.status_count = 404, 10_000
    # the job's listing expires after 1 s: then the job is gone, the folder itself too
    assert wait_for(lambda: read_or_errno(m.path / "summary.json") == errno.ENOENT)
    def fails_with(action):
        try:
            action()
        except OSError as exc:
            return exc.errno
        return None

    # (a name the kernel looked up less than a second ago may still be in its entry cache)
    for action in (lambda: os.listdir(m.path), lambda: os.stat(m.path / "DES0226-1541"),
                   lambda: open(m.path / fits, "rb").read()):
        assert wait_for(lambda action=action: fails_with(action) == errno.ENOENT, 5)
    # Everything cached under the job was dropped: were the job back, its blocks are fetched again
    # (they are keyed by version, and the version is the same, so only a drop explains a new request).
    server.reset()
    assert wait_for(lambda: isinstance(read_or_errno(m.path / fits), bytes))
    with open(m.path / fits, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # not from the kernel's page cache either
        assert f.read() == source(sample, fits)
    assert server.count(contains=fits.rsplit("/", 1)[1]) >= 1


def test_concurrent_random_reads_with_faults(mount, server, sample):
    huge = 96 * 1024 * 1024  # with big.bin, a working set seven times the cache
    listing = [{"name": "huge.bin", "type": "file", "size": huge, "mtime": "Thu, 26 Nov 2026 00:00:00 GMT"}]
    server.faults.listing_body = {job_path(sample, "odd names/empty folder/json"): json.dumps(listing).encode()}
    server.faults.virtual = {job_path(sample, "odd names/empty folder/huge.bin"): huge}
    m = mount(sample.url(server.base_url), "--timeout", "3", "--retries", "5", "--cache-size", "16M",
              "--block-size", "256K")
    files = ["big.bin", "summary.json", "DES0226-1541/DESJ022640.4160-154120.0040/DESJ022640.4160-154120.0040_r.fits",
             f"positions_{sample.cutout_job}.csv", "odd names/with space.txt", "odd names/empty folder/huge.bin"]
    data = {f: source(sample, f) for f in files[:-1]}
    data[files[-1]] = pattern_bytes(0, huge)
    for f in files:
        os.stat(m.path / f)  # listings in place before the faults start
    server.faults.random_fail, server.faults.random_cut = 0.1, 0.3
    wrong, errors = [], []

    def reader(seed):
        rng = random.Random(seed)
        for _ in range(50):
            name = rng.choice(files)
            size = len(data[name])
            offset = rng.randrange(size) if size else 0
            length = rng.randrange(1, 600_000)
            try:
                with open(m.path / name, "rb") as fh:
                    fh.seek(offset)
                    got = fh.read(length)
                if got != data[name][offset:offset + length]:
                    wrong.append((name, offset, length))
            except OSError as exc:
                errors.append(exc.errno)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not any(t.is_alive() for t in threads), "a reader hung"
    assert wrong == []
    assert set(errors) <= {errno.EIO}
    # six tries per request (--retries 5), cut bodies resumed: a read fails only by a rare run of bad luck
    assert len(errors) <= 2, f"{len(errors)} of 400 reads failed"
    server.faults.random_fail = server.faults.random_cut = 0
    with open(m.path / files[-1], "rb") as f:  # and the whole of it, once, with readahead
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data[files[-1]]).digest()
    server.reset()
    assert open(m.path / "big.bin", "rb").read() == data["big.bin"]
    pid = int(m.log_text().split("(pid ")[1].split(")")[0])
    peak = next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith("VmHWM:"))
    print(f"peak RSS {peak / 1024:.1f} MiB")
    assert peak / 1024 <= 16 + 64, f"peak RSS {peak / 1024:.0f} MiB over the 16 MiB cache + 64 MiB"


@pytest.fixture
def tls_server(sample, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    srv = FaultServer(sample.root)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.start()
    yield srv.base_url.replace("http://", "https://"), cert
    srv.stop()


def test_tls_is_verified_by_default(tls_server, sample, tmp_path, mount):
    base, cert = tls_server
    (tmp_path / "m").mkdir()
    r = run_desfs("mount", sample.url(base), str(tmp_path / "m"), "--retries", "0")
    assert r.returncode == 1 and "certificate verify failed" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    m = mount(sample.url(base), "--ca-bundle", str(cert), name="tls")
    assert open(m.path / "summary.json", "rb").read() == source(sample, "summary.json")
    m = mount(sample.url(base), name="tls-env", env={**os.environ, "REQUESTS_CA_BUNDLE": str(cert)})
    assert open(m.path / "summary.json", "rb").read() == source(sample, "summary.json")


def test_redirect_to_another_host_is_followed_and_nothing_secret_is_sent(fmount, server, sample):
    other = FaultServer(sample.root, host="127.0.0.2").start()  # another host, same files
    try:
        src = job_path(sample, "summary.json")
        server.faults.redirect = {src: other.base_url + src[len("/files-desaccess/"):]}
        m = fmount()
        assert open(m.path / "summary.json", "rb").read() == source(sample, "summary.json")
        assert other.count(contains="summary.json") >= 1
        seen = server.headers_seen + other.headers_seen
        assert not any("Authorization" in h or "Cookie" in h for h in seen)
    finally:
        other.stop()
