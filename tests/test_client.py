"""The HTTP layer against the in-process DES-like server, with faults."""

import errno
import json
import os
import time
from email.utils import formatdate

import pytest

from desfs.client import Client
from desfs.errors import AccessDenied, BadListing, NotFound, ServerError, Stale, Timeout, TooLarge
from desfs.listing import Entry

from conftest import BIG_SIZE, ODD_NAMES, read_range


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
            assert read_range(client, f"/odd names/{name}", 0, e.size, e) == f.read()
    assert [e.name for e in client.list_dir("/odd names/json")] == ["inside json.txt"]
    assert [e.name for e in client.list_dir("/odd names/sub #2?")] == ["deep%20file.txt"]


def test_url_encoding_is_per_segment(client):
    assert client.url("/a b/c#d?/e%f+g") .endswith("/a%20b/c%23d%3F/e%25f%2Bg")
    assert client.url("/x", folder=True).endswith("/x/")


def test_range_reads_are_exact(client, sample, server):
    e = entry_of(client, "/big.bin")
    data = open(os.path.join(sample.cutout_dir, "big.bin"), "rb").read()
    assert read_range(client, "/big.bin", 100, 200, e) == data[100:200]
    assert read_range(client, "/big.bin", BIG_SIZE - 10, BIG_SIZE, e) == data[-10:]
    ranges = [r for m, p, r in server.requests if p.endswith("big.bin")]
    assert ranges == ["bytes=100-199", f"bytes={BIG_SIZE - 10}-{BIG_SIZE - 1}"]


def test_missing_folder_and_file_are_enoent_without_retry(client, server):
    with pytest.raises(NotFound) as info:
        client.list_dir("/no such folder")
    assert info.value.errno == errno.ENOENT
    with pytest.raises(NotFound):
        read_range(client, "/nope.fits", 0, 10, Entry("nope.fits", False, 10, 0))
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
        read_range(client, "/big.bin", 0, 1000, e)
    assert time.monotonic() - started < 4


@pytest.mark.parametrize("fault", ["truncate_count", "reset_count"])
def test_cut_body_is_resumed_never_short(client, server, sample, fault):
    e = entry_of(client, "/big.bin")
    data = open(os.path.join(sample.cutout_dir, "big.bin"), "rb").read()
    setattr(server.faults, fault, 2)
    assert read_range(client, "/big.bin", 1000, 1_001_000, e) == data[1000:1_001_000]
    ranges = [r for m, p, r in server.requests if p.endswith("big.bin")]
    assert len(ranges) == 3 and ranges[0] == "bytes=1000-1000999"
    if fault == "truncate_count":  # an RST may discard bytes in flight; a clean cut keeps them
        assert int(ranges[1].split("=")[1].split("-")[0]) > 1000  # resumed, not restarted


def test_server_ignoring_range_still_gives_right_bytes(client, server, sample, caplog):
    e = entry_of(client, "/big.bin")
    data = open(os.path.join(sample.cutout_dir, "big.bin"), "rb").read()
    server.faults.ignore_range = True
    assert read_range(client, "/big.bin", 5000, 6000, e) == data[5000:6000]
    assert read_range(client, "/big.bin", 7000, 7100, e) == data[7000:7100]
    assert caplog.text.count("ignores Range") == 1


def test_wrong_content_range_is_eio_not_wrong_bytes(client, server):
    e = entry_of(client, "/big.bin")
    server.faults.shift_content_range = 10
    with pytest.raises(ServerError):
        read_range(client, "/big.bin", 0, 100, e)


def test_changed_file_is_stale(client, sample):
    e = entry_of(client, "/summary.json")
    older = Entry(e.name, False, e.size, e.mtime - 100)  # what a listing said before the file changed
    with pytest.raises(Stale) as info:
        read_range(client, "/summary.json", 0, 10, older)
    assert info.value.errno == errno.ESTALE
    other_size = Entry(e.name, False, e.size + 1, e.mtime)
    with pytest.raises(Stale) as info:
        read_range(client, "/summary.json", 0, 10, other_size)
    assert str(info.value) == (f"file changed on the server (size {e.size}, expected {e.size + 1}): "
                               f"{client.url('/summary.json')}")


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
        read_range(client, "/big.bin", i, i + 10, e)
    assert accepted == []  # the listing's connection serves them all: bodies read beneath urllib3 give it back


# -- the small pieces, each on its own ----------------------------------------------------------

def test_content_range_parsing():
    from desfs.client import _parse_content_range

    assert _parse_content_range("bytes 0-9/100", "u") == (0, 100)
    assert _parse_content_range("bytes 5-9/*", "u") == (5, None)
    for bad in (None, "", "items 0-9/100", "bytes x-9/100", "bytes 0-9/many", "bytes 0-9/100/5"):
        with pytest.raises(ServerError) as info:
            _parse_content_range(bad, "http://h/f")
        assert str(info.value) == f"206 answer with a bad Content-Range {bad!r}: http://h/f"


def test_retry_after_is_seconds_or_a_date_within_bounds():
    from email.utils import formatdate

    from desfs.client import RETRY_AFTER_MAX, _retry_after

    assert _retry_after(None) is None and _retry_after("") is None
    assert _retry_after("2.5") == 2.5 and _retry_after("0") == 0.0
    assert _retry_after("-3") == 0.0 and _retry_after("3600") == RETRY_AFTER_MAX == 30.0
    assert 5 <= _retry_after(formatdate(time.time() + 10, usegmt=True)) <= 10
    assert _retry_after(formatdate(time.time() - 100, usegmt=True)) == 0.0
    assert _retry_after("soon, please") == 0.0  # not a date either: try again at once


def test_http_time():
    from desfs.client import _http_time

    assert _http_time("Mon, 06 Jul 2020 15:21:33 GMT") == 1594048893.0
    assert _http_time(None) == 0.0 and _http_time("") == 0.0 and _http_time("yesterday") == 0.0


def test_reason_names_the_cause_in_a_few_words():
    from desfs.client import _reason

    assert _reason(OSError("[Errno 111] Connection refused")) == "Connection refused"
    assert _reason(OSError("read timed out. (read timeout=2)")) == "timed out"
    assert _reason(OSError("IncompleteRead(10 bytes read)")) == "IncompleteRead"
    assert _reason(ValueError("something else entirely")) == "ValueError"
    for marker in ("Connection refused", "Name or service not known", "Connection reset", "timed out",
                   "Temporary failure in name resolution", "No route to host", "IncompleteRead",
                   "certificate verify failed"):
        assert _reason(OSError(f"HTTPConnectionPool(host='x'): [Errno 1] {marker} (detail)")) == marker


def test_timeouts_are_found_however_deeply_wrapped():
    import socket

    from desfs.client import _is_timeout

    def wrapped(inner, depth):
        exc = inner
        for i in range(depth):
            outer = OSError(exc) if i % 2 else RuntimeError("wrapper")
            outer.__cause__ = None if i % 2 else exc
            exc = outer
        return exc

    assert _is_timeout(socket.timeout("x")) and _is_timeout(OSError("The read operation timed out"))
    assert _is_timeout(wrapped(TimeoutError(), 9))
    assert not _is_timeout(wrapped(TimeoutError(), 10))  # a chain that long is not followed
    assert not _is_timeout(wrapped(ConnectionResetError("reset"), 3)) and not _is_timeout(None)


def test_base_url_and_session_settings(monkeypatch):
    from desfs import __version__

    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    c = Client("http://far.example/files/u/cutout/j", connections=5, timeout=7, retries=2, backoff=0.5)
    assert c.base_url == "http://far.example/files/u/cutout/j/"
    assert (c.timeout, c.retries, c.backoff) == (7, 2, 0.5)
    assert c.url("/") == c.base_url and c.url("/", folder=True) == c.base_url
    assert c.url("/a//b/", folder=True) == c.base_url + "a/b/"
    assert c.session.headers["User-Agent"] == f"desfs/{__version__}" and c.session.trust_env is False
    assert c.session.get_adapter(c.base_url)._pool_maxsize == 5
    assert c.session.get_adapter("https://x/")._pool_maxsize == 5
    assert c.session.get_adapter(c.base_url).max_retries.total == 0  # retries are desfs's own
    assert c.session.verify is True
    with pytest.raises(ValueError, match="^not an http\\(s\\) URL: ftp://far.example/x/$"):
        Client("ftp://far.example/x")
    assert Client("http://far.example/x/").base_url == "http://far.example/x/"
    plain = Client("http://far.example/x/")
    assert (plain.timeout, plain.retries, plain.backoff) == (30.0, 3, 0.25)
    assert plain.session.get_adapter(plain.base_url)._pool_maxsize == 16
    assert plain.session.get_adapter(plain.base_url)._pool_connections == 4
    assert Client("https://far.example/x/", ca_bundle="/my/ca.pem").session.verify == "/my/ca.pem"
    monkeypatch.setenv("CURL_CA_BUNDLE", "/curl/ca.pem")
    assert Client("https://far.example/x/").session.verify == "/curl/ca.pem"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/requests/ca.pem")
    assert Client("https://far.example/x/").session.verify == "/requests/ca.pem"
    monkeypatch.setenv("http_proxy", "http://proxy.example:3128")
    assert Client("http://far.example/x/").session.proxies["http"] == "http://proxy.example:3128"
    assert "http" not in Client("http://127.0.0.1/x/").session.proxies  # NO_PROXY holds 127.0.0.1


def test_statuses_map_to_errnos_with_one_clear_line(client, server):
    url = client.url("/", folder=True) + "json"
    cases = [(404, NotFound, "not found on the server (HTTP 404)"),
             (410, NotFound, "not found on the server (HTTP 410)"),
             (401, AccessDenied, "access denied by the server (HTTP 401)"),
             (403, AccessDenied, "access denied by the server (HTTP 403)"),
             (416, Stale, "range not satisfiable: the file is shorter than listed"),
             (300, ServerError, "unexpected answer HTTP 300"), (418, ServerError, "unexpected answer HTTP 418")]
    for status, kind, message in cases:
        server.reset()
        server.faults.status, server.faults.status_count = status, 1
        with pytest.raises(kind) as info:
            client.list_dir("/")
        assert type(info.value) is kind and str(info.value) == f"{message}: {url}"
        assert server.count(suffix="/json") == 1  # none of them is retried
    for status in (429, 500, 502, 503, 504):
        server.reset()
        server.faults.status, server.faults.status_count = status, 1
        assert client.list_dir("/")
        assert server.count(suffix="/json") == 2


def test_retries_back_off_exponentially_and_say_how_many_tries(client, server, monkeypatch, caplog):
    import types

    import desfs.client as client_module

    caplog.set_level("INFO", logger="desfs.client")
    slept = []
    monkeypatch.setattr(client_module, "time", types.SimpleNamespace(
        sleep=slept.append, monotonic=time.monotonic, time=time.time))
    c = Client(client.base_url, timeout=2, retries=3, backoff=0.5)
    server.faults.status, server.faults.status_count = 503, 10
    with pytest.raises(ServerError) as info:
        c.list_dir("/")
    assert str(info.value) == f"server answered HTTP 503 (after 4 tries): {c.url('/', folder=True)}json"
    assert len(slept) == 3
    for delay, base in zip(slept, (0.5, 1.0, 2.0), strict=True):
        assert base <= delay <= base * 1.25  # with up to a quarter of jitter
    url = c.url("/", folder=True) + "json"
    assert [r.getMessage() for r in caplog.records] == [
        f"retrying GET {url} in {delay:.2f}s: server answered HTTP 503" for delay in slept]
    slept.clear()
    server.reset()
    server.faults.status, server.faults.status_count, server.faults.retry_after = 503, 1, "3"
    assert c.list_dir("/")
    assert len(slept) == 1 and 3 <= slept[0] <= 3.75  # the server's word, not the backoff
    none = Client(client.base_url, timeout=2, retries=0, backoff=0.5)
    server.reset()
    server.faults.status, server.faults.status_count = 503, 1
    with pytest.raises(ServerError, match=r"\(after 1 tries\)"):
        none.list_dir("/")


def test_timeouts_say_how_long(client, server):
    server.faults.stall, server.faults.stall_count, server.faults.stall_seconds = "before-headers", 1, 5
    with pytest.raises(Timeout) as info:
        client.list_dir("/")
    assert str(info.value).startswith("no answer within 2 s: ")  # the socket's timeout, before the deadline's
    e = entry_of(client, "/big.bin")
    server.reset()
    server.faults.stall, server.faults.stall_count, server.faults.stall_seconds = "after-headers", 1, 5
    with pytest.raises(Timeout) as info:
        read_range(client, "/big.bin", 0, 1000, e)
    assert str(info.value).startswith("server stopped sending for 2 s: ")


def test_unreachable_server_says_it_cannot_connect():
    from conftest import free_port

    c = Client(f"http://127.0.0.1:{free_port()}/x/", timeout=2, retries=0)
    with pytest.raises(ServerError) as info:
        c.list_dir("/")
    assert str(info.value).startswith("cannot connect (Connection refused) (after 1 tries): ")


def test_listing_too_large(client, server, monkeypatch):
    import desfs.client as client_module

    monkeypatch.setattr(client_module, "LISTING_MAX_BYTES", 100)
    with pytest.raises(TooLarge, match="folder listing larger than 100 bytes of JSON") as info:
        client.list_dir("/")
    assert info.value.errno == errno.EFBIG


def test_stat_names_the_file_and_gives_its_listed_size_and_time(client):
    for path in ("/summary.json", "/odd names/sub #2?/deep%20file.txt", "/odd names/empty.dat"):
        assert client.stat(path) == entry_of(client, path)


def test_range_checks_and_empty_ranges(client, server):
    e = entry_of(client, "/big.bin")
    server.reset()
    for start, stop in ((-1, 10), (10, 5), (0, BIG_SIZE + 1)):
        with pytest.raises(ValueError, match=r"outside a file of"):
            read_range(client, "/big.bin", start, stop, e)
    assert read_range(client, "/big.bin", 7, 7, e) == b"" and read_range(client, "/big.bin", 0, 0, e) == b""
    assert read_range(client, "/big.bin", BIG_SIZE - 1, BIG_SIZE, e)
    assert server.requests and len(server.requests) == 1  # empty ranges cost no request


def test_range_requests_carry_if_range_and_identity(client, server):
    e = entry_of(client, "/big.bin")
    server.reset()
    read_range(client, "/big.bin", 0, 10, e)
    read_range(client, "/big.bin", 0, 10, Entry(e.name, False, e.size, 0.0))  # no time known: no If-Range
    first, second = server.headers_seen
    assert first["Range"] == "bytes=0-9" and first["Accept-Encoding"] == "identity"
    assert first["If-Range"] == formatdate(e.mtime, usegmt=True) and "If-Range" not in second


def test_whole_answers_are_checked_against_the_listing(client, server, sample):
    e = entry_of(client, "/summary.json")
    data = open(os.path.join(sample.cutout_dir, "summary.json"), "rb").read()
    server.faults.ignore_range = True
    within = Entry(e.name, False, e.size, e.mtime + 0.5)  # the listing's time, to the server's second
    assert read_range(client, "/summary.json", 3, 30, within) == data[3:30]
    for changed in (Entry(e.name, False, e.size, e.mtime + 1), Entry(e.name, False, e.size - 1, e.mtime)):
        with pytest.raises(Stale) as info:
            read_range(client, "/summary.json", 0, 10, changed)
        assert str(info.value) == f"file changed on the server since it was listed: {client.url('/summary.json')}"
    assert read_range(client, "/summary.json", 0, 10, Entry(e.name, False, e.size, 0.0)) == data[:10]


def test_warnings_are_given_once_per_kind(client, server, caplog):
    e = entry_of(client, "/big.bin")
    server.faults.shift_content_range = 10
    for _ in range(2):
        with pytest.raises(ServerError, match="server answered bytes from 10, asked for 0"):
            read_range(client, "/big.bin", 0, 100, e)
    url = client.url("/big.bin")
    assert [r.getMessage() for r in caplog.records] == [f"server answered a wrong Content-Range for {url}"]


def test_json_caller_posts_forms_sends_tokens_and_hands_back_statuses():
    from desfs.client import JsonCaller

    from fakeapi import FakeApi

    api = FakeApi({"u": "pw"}, {"u": []}).start()
    try:
        defaults = JsonCaller(api.url)._http
        assert (defaults.timeout, defaults.retries, defaults.backoff) == (30.0, 3, 0.25)
        caller = JsonCaller(api.url, timeout=2, retries=1, backoff=0.01, ca_bundle="/my/ca.pem")
        http = caller._http
        assert (http.timeout, http.retries, http.backoff, http.session.verify) == (2, 1, 0.01, "/my/ca.pem")
        assert http.session.get_adapter(api.url)._pool_maxsize == 4
        caller = JsonCaller(api.url, timeout=2, retries=1, backoff=0.01)
        status, body = caller.call("POST", api.url + "/login", {"username": "u", "password": "pw"})
        assert status == 200 and body["status"] == "ok" and body["username"] == "u"
        token = body["token"]
        assert caller.call("POST", api.url + "/login", {"username": "u", "password": "no"})[0] == 401
        status, body = caller.call("GET", api.url + "/job/list", token=token)
        assert (status, body["status"], body["jobs"]) == (200, "ok", []) and api.auth_seen[-1] == f"Bearer {token}"
        assert caller.call("GET", api.url + "/job/list")[1]["message"] == "Missing authorization"
        assert api.auth_seen[-1] == ""  # no token, no Authorization header
        assert caller.call("GET", api.url + "/nothing", token=token)[0] == 404
        api.must_change_password.add("u")
        assert caller.call("POST", api.url + "/login", {"username": "u", "password": "pw"})[0] == 406
        api.down = True
        with pytest.raises(ServerError, match=r"HTTP 503 \(after 2 tries\)"):
            caller.call("GET", api.url + "/job/list", token=token)
    finally:
        api.stop()


def test_json_caller_wants_json_whatever_the_status(client, server):
    from desfs.client import JsonCaller

    caller = JsonCaller(client.base_url, timeout=2, retries=0)
    url = client.url("/", folder=True) + "json"
    status, body = caller.call("GET", url)
    assert status == 200 and [e["name"] for e in body["value"]][:2] == ["DES0226-1541", "DES0305-3415"]
    for status in (400, 401, 403, 404, 406):  # handed back to the caller, who needs the JSON of it
        server.reset()
        server.faults.status, server.faults.status_count = status, 1
        with pytest.raises(ServerError) as info:
            caller.call("GET", url)
        assert type(info.value) is ServerError
        assert str(info.value) == f"the API answered HTTP {status} without JSON: {url}"


def test_answers_are_read_beneath_urllib3_or_through_it_alike(client):
    import http.client
    import types

    from desfs.client import _plain_body, _urllib3_reader

    e = entry_of(client, "/big.bin")
    resp = client.session.get(client.url("/big.bin"), headers={"Range": "bytes=0-99999"}, stream=True)
    with resp:
        body = _plain_body(resp)
        assert isinstance(body, http.client.HTTPResponse)
        buf = memoryview(bytearray(60_000))
        assert body.readinto(buf) > 0
    resp = client.session.get(client.url("/big.bin"), headers={"Range": "bytes=0-99999"}, stream=True)
    with resp:
        read_into = _urllib3_reader(resp)
        got = bytearray()
        buf = memoryview(bytearray(30_000))
        while n := read_into(buf):
            got += buf[:n]
    assert bytes(got) == read_range(client, "/big.bin", 0, 100_000, e)
    assert _plain_body(types.SimpleNamespace(raw=types.SimpleNamespace(_fp=object()))) is None
    assert _plain_body(types.SimpleNamespace(raw=object())) is None


class _OddServer:
    """A server that answers in ways the DES server never does: HEAD without Content-Length, a
    206 with a Content-Range that is not one, listings chunked or compressed."""

    def __init__(self):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.send_response(200)
                self.send_header("Last-Modified", "Mon, 06 Jul 2020 15:21:33 GMT")
                self.send_header("Connection", "close")
                self.end_headers()

            def do_GET(self):
                listing = b'[{"name": "a", "type": "file", "size": 1}, {"name": "b", "type": "directory"}]'
                if self.path.endswith("/chunked/json"):  # no Content-Length: the end of the chunks tells
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for part in (listing[:30], listing[30:]):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                elif self.path.endswith("/gzip/json"):  # Content-Length counts the compressed bytes
                    import gzip

                    body = gzip.compress(listing + b" " * 500)
                    self.send_response(200)
                    self.send_header("Content-Encoding", "gzip")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif self.path.endswith("/gzipped-range"):  # compressed although identity was asked for
                    import gzip

                    body = gzip.compress(b"hello, world " * 10)
                    self.send_response(206)
                    self.send_header("Content-Encoding", "gzip")
                    self.send_header("Content-Range", f"bytes 0-{len(body) - 1}/{len(body)}")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif self.path.endswith("/reset"):  # a tenth of the body, then a reset (RST, no FIN)
                    import socket
                    import struct
                    import time

                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"r" * 100)
                    self.wfile.flush()
                    time.sleep(0.2)  # the client has read the headers and waits for the rest
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.rfile.close()  # it holds the socket open
                    self.connection.close()
                else:
                    self.send_response(206)
                    self.send_header("Content-Range", "bytes x")
                    self.send_header("Content-Length", "10")
                    self.end_headers()
                    self.wfile.write(b"0123456789")

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/job/"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_stat_without_a_length_and_a_range_answer_that_makes_no_sense():
    odd = _OddServer()
    try:
        c = Client(odd.url, timeout=2, retries=0)
        for path in ("/a/XX", "/XX", "/"):  # no length given: a server error, never an empty file
            with pytest.raises(ServerError) as info:
                c.stat(path)
            assert str(info.value) == f"the server gave no size (Content-Length) for the file: {c.url(path)}"
        with pytest.raises(ServerError) as info:
            read_range(c, "/f", 0, 10, Entry("f", False, 10, 0.0))
        assert str(info.value) == f"206 answer with a bad Content-Range 'bytes x': {odd.url}f"
    finally:
        odd.close()


def test_a_body_cut_short_says_how_many_bytes_are_missing(client, server):
    e = entry_of(client, "/big.bin")
    c = Client(client.base_url, timeout=2, retries=1, backoff=0.01)
    server.reset()
    server.faults.truncate_count = 5  # every answer stops half way: 50 000 bytes in, then 25 000
    with pytest.raises(ServerError) as info:
        read_range(c, "/big.bin", 0, 100_000, e)
    assert str(info.value) == f"body cut short (25000 bytes missing) (after 2 tries): {c.url('/big.bin')}"


def test_a_whole_answer_that_ends_before_the_range_is_retried_then_eio(client, server):
    e = entry_of(client, "/big.bin")
    c = Client(client.base_url, timeout=2, retries=1, backoff=0.01)
    server.reset()
    server.faults.ignore_range, server.faults.truncate_count = True, 5  # half the file, then the end
    with pytest.raises(ServerError) as info:
        read_range(c, "/big.bin", BIG_SIZE - 100, BIG_SIZE, e)
    assert str(info.value) == f"body ended before the requested range (after 2 tries): {c.url('/big.bin')}"


def test_wrong_content_range_names_both_offsets_and_the_url(client, server):
    e = entry_of(client, "/big.bin")
    server.faults.shift_content_range = 10
    with pytest.raises(ServerError) as info:
        read_range(client, "/big.bin", 50, 100, e)
    assert str(info.value) == f"server answered bytes from 60, asked for 50: {client.url('/big.bin')}"


def test_answers_are_read_beneath_urllib3_and_through_it_when_they_must(client, server, sample, monkeypatch):
    import desfs.client as client_module

    e = entry_of(client, "/big.bin")
    data = open(os.path.join(sample.cutout_dir, "big.bin"), "rb").read()

    def no_fallback(resp):
        raise AssertionError("a plain http answer was read through urllib3")

    monkeypatch.setattr(client_module, "_urllib3_reader", no_fallback)
    assert read_range(client, "/big.bin", 10, 300_010, e) == data[10:300_010]
    monkeypatch.undo()
    monkeypatch.setattr(client_module, "_plain_body", lambda resp: None)  # another transport beneath requests
    server.faults.truncate_count = 1
    assert read_range(client, "/big.bin", 10, 300_010, e) == data[10:300_010]
    server.faults.ignore_range = True
    assert read_range(client, "/big.bin", 70_000, 70_100, e) == data[70_000:70_100]


def test_a_listing_of_many_chunks_is_read_whole(client, server):
    from urllib.parse import unquote, urlsplit

    items = [{"name": f"f{i:06d}.fits", "type": "file", "size": i, "mtime": "Mon, 06 Jul 2020 15:21:33 GMT"}
             for i in range(20_000)]
    body = json.dumps(items).encode()
    assert len(body) > 4 * 256 * 1024  # several of the chunks it is read in
    path = unquote(urlsplit(client.url("/many", folder=True) + "json").path)
    server.faults.listing_body[path] = body
    entries = client.list_dir("/many")
    assert len(entries) == 20_000 and entries[-1] == Entry("f019999.fits", False, 19_999, 1594048893.0)


def test_every_known_time_goes_in_if_range(client, server):
    e = entry_of(client, "/big.bin")
    server.reset()
    with pytest.raises(Stale):  # 1970, but a time all the same: the server holds another version
        read_range(client, "/big.bin", 0, 10, Entry(e.name, False, e.size, 1.0))
    assert server.headers_seen[0]["If-Range"] == "Thu, 01 Jan 1970 00:00:01 GMT"


def test_listings_chunked_or_compressed_are_read_whole():
    odd = _OddServer()
    try:
        c = Client(odd.url, timeout=2, retries=0)
        for folder in ("/chunked", "/gzip"):
            assert c.list_dir(folder) == [Entry("a", False, 1, 0.0), Entry("b", True, 0, 0.0)]
    finally:
        odd.close()


def test_a_listing_may_be_as_large_as_the_limit_and_no_larger(client, server, monkeypatch):
    import desfs.client as client_module
    from urllib.parse import unquote, urlsplit

    body = json.dumps([{"name": f"f{i}", "type": "file", "size": i} for i in range(100)]).encode()
    url = client.url("/sized", folder=True) + "json"
    server.faults.listing_body[unquote(urlsplit(url).path)] = body
    monkeypatch.setattr(client_module, "LISTING_MAX_BYTES", len(body))
    assert len(client.list_dir("/sized")) == 100
    monkeypatch.setattr(client_module, "LISTING_MAX_BYTES", len(body) - 1)
    with pytest.raises(TooLarge) as info:
        client.list_dir("/sized")
    assert str(info.value) == f"folder listing larger than {len(body) - 1} bytes of JSON: {url}"


def test_skipped_items_are_logged_with_the_listings_url(client, server, caplog):
    from urllib.parse import unquote, urlsplit

    url = client.url("/hostile", folder=True) + "json"
    server.faults.listing_body[unquote(urlsplit(url).path)] = b'[{"name": "..", "type": "directory"}]'
    assert client.list_dir("/hostile") == []
    assert [r.getMessage() for r in caplog.records] == [f"listing {url}: name '..' refused: reserved name"]


def test_redirects_are_followed(client, server, sample):
    from urllib.parse import unquote, urlsplit

    e = entry_of(client, "/summary.json")
    data = open(os.path.join(sample.cutout_dir, "summary.json"), "rb").read()
    moved = unquote(urlsplit(client.url("/moved.json")).path)
    server.faults.redirect = {moved: client.url("/summary.json")}
    assert read_range(client, "/moved.json", 5, 50, e) == data[5:50]


def test_debug_log_has_every_request_and_its_time(client, server, caplog):
    import re

    e = entry_of(client, "/big.bin")
    caplog.set_level("DEBUG", logger="desfs.client")
    server.faults.slow_chunk_delay = 0.05  # 64 KiB every 50 ms: 256 KiB take 150 ms at least
    started = time.monotonic()
    read_range(client, "/big.bin", 0, 256 * 1024, e)
    took = (time.monotonic() - started) * 1000
    url = client.url("/big.bin")
    lines = [r.getMessage() for r in caplog.records if r.name == "desfs.client"]
    assert lines[0] == f"GET {url} bytes=0-262143 -> 206" and len(lines) == 2
    done = re.fullmatch(rf"GET {re.escape(url)} done in (\d+) ms", lines[1])
    assert done and 140 <= int(done[1]) <= took + 1
    caplog.clear()
    client.list_dir("/")
    assert caplog.records[0].getMessage() == f"GET {client.url('/', folder=True)}json  -> 200"


def test_a_url_requests_cannot_use_and_a_tls_failure_are_one_line_errors(server):
    import errno as errnos

    from desfs.errors import DesfsError

    nohost = Client("http:///x/", timeout=2, retries=3)
    with pytest.raises(DesfsError) as info:
        nohost.list_dir("/")
    assert type(info.value) is DesfsError and info.value.errno == errnos.EIO
    assert str(info.value).startswith("invalid URL (") and str(info.value).endswith("): http:///x/json")
    plain = Client(server.base_url.replace("http://", "https://"), timeout=2, retries=3)  # no TLS there
    with pytest.raises(DesfsError) as info:
        plain.list_dir("/")
    assert type(info.value) is DesfsError and str(info.value) == f"TLS error (SSLError): {plain.base_url}json"


def test_a_connection_reset_mid_answer_says_so():
    odd = _OddServer()
    try:
        c = Client(odd.url, timeout=2, retries=0)
        with pytest.raises(ServerError) as info:
            read_range(c, "/reset", 0, 1000, Entry("reset", False, 1000, 0.0))
        assert str(info.value) == f"connection lost mid-answer (Connection reset) (after 1 tries): {odd.url}reset"
    finally:
        odd.close()


def test_range_answers_sent_encoded_are_refused_even_through_urllib3(monkeypatch):
    import gzip

    import desfs.client as client_module

    sent = gzip.compress(b"hello, world " * 10)
    odd = _OddServer()
    try:
        c = Client(odd.url, timeout=2, retries=0)
        entry = Entry("gzipped-range", False, len(sent), 0.0)
        for _transport in ("beneath urllib3", "through urllib3"):  # neither decoded nor taken as file bytes
            with pytest.raises(ServerError) as info:
                read_range(c, "/gzipped-range", 0, len(sent), entry)
            assert str(info.value).startswith("server sent the file encoded (Content-Encoding: gzip)")
            monkeypatch.setattr(client_module, "_plain_body", lambda resp: None)
    finally:
        odd.close()
