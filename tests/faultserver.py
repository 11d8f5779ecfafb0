"""The in-process test server: desfs's DES-like server plus switches for faults.

Every switch is off after `reset()`. Faults apply to requests whose decoded
path contains `Faults.match` (all requests when it is empty), and the first
`Faults.skip` matching requests are served normally.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from desfs.server import DesHandler, DesServer, parse_ranges

STALL_MAX_SECONDS = 20.0  # a stalled answer always ends, so no test thread lingers
DRIP_MAX_SECONDS = 60.0  # likewise a dripping one


@dataclass
class Faults:
    match: str = ""
    skip: int = 0
    status: int | None = None  # answer this status ...
    status_count: int = 0  # ... to this many requests
    retry_after: str | None = None
    stall: str | None = None  # "before-headers" | "after-headers"
    stall_count: int = 0
    stall_seconds: float = STALL_MAX_SECONDS
    truncate_count: int = 0  # send half the body, then close
    reset_count: int = 0  # send half the body, then reset the connection
    ignore_range: bool = False  # 200 with the whole file
    shift_content_range: int = 0  # claim bytes from start+shift
    listing_body: dict[str, bytes] = field(default_factory=dict)  # decoded path → body of a /json answer
    html_for_json: bool = False
    slow_chunk_delay: float = 0.0  # seconds between 64 KiB chunks of a file body (a slow link)
    virtual: dict[str, int] = field(default_factory=dict)  # decoded path → size of a made-up file (PATTERN bytes)
    random_fail: float = 0.0  # share of requests answered 503 (seeded, repeatable)
    random_cut: float = 0.0  # share of file bodies cut in half
    redirect: dict[str, str] = field(default_factory=dict)  # decoded path → Location of a 302
    drip_seconds: float = 0.0  # answer, then send the body one byte every this many seconds (never quite stalling)
    gzip_body: bool = False  # file answers gzip-compressed, with Content-Encoding: gzip (asked for or not)
    bad_length: str | None = None  # the Content-Length header of file answers (HEAD) replaced by this
    listing_delay: float = 0.0  # seconds before each /json answer (a far server); counted in sending_peak


PATTERN = bytes(range(251))  # a made-up file's byte i is PATTERN[i % 251]


def pattern_bytes(start: int, stop: int) -> bytes:
    """Bytes [start, stop) of a made-up file."""
    first = start % len(PATTERN)
    reps = (stop - start + first) // len(PATTERN) + 1
    return (PATTERN * reps)[first:first + stop - start]


class FaultHandler(DesHandler):
    server: "FaultServer"

    def handle_request(self, head: bool) -> None:
        f = self.server.faults
        path = self.path_decoded()
        hit = self.server.take(path)
        if hit and f.stall == "before-headers" and self.server.consume("stall_count"):
            self.server.record(self)
            time.sleep(min(f.stall_seconds, STALL_MAX_SECONDS))
            self.close_connection = True
            return None
        if hit and f.status is not None and self.server.consume("status_count"):
            self.server.record(self)
            self.send_response(f.status)
            if f.retry_after:
                self.send_header("Retry-After", f.retry_after)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if path.endswith("/json") and f.listing_delay:
            with self.server.sending():
                time.sleep(min(f.listing_delay, STALL_MAX_SECONDS))
        if path.endswith("/json") and (path in f.listing_body or f.html_for_json):
            self.server.record(self)
            body = f.listing_body.get(path) or b"<html><body>Not JSON</body></html>"
            return self.send_bytes(200, body, "application/json" if path in f.listing_body else "text/html", head)
        if hit and f.random_fail and self.server.chance(f.random_fail):
            self.server.record(self)
            return self.send_bytes(503, b"busy", "text/plain", head)
        if path in f.redirect:
            self.server.record(self)
            self.send_response(302)
            self.send_header("Location", f.redirect[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if path in f.virtual:
            self.server.record(self)
            return self.send_virtual(f.virtual[path], head)
        if hit and (f.drip_seconds or f.gzip_body) and not head and self.send_altered(path, f):
            return None
        if hit and f.ignore_range and "Range" in self.headers:
            del self.headers["Range"]
        return super().handle_request(head)

    def send_virtual(self, size: int, head: bool) -> None:
        """A made-up file of `size` bytes (sizes past 4 GiB without the disk), single ranges only."""
        ranges = parse_ranges(self.headers["Range"], size) if "Range" in self.headers else None
        if ranges == []:
            return self.send_error_page(416, {"Content-Range": f"bytes */{size}"})
        start, stop = ranges[0] if ranges else (0, size)
        self.send_response(206 if ranges else 200)
        self.send_header("Last-Modified", "Thu, 26 Nov 2026 00:00:00 GMT")
        if ranges:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.send_header("Content-Length", str(stop - start))
        self.end_headers()
        if head:
            return None
        f = self.server.faults
        if f.random_cut and self.server.chance(f.random_cut):  # half the body, then the connection closes
            self.wfile.write(pattern_bytes(start, start + (stop - start) // 2))
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return None
        slow = f.slow_chunk_delay and self.server.matches(self.path_decoded())
        step = 65536 if slow else 1 << 20
        with self.server.sending():
            for offset in range(start, stop, step):
                self.wfile.write(pattern_bytes(offset, min(stop, offset + step)))
                if slow:
                    time.sleep(min(f.slow_chunk_delay, 1.0))
        return None

    def send_altered(self, path: str, f: Faults) -> bool:
        """The answer a normal request for a file or a listing would get, dripped out a byte at a time,
        or gzipped; False (nothing sent) for anything else."""
        import gzip
        import io
        import os

        rel = path[len("/files-desaccess/"):]
        fs_path = os.path.join(self.server.root, "files-desaccess", rel)
        listing = path.endswith("/json") and os.path.isdir(fs_path[: -len("json")])
        if listing:
            fs_path = fs_path[: -len("json")]
        if not (listing or os.path.isfile(fs_path)):
            return False
        self.server.record(self)
        if listing:
            from desfs.server import listing_json

            status, headers, body = 200, {"Content-Type": "application/json"}, listing_json(fs_path)
        else:
            data = open(fs_path, "rb").read()
            ranges = parse_ranges(self.headers["Range"], len(data)) if "Range" in self.headers else None
            a, b = ranges[0] if ranges else (0, len(data))
            status, body = (206 if ranges else 200), data[a:b]
            headers = {"Last-Modified": self.date_time_string(int(os.stat(fs_path).st_mtime))}
            if ranges:
                headers["Content-Range"] = f"bytes {a}-{b - 1}/{len(data)}"
        if f.gzip_body:
            buf = io.BytesIO()
            with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as z:
                z.write(body)
            body, headers["Content-Encoding"] = buf.getvalue(), "gzip"
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not f.drip_seconds:
            self.wfile.write(body)
            return True
        self.close_connection = True
        ends = time.monotonic() + DRIP_MAX_SECONDS
        for i in range(len(body)):
            if time.monotonic() > ends or self.server.faults is not f:  # a reset() ends the drips too
                break
            self.wfile.write(body[i:i + 1])
            self.wfile.flush()
            time.sleep(f.drip_seconds)
        return True

    def send_header(self, keyword, value):
        f = self.server.faults
        if (keyword == "Content-Length" and f.bad_length is not None and self.command == "HEAD"
                and self.server.matches(self.path_decoded())):
            value = f.bad_length
        if keyword == "Content-Range" and f.shift_content_range and value.startswith("bytes ") and "*" not in value:
            span, total = value[6:].split("/")
            a, b = (int(x) for x in span.split("-"))
            value = f"bytes {a + f.shift_content_range}-{b + f.shift_content_range}/{total}"
        super().send_header(keyword, value)

    def copy_range(self, fs_path: str, start: int, stop: int) -> None:
        fault = self.server.take_body_fault(self.path_decoded())
        if fault == "stall":
            time.sleep(min(self.server.faults.stall_seconds, STALL_MAX_SECONDS))
        elif fault in ("truncate", "reset"):
            super().copy_range(fs_path, start, start + (stop - start) // 2)
            self.wfile.flush()
            if fault == "reset":  # linger 0: close() sends RST instead of FIN
                time.sleep(0.2)  # after the client has taken the half in (a RST drops what it has not read)
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        elif self.server.faults.random_cut and self.server.chance(self.server.faults.random_cut):
            super().copy_range(fs_path, start, start + (stop - start) // 2)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        elif self.server.faults.slow_chunk_delay and self.server.matches(self.path_decoded()):
            with open(fs_path, "rb") as f, self.server.sending():
                f.seek(start)
                for offset in range(start, stop, 65536):
                    self.wfile.write(f.read(min(65536, stop - offset)))
                    time.sleep(min(self.server.faults.slow_chunk_delay, 1.0))
            return None
        else:
            return super().copy_range(fs_path, start, stop)
        self.close_connection = True

    def path_decoded(self) -> str:
        from urllib.parse import unquote, urlsplit

        return unquote(urlsplit(self.path).path, errors="surrogateescape")


class FaultServer(DesServer):
    def __init__(self, root: str, port: int = 0, host: str = "127.0.0.1") -> None:
        super().__init__(root, port=port, handler=FaultHandler, host=host)
        self.faults = Faults()
        self._lock = threading.Lock()
        self._seen = 0
        self._rng = random.Random(6)
        self.sending_now = self.sending_peak = 0

    def reset(self) -> None:
        with self._lock:
            self.faults = Faults()
            self._seen = 0
            self._rng = random.Random(6)
            self.sending_now = self.sending_peak = 0
            self.requests.clear()
            self.headers_seen.clear()

    @contextlib.contextmanager
    def sending(self):
        """Around the body of a slow or made-up file: `sending_peak` is how many were sent at once."""
        with self._lock:
            self.sending_now += 1
            self.sending_peak = max(self.sending_peak, self.sending_now)
        try:
            yield
        finally:
            with self._lock:
                self.sending_now -= 1

    def chance(self, p: float) -> bool:
        with self._lock:
            return self._rng.random() < p

    def matches(self, path: str) -> bool:
        return not self.faults.match or self.faults.match in path

    def take(self, path: str) -> bool:
        """Does this request fall under the faults (path matches, past `skip`)?"""
        with self._lock:
            if self.faults.match and self.faults.match not in path:
                return False
            self._seen += 1
            return self._seen > self.faults.skip

    def consume(self, counter: str) -> bool:
        with self._lock:
            left = getattr(self.faults, counter)
            if left <= 0:
                return False
            setattr(self.faults, counter, left - 1)
            return True

    def take_body_fault(self, path: str) -> str | None:
        """Which fault, if any, the body of this answer gets: stall, truncate or reset."""
        if self.faults.match and self.faults.match not in path:
            return None
        if self.faults.stall == "after-headers" and self.consume("stall_count"):
            return "stall"
        if self.consume("truncate_count"):
            return "truncate"
        if self.consume("reset_count"):
            return "reset"
        return None

    def count(self, method: str = "GET", contains: str = "", suffix: str = "") -> int:
        with self._log_lock:
            return sum(1 for m, p, _ in self.requests if m == method and contains in p and p.endswith(suffix))
