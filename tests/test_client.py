"""The HTTP layer against the in-process DES-like server, with faults."""

import errno
import os
import time

import pytest

from desfs.client import Client
from desfs.errors import AccessDenied, BadListing, NotFound, ServerError, Stale, Timeout
from desfs.listing import Entry

from conftest import BIG_SIZE, ODD_NAMES


@pytest.fixture
def client(server, sample):
    return Client(sample.url(server.base_url), timeout=2, retries=3, backoff=0.01)


def entry_of(client, path):
    folder, _, name = path.rpartition("/")
    return {e.name: e for e in client.list_dir(folder or "/")}[name]


def test_listing_of_job_root(client, sample):
    names = [e.name for e in client.list_dir("/")]
    assert names[:3] == ["DES0226-1541", "DES0305-3415", "odd names"]  # folders first
    assert f"positions_{sample.cutout_job}.csv" in names


def test_odd_names_round_trip(client, sample):
    listed = {e.name: e for e in client.list_dir("/odd names")}
    assert ".hidden" not in listed and "a fifo" not in listed
    for name in ODD_NAMES + ["empty.dat"]:
        e = listed[name]
        with open(os.path.join(sample.cutout_dir, "odd names", name), "rb") as f:
            assert client.read_range(f"/odd names/{name}", 0, e.size, e) == f.read()
    assert [e.name for e in client.list_dir("/odd names/json")] == ["inside json.txt"]
    assert [e.name for e in client.list_dir("/odd names/sub #2?")] == ["deep%20file.txt"]


def test_url_encoding_is_per_segment(client):
    assert client.url("/a b/c#d?/e%f+g") .endswith("/a%20b/c%23d%3F/e%25f%2Bg")
    assert client.url("/x", folder=True).endswith("/x/")


def test_range_reads_are_exact(client, sample, server):
    e = entry_of(client, "/big.bin")
    data = open(os.path.join(sample.cutout_dir, "big.bin"), "rb").read()
    assert client.read_range("/big.bin", 100, 200, e) == data[100:200]
    assert client.read_range("/big.bin", BIG_SIZE - 10, BIG_SIZE, e) == data[-10:]
    ranges = [r for m, p, r in server.requests if p.endswith("big.bin")]
    assert ranges == ["bytes=100-199", f"bytes={BIG_SIZE - 10}-{BIG_SIZE - 1}"]


def test_missing_folder_and_file_are_enoent_without_retry(client, server):
    with pytest.raises(NotFound) as info:
        client.list_dir("/no such folder")
    assert info.value.errno == errno.ENOENT
    with pytest.raises(NotFound):
        client.read_range("/nope.fits", 0, 10, Entry("nope.fits", False, 10, 0))
    assert len(server.requests) == 2


def test_user_and_type_folders_are_not_listable(server, sample):
    user = Client(f"{server.base_url}{sample.user}/")
    with pytest.raises(NotFound):
        user.list_dir("/")
    with pytest.raises(NotFound):
        user.list_dir("/cutout")


def test_403_is_eacces(client, server):
    server.faults.status, server.faults.status_count = 403, 1
    with pytest.raises(AccessDenied) as info:
        client.list_dir("/")
    assert info.value.errno == errno.EACCES


def test_5xx_burst_is_retried(client, server):
    server.faults.status, server.faults.status_count = 503, 3
    assert client.list_dir("/")
    assert server.count(suffix="/json") == 4


def test_5xx_beyond_retries_is_eio(client, server):
    server.faults.status, server.faults.status_count = 502, 10
    with pytest.raises(ServerError) as info:
        client.list_dir("/")
    assert info.value.errno == errno.EIO and "502" in str(info.value)
    assert server.count(suffix="/json") == 4


def test_retry_after_is_honoured(client, server):
    server.faults.status, server.faults.status_count, server.faults.retry_after = 429, 1, "1"
    started = time.monotonic()
    client.list_dir("/")
    assert time.monotonic() - started >= 1.0


def test_stall_before_headers_times_out(client, server):
    server.faults.stall, server.faults.stall_count, server.faults.stall_seconds = "before-headers", 1, 10
    started = time.monotonic()
    with pytest.raises(Timeout) as info:
        client.list_dir("/")
    assert info.value.errno == errno.ETIMEDOUT
    assert time.monotonic() - started < 4


def test_stall_mid_body_times_out(client, server):
    e = entry_of(client, "/big.bin")
    server.reset()
    server.faults.stall, server.faults.stall_count, server.faults.stall_seconds = "after-headers", 1, 10
    started = time.monotonic()
    with pytest.raises(Timeout):
        client.read_range("/big.bin", 0, 1000, e)
    assert time.monotonic() - started < 4


@pytest.mark.parametrize("fault", ["truncate_count", "reset_count"])
def test_cut_body_is_resumed_never_short(client, server, sample, fault):
    e = entry_of(client, "/big.bin")
    data = open(os.path.join(sample.cutout_dir, "big.bin"), "rb").read()
    setattr(server.faults, fault, 2)
    assert client.read_range("/big.bin", 1000, 1_001_000, e) == data[1000:1_001_000]
    ranges = [r for m, p, r in server.requests if p.endswith("big.bin")]
    assert len(ranges) == 3 and ranges[0] == "bytes=1000-1000999"
    if fault == "truncate_count":  # an RST may discard bytes in flight; a clean cut keeps them
        assert int(ranges[1].split("=")[1].split("-")[0]) > 1000  # resumed, not restarted


def test_server_ignoring_range_still_gives_right_bytes(client, server, sample, caplog):
    e = entry_of(client, "/big.bin")
    data = open(os.path.join(sample.cutout_dir, "big.bin"), "rb").read()
    server.faults.ignore_range = True
    assert client.read_range("/big.bin", 5000, 6000, e) == data[5000:6000]
    assert client.read_range("/big.bin", 7000, 7100, e) == data[7000:7100]
    assert caplog.text.count("ignores Range") == 1


def test_wrong_content_range_is_eio_not_wrong_bytes(client, server):
    e = entry_of(client, "/big.bin")
    server.faults.shift_content_range = 10
    with pytest.raises(ServerError):
        client.read_range("/big.bin", 0, 100, e)


def test_changed_file_is_stale(client, sample):
    e = entry_of(client, "/summary.json")
    older = Entry(e.name, False, e.size, e.mtime - 100)  # what a listing said before the file changed
    with pytest.raises(Stale) as info:
        client.read_range("/summary.json", 0, 10, older)
    assert info.value.errno == errno.ESTALE
    other_size = Entry(e.name, False, e.size + 1, e.mtime)
    with pytest.raises(Stale):
        client.read_range("/summary.json", 0, 10, other_size)


def test_html_instead_of_json_is_bad_listing(client, server):
    server.faults.html_for_json = True
    with pytest.raises(BadListing):
        client.list_dir("/")


def test_unreachable_server_is_eio_quickly():
    from conftest import free_port

    c = Client(f"http://127.0.0.1:{free_port()}/files-desaccess/u/cutout/x/", timeout=2, retries=1, backoff=0.01)
    with pytest.raises(ServerError) as info:
        c.list_dir("/")
    assert info.value.errno == errno.EIO and "connect" in str(info.value)


def test_head_stat(client, sample):
    e = client.stat("/summary.json")
    assert e.size == os.path.getsize(os.path.join(sample.cutout_dir, "summary.json")) and e.mtime > 0


class IntoSink:
    """A `write` that offers its own memory (room/filled), as the block cache's does."""

    def __init__(self, size, piece=70_000):
        self.buf, self.have, self.piece = bytearray(size), 0, piece

    def room(self):
        return memoryview(self.buf)[self.have:self.have + self.piece]

    def filled(self, n):
        self.have += n

    def __call__(self, chunk):  # never used when room() is there
        raise AssertionError("fetch copied through write() although the sink offers room()")


def test_fetch_reads_straight_into_the_callers_memory_and_resumes(client, server, sample):
    e = entry_of(client, "/big.bin")
    data = open(os.path.join(sample.cutout_dir, "big.bin"), "rb").read()
    sink = IntoSink(1_000_000)
    server.faults.truncate_count = 2
    client.fetch("/big.bin", 3000, 1_003_000, e, sink)
    assert sink.have == 1_000_000 and sink.buf == data[3000:1_003_000]


def test_range_reads_keep_one_connection_alive(client, server, sample, monkeypatch):
    e = entry_of(client, "/big.bin")
    accepted = []
    process = server.process_request
    monkeypatch.setattr(server, "process_request", lambda req, addr: (accepted.append(addr), process(req, addr)))
    for i in range(4):
        client.fetch("/big.bin", i * 100_000, (i + 1) * 100_000, e, IntoSink(100_000))
        client.read_range("/big.bin", i, i + 10, e)
    assert accepted == []  # the listing's connection serves them all: bodies read beneath urllib3 give it back
