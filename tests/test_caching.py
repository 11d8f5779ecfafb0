"""The caching and readahead promises of the README ("Caching and staleness"), through real mounts:
each test here fails when the promise it names is broken."""

import json
import os
import subprocess
import threading
import time

import pytest

from conftest import wait_for
from faultserver import pattern_bytes
from nginxserver import start_nginx, stop_nginx

pytestmark = pytest.mark.mount

MiB = 1024 * 1024
MTIME = "Thu, 26 Nov 2026 00:00:00 GMT"


def job_path(sample, rel=""):
    return f"/files-desaccess/{sample.user}/cutout/{sample.cutout_job}/" + rel


def made_up_file(server, sample, size, name="huge.bin"):
    """A file of `size` pattern bytes in the job's "odd names/empty folder"; returns its path in the mount."""
    listing = [{"name": name, "type": "file", "size": size, "mtime": MTIME}]
    server.faults.listing_body = {job_path(sample, "odd names/empty folder/json"): json.dumps(listing).encode()}
    server.faults.virtual = {job_path(sample, f"odd names/empty folder/{name}"): size}
    return f"odd names/empty folder/{name}"


def ranges_asked(server, name):
    """(first, last) of every range request for `name`, in the order the server got them."""
    with server._log_lock:
        return [tuple(int(x) for x in r[6:].split("-")) for m, p, r in server.requests
                if m == "GET" and p.endswith("/" + name) and r.startswith("bytes=")]


def quiet(server, seconds=0.5, longest=10.0):
    """Wait until the server has had no new request for `seconds` (readahead is asynchronous: what a
    read set off arrives a little later). A negative can only be checked after such a pause."""
    deadline = time.monotonic() + longest
    seen, since = len(server.requests), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = len(server.requests)
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return


def set_kernel_readahead(mountpoint, kb):
    """The mount's kernel readahead (root only; a user's mount has the kernel's 128 KiB anyway)."""
    st = os.stat(mountpoint)
    entry = f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb"
    if os.geteuid() == 0:
        with open(entry, "w") as f:
            f.write(str(kb))
    with open(entry) as f:
        assert int(f.read()) == kb


def read_sequentially(f, start, stop, size=128 * 1024):
    f.seek(start)
    for offset in range(start, stop, size):
        assert f.read(size) == pattern_bytes(offset, offset + size)


def test_readahead_starts_once_a_sequential_run_passes_2_mib(mount, server, sample):
    """No readahead until a sequential run passes 2 MiB (a FITS header costs its blocks only); past it,
    a window as large as the run so far."""
    rel = made_up_file(server, sample, 64 * MiB)
    m = mount(sample.url(server.base_url))
    os.stat(m.path / rel)
    set_kernel_readahead(m.path, 128)  # the kernel's own readahead kept small, so desfs's shows
    with open(m.path / rel, "rb", buffering=0) as f:
        read_sequentially(f, 0, 1 * MiB + 768 * 1024)  # the kernel asks for up to 128 KiB more: 1.875 MiB
        quiet(server)
        fetched = max(last + 1 for _, last in ranges_asked(server, "huge.bin"))
        assert fetched <= 2 * MiB, f"{fetched / MiB:.2f} MiB fetched for 1.75 MiB read: readahead came too early"
        read_sequentially(f, 1 * MiB + 768 * 1024, 8 * MiB)
        quiet(server)
        fetched = max(last + 1 for _, last in ranges_asked(server, "huge.bin"))
        # a window of 8 MiB, asked for in parts of at most half of it: at most one part behind
        assert fetched >= 12 * MiB, f"{fetched / MiB:.2f} MiB fetched for 8 MiB read: no readahead"


def test_astropy_reading_the_headers_of_a_large_fits_file_sets_off_no_readahead(mount, tmp_path):
    """A FITS header read through astropy (with the mount's own kernel readahead) costs the blocks
    of its headers, not a readahead window: the primary header, then the extension's after 48 MiB
    of data it seeks over."""
    from astropy.io import fits
    import numpy as np

    root = tmp_path / "root"
    folder = root / "files-desaccess" / "u" / "cutout" / "0123456789abcdef0123456789abcdef"
    folder.mkdir(parents=True)
    fits.HDUList([fits.PrimaryHDU(np.zeros((3072, 4096), np.float32)),
                  fits.ImageHDU(np.arange(100, dtype=np.int16).reshape(10, 10))]).writeto(folder / "tile.fits")
    own, proc = start_nginx(str(root), tmp_path / "nginx")
    try:
        m = mount(f"{own.base_url}/u/cutout/0123456789abcdef0123456789abcdef/")
        os.stat(m.path / "tile.fits")
        mark = own.mark()
        with fits.open(m.path / "tile.fits") as h:
            assert h[0].header["NAXIS1"] == 4096
        time.sleep(0.5)  # (readahead, were it set off, would have asked by now: a negative needs a pause)
        primary = sum(r[4] for r in own.requests_since(mark) if r[1].endswith("tile.fits"))
        mark = own.mark()
        with fits.open(m.path / "tile.fits") as h:
            assert h[1].header["NAXIS1"] == 10 and h[1].data[9, 9] == 99
        time.sleep(0.5)
        extension = sum(r[4] for r in own.requests_since(mark) if r[1].endswith("tile.fits"))
    finally:
        stop_nginx(proc)
    assert 0 < primary <= 2 * MiB, f"{primary / MiB:.2f} MiB fetched for the primary header"
    assert 0 < extension <= 2 * MiB, f"{extension / MiB:.2f} MiB fetched for the extension's header and data"


def test_readahead_asks_for_large_parts_on_a_fast_link(mount, server, sample):
    rel = made_up_file(server, sample, 64 * MiB)
    m = mount(sample.url(server.base_url), "--connections", "8")
    os.stat(m.path / rel)
    with open(m.path / rel, "rb") as f:  # loopback: one stream is fast, so few requests, each of several blocks
        read_sequentially(f, 0, 18 * MiB, MiB)
    largest = max(last + 1 - first for first, last in ranges_asked(server, "huge.bin"))
    assert largest >= 4 * MiB, f"largest readahead request {largest / MiB:.0f} MiB"


def test_readahead_goes_parallel_on_a_slow_link(mount, server, sample):
    rel = made_up_file(server, sample, 64 * MiB)
    m = mount(sample.url(server.base_url), "--connections", "8")
    os.stat(m.path / rel)
    server.faults.slow_chunk_delay = 0.01  # each connection sends 64 KiB per 10 ms: about 6 MB/s
    with open(m.path / rel, "rb") as f:
        read_sequentially(f, 0, 24 * MiB, MiB)
    assert server.sending_peak >= 5, f"at most {server.sending_peak} bodies sent at once"


def test_a_listing_change_shows_after_the_ttl(mount, server, sample):
    m = mount(sample.url(server.base_url), "--listing-ttl", "2")
    before = os.listdir(m.path / "odd names" / "empty folder")
    assert before == []
    listing = [{"name": "new.fits", "type": "file", "size": 10, "mtime": MTIME}]
    server.faults.listing_body = {job_path(sample, "odd names/empty folder/json"): json.dumps(listing).encode()}
    changed = time.monotonic()
    assert wait_for(lambda: os.listdir(m.path / "odd names" / "empty folder") == ["new.fits"], 10)
    assert time.monotonic() - changed <= 2 + 3  # the TTL, the kernel's one-second caches, a busy machine


def test_a_block_is_fetched_once_however_many_read_it_at_once(mount, server, sample):
    """O_DIRECT: each read reaches desfs (the kernel's page cache would merge them itself)."""
    rel = made_up_file(server, sample, 8 * MiB)
    m = mount(sample.url(server.base_url), "--readahead", "0")
    os.stat(m.path / rel)
    server.faults.slow_chunk_delay = 0.005  # each block takes ~80 ms: the readers meet while it comes
    barrier = threading.Barrier(8)
    wrong = []

    def reader(i):
        fd = os.open(m.path / rel, os.O_RDONLY | os.O_DIRECT)
        try:
            for block in range(8):
                barrier.wait(timeout=30)
                offset = block * MiB + i * 4096 * (block > 0)  # (from the file's start on: whole blocks, no pieces)
                if os.pread(fd, 65536, offset) != pattern_bytes(offset, offset + 65536):
                    wrong.append((i, block))
        finally:
            os.close(fd)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not wrong
    asked = ranges_asked(server, "huge.bin")
    assert sorted(asked) == [(b * MiB, (b + 1) * MiB - 1) for b in range(8)], asked


def test_a_walk_lists_ahead_in_parallel_one_request_per_folder(mount, server, sample):
    m = mount(sample.url(server.base_url))
    server.reset()
    server.faults.listing_delay = 0.1  # a far server: a walk that waits for each listing in turn is slow
    out = subprocess.run(["ls", "-R", str(m.path)], capture_output=True, text=True, check=True, timeout=60).stdout
    assert "DESJ022640.4160-154120.0040_r.fits" in out
    folders = [r for r, d, f in os.walk(sample.cutout_dir) if not os.path.basename(r).startswith(".")]
    with server._log_lock:
        listings = [p for method, p, _ in server.requests if p.endswith("/json")]
    assert len(listings) == len(set(listings)) == len(folders) - 1, listings  # the root's was cached at mount
    assert server.sending_peak >= 2, "listings were fetched one after the other"


@pytest.mark.parametrize("options, ahead", [(("--readahead", "0"), 0), (("--cache-size", "16M"), 4 * MiB)],
                         ids=["off", "a-quarter-of-the-cache"])
def test_readahead_window_limits(mount, server, sample, options, ahead):
    """`--readahead 0` fetches nothing ahead; the window is at most a quarter of `--cache-size`."""
    rel = made_up_file(server, sample, 64 * MiB)
    m = mount(sample.url(server.base_url), *options)
    os.stat(m.path / rel)
    set_kernel_readahead(m.path, 128)
    with open(m.path / rel, "rb", buffering=0) as f:
        read_sequentially(f, 0, 24 * MiB, MiB)
        quiet(server)
    fetched = max(last + 1 for _, last in ranges_asked(server, "huge.bin"))
    # what the kernel reads ahead itself (128 KiB) rounds up to one block more
    assert fetched - 24 * MiB <= ahead + MiB, f"{(fetched - 24 * MiB) / MiB:.1f} MiB fetched ahead"
    assert fetched - 24 * MiB >= (ahead // 2 if ahead else 0)


def test_a_cold_random_read_costs_one_short_request_and_reading_on_turns_to_whole_blocks(mount, server, sample):
    """A read that jumped inside a file fetches about what it asked (64 KiB pieces, one request), not a
    whole block; once the reading there turns sequential, whole blocks again."""
    rel = made_up_file(server, sample, 64 * MiB)
    m = mount(sample.url(server.base_url))
    os.stat(m.path / rel)
    set_kernel_readahead(m.path, 128)
    with open(m.path / rel, "rb", buffering=0) as f:
        for offset in (37 * MiB + 4096, 11 * MiB + 192 * 1024, 50 * MiB - 32 * 1024):  # the last crosses a block edge
            before = len(ranges_asked(server, "huge.bin"))
            assert os.pread(f.fileno(), 65536, offset) == pattern_bytes(offset, offset + 65536)
            quiet(server)
            asked = ranges_asked(server, "huge.bin")[before:]
            assert len(asked) == 1, asked
            first, last = asked[0]
            assert first <= offset and last + 1 >= offset + 65536 and last + 1 - first <= 192 * 1024, asked
        before = len(ranges_asked(server, "huge.bin"))
        read_sequentially(f, 20 * MiB, 22 * MiB)
        quiet(server)
    assert any(last + 1 - first >= MiB for first, last in ranges_asked(server, "huge.bin")[before:])
