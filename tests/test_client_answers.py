"""Client answers that the DES server does not give but a server may (no FUSE): a HEAD of the base
URL itself, a bad Content-Length on a whole answer, and a redirect answered to an API call."""

from __future__ import annotations

import http.server
import threading

import pytest

from desfs.client import Client, JsonCaller
from desfs.errors import ServerError
from desfs.listing import Entry


class Answers:
    """A server whose HEAD answers size 5 (or `length`) and whose GET answers 200 with `length`, or a
    307 redirect for paths ending in /redirect."""

    def __init__(self, length: str = "5") -> None:
        answers = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.send_response(200)
                self.send_header("Content-Length", answers.length)
                self.send_header("Last-Modified", "Mon, 06 Jul 2020 15:21:33 GMT")
                self.end_headers()

            def do_GET(self):
                self.rfile.read(int(self.headers.get("Content-Length", "0")))  # a form, unread otherwise
                if self.path.endswith("/redirect"):
                    self.send_response(307)
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", answers.length)
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(b"hello")

            do_POST = do_GET

        self.length = length
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/job/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def answers():
    a = Answers()
    yield a
    a.close()


def test_a_head_names_the_file_by_its_last_segment_and_the_base_url_itself_by_nothing(answers):
    c = Client(answers.url, timeout=2, retries=0)
    assert c.stat("/") == Entry(name="", is_dir=False, size=5, mtime=1594048893.0)
    assert c.stat("/X").name == "X" and c.stat("/a/b c/").name == "b c"


def test_a_bad_content_length_names_the_url_in_a_head_and_in_a_whole_answer(answers):
    answers.length = "12x"
    c = Client(answers.url, timeout=2, retries=0)
    with pytest.raises(ServerError) as info:
        c.stat("/f")
    assert str(info.value) == f"the server sent a bad Content-Length '12x': {c.url('/f')}"
    with pytest.raises(ServerError) as info:  # a Range answered whole (200): its length is checked too
        c.fetch("/f", 0, 5, Entry("f", False, 5, 0.0), lambda piece: None)
    assert str(info.value) == f"the server sent a bad Content-Length '12x': {c.url('/f')}"


def test_an_api_call_answered_with_a_redirect_is_refused(answers):
    api = JsonCaller(answers.url, timeout=2, retries=0)
    for method in ("GET", "POST"):
        with pytest.raises(ServerError, match=r"answered a redirect \(HTTP 307 to http://127.0.0.1:9/elsewhere\): "
                                              r"not followed"):
            api.call(method, answers.url + "redirect", form={"password": "s3cret"})


def test_requests_tries_in_flight_and_bytes_fetched_are_counted(server, sample):
    from desfs.stats import COUNTERS

    c = Client(sample.url(server.base_url), timeout=2, retries=2, backoff=0.01)
    entry = {e.name: e for e in c.list_dir("/")}["big.bin"]
    before = COUNTERS.snapshot()
    during = []
    c.fetch("/big.bin", 10, 70_010, entry, lambda piece: during.append(COUNTERS.in_flight))
    after = COUNTERS.snapshot()
    assert set(during) == {before["in_flight"] + 1} and after["in_flight"] == before["in_flight"]
    assert after["requests"] == before["requests"] + 1 and after["bytes_fetched"] == before["bytes_fetched"] + 70_000
    server.faults.status, server.faults.status_count = 503, 1  # one try more
    c.list_dir("/")
    again = COUNTERS.snapshot()
    assert again["requests"] == after["requests"] + 2 and again["in_flight"] == before["in_flight"]
    assert again["bytes_fetched"] == after["bytes_fetched"]  # a listing is not file bytes
