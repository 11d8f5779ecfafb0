"""A local file server that answers like the DES file server (nginx, see shared/DESACCESS.md).

Used by `desfs demo` and, with fault switches added, by the tests. It imports
nothing of desfs's client, caches or FUSE. Served from `root`, which holds
`files-desaccess/<user>/<type>/<job_id>/...`:

- `<user>/<type>/<job>[/...]/json` → the folder's listing as nginx autoindex JSON
  (folders first, then byte order; hidden names and the `json` suffix handled as nginx does);
- `<same>/` → an HTML listing; a folder without its slash → 301 to it;
- the user and job-type folders → 404 (`/json`) or 403 (`/`): not listable;
- files → GET/HEAD with ETag, Last-Modified, single and multiple byte ranges,
  If-Range, If-None-Match/If-Modified-Since (304), 416 past the end.
"""

from __future__ import annotations

import html
import os
import re
import socket
import sys
import threading
from collections import deque
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

PREFIX = "/files-desaccess/"
REQUEST_LOG_MAX = 100_000
CHUNK = 256 * 1024


def listing_json(folder: str, inside=lambda path: True) -> bytes:
    """The folder's listing exactly as nginx's `autoindex_format json` writes it; a symlink out of
    the served tree (`inside` false) is listed as `other`, as a broken link is, never its target."""
    dirs, files = [], []
    with os.scandir(folder) as it:
        for d in it:
            if d.name.startswith("."):
                continue
            try:
                if d.is_symlink() and not inside(d.path):
                    raise FileNotFoundError(d.path)
                st = d.stat()
            except OSError:
                (files).append((d.name, "other", 0, None))
                continue
            if d.is_dir():
                dirs.append((d.name, "directory", st.st_mtime, None))
            elif d.is_file():
                files.append((d.name, "file", st.st_mtime, st.st_size))
            else:
                files.append((d.name, "other", st.st_mtime, None))
    key = lambda item: item[0].encode("utf-8", "surrogateescape")  # noqa: E731
    rows = []
    for name, kind, mtime, size in sorted(dirs, key=key) + sorted(files, key=key):
        row = '{ "name":"%s", "type":"%s", "mtime":"%s"' % (
            _escape_json(name), kind, formatdate(int(mtime), usegmt=True))
        if size is not None:
            row += ', "size":%d' % size
        rows.append(row + " }")
    body = "[" + "".join(("," if i else "") + "\r\n" + row for i, row in enumerate(rows)) + "\r\n]"
    return body.encode("utf-8", "surrogateescape")


def _escape_json(name: str) -> str:
    """nginx's ngx_escape_json: quote and backslash escaped, control bytes as \\u00XX, the rest raw."""
    out = []
    for ch in name:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    return "".join(out)


def normalize_path(raw_path: str) -> str | None:
    """The decoded path of a request as nginx resolves it before looking at the disk: %XX decoded
    (`%2F` too), empty and `.` segments dropped, `..` taking the segment before it; a trailing `.` or
    `..` leaves a trailing slash. None (nginx: 400) for a NUL or a `..` above the root."""
    path = unquote(raw_path, errors="surrogateescape")
    if "\0" in path or not path.startswith("/"):
        return None
    parts: list[str] = []
    segments = path.split("/")[1:]
    for segment in segments:
        if segment in ("", "."):
            continue
        if segment == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(segment)
    slash = "/" if parts and segments[-1] in ("", ".", "..") else ""
    return "/" + "/".join(parts) + slash


def etag_of(st: os.stat_result) -> str:
    return '"%x-%x"' % (int(st.st_mtime), st.st_size)


def parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """Half-open ranges of a `bytes=` header; [] when none is satisfiable, None when malformed."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes":
        return None
    ranges = []
    for part in spec.split(","):
        first, dash, last = part.strip().partition("-")
        if not dash:
            return None
        try:
            if first == "":
                n = int(last)
                if n <= 0:
                    continue
                ranges.append((max(0, size - n), size))
            else:
                a = int(first)
                b = int(last) + 1 if last else size
                if last and b <= a:
                    return None
                if a < size:
                    ranges.append((a, min(b, size)))
        except ValueError:
            return None
    return ranges


class DesHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "nginx"
    server: "DesServer"

    def log_message(self, format, *args):  # the server keeps its own request log
        pass

    def do_HEAD(self):
        self.handle_request(head=True)

    def do_GET(self):
        self.handle_request(head=False)

    def handle_request(self, head: bool) -> None:
        self.server.record(self)
        raw_path = urlsplit(self.path).path
        path = normalize_path(raw_path)
        if path is None:  # a NUL, or `..` above the root: nginx answers 400
            return self.send_error_page(400)
        if path != unquote(raw_path, errors="surrogateescape"):
            raw_path = quote(path, safe="/", errors="surrogateescape")
        if not path.startswith(PREFIX):
            return self.send_error_page(404)
        rel = path[len(PREFIX):]
        depth_ok = re.match(r"^.+/.+/.+/", rel) is not None
        if depth_ok and rel.endswith("/json") and re.match(r"^.+/.+/.+/json$", rel):
            folder = os.path.join(self.server.root, "files-desaccess", rel[: -len("json")])
            if not os.path.isdir(folder) or not self.server.inside(folder):
                return self.send_error_page(404)
            return self.send_bytes(200, listing_json(folder, self.server.inside), "application/json", head)
        fs_path = os.path.join(self.server.root, "files-desaccess", rel)
        if not self.server.inside(fs_path):  # a symlink out of the served tree
            return self.send_error_page(404)
        if path.endswith("/"):
            if not os.path.isdir(fs_path):
                return self.send_error_page(404)
            if not depth_ok:
                return self.send_error_page(403)
            return self.send_bytes(200, self.listing_html(fs_path, raw_path), "text/html", head)
        if os.path.isdir(fs_path):
            self.send_response(301)
            self.send_header("Location", raw_path + "/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if not os.path.isfile(fs_path):
            return self.send_error_page(404)
        return self.send_file(fs_path, head)

    # -- answers --------------------------------------------------------------

    def send_file(self, fs_path: str, head: bool) -> None:
        st = os.stat(fs_path)
        size, etag = st.st_size, etag_of(st)
        modified = formatdate(int(st.st_mtime), usegmt=True)
        if self.not_modified(etag, st.st_mtime):
            self.send_response(304)
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", modified)
            self.end_headers()
            return
        ranges = None
        header = self.headers.get("Range")
        if header and self.if_range_holds(etag, st.st_mtime):
            ranges = parse_ranges(header, size)
        if ranges == []:
            return self.send_error_page(416, {"Content-Range": f"bytes */{size}"})
        status, parts = (206, ranges) if ranges else (200, [(0, size)])
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Last-Modified", modified)
        self.send_header("ETag", etag)
        if status == 200:
            self.send_header("Accept-Ranges", "bytes")
        if len(parts) == 1:
            a, b = parts[0]
            if status == 206:
                self.send_header("Content-Range", f"bytes {a}-{b - 1}/{size}")
            self.send_header("Content-Length", str(b - a))
            self.end_headers()
            if not head:
                self.copy_range(fs_path, a, b)
            return
        boundary = "00000000001"
        heads = [
            (f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
             f"Content-Range: bytes {a}-{b - 1}/{size}\r\n\r\n").encode()
            for a, b in parts
        ]
        tail = f"\r\n--{boundary}--\r\n".encode()
        length = sum(len(h) for h in heads) + sum(b - a for a, b in parts) + len(tail)
        self.send_header("Content-Type", f"multipart/byteranges; boundary={boundary}")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if head:
            return
        for h, (a, b) in zip(heads, parts, strict=True):
            self.wfile.write(h)
            self.copy_range(fs_path, a, b)
        self.wfile.write(tail)

    def copy_range(self, fs_path: str, start: int, stop: int) -> None:
        with open(fs_path, "rb") as f:
            f.seek(start)
            left = stop - start
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)

    def if_range_holds(self, etag: str, mtime: float) -> bool:
        value = self.headers.get("If-Range")
        if not value:
            return True
        if value.startswith('"') or value.startswith("W/"):
            return value == etag
        try:
            return int(parsedate_to_datetime(value).timestamp()) == int(mtime)
        except (TypeError, ValueError):
            return False

    def not_modified(self, etag: str, mtime: float) -> bool:
        inm = self.headers.get("If-None-Match")
        if inm:
            return etag in [t.strip() for t in inm.split(",")] or inm.strip() == "*"
        ims = self.headers.get("If-Modified-Since")
        if ims:
            try:
                return int(parsedate_to_datetime(ims).timestamp()) >= int(mtime)
            except (TypeError, ValueError):
                return False
        return False

    def listing_html(self, folder: str, raw_path: str) -> bytes:
        title = html.escape(unquote(raw_path))
        lines = [f"<html>\r\n<head><title>Index of {title}</title></head>\r\n<body>\r\n"
                 f"<h1>Index of {title}</h1><hr><pre><a href=\"../\">../</a>\r\n"]
        for name in sorted(n for n in os.listdir(folder) if not n.startswith(".")):
            slash = "/" if os.path.isdir(os.path.join(folder, name)) else ""
            lines.append(f'<a href="{quote(name)}{slash}">{html.escape(name)}{slash}</a>\r\n')
        lines.append("</pre><hr></body>\r\n</html>\r\n")
        return "".join(lines).encode("utf-8", "surrogateescape")

    def send_bytes(self, status: int, body: bytes, content_type: str, head: bool = False,
                   headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def send_error_page(self, status: int, headers: dict[str, str] | None = None) -> None:
        reason = {400: "Bad Request", 403: "Forbidden", 404: "Not Found",
                  416: "Requested Range Not Satisfiable"}.get(status, "Error")
        body = f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n" \
               f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
        self.send_bytes(status, body.encode(), "text/html", head=self.command == "HEAD", headers=headers)


class DesServer(ThreadingHTTPServer):
    """A threaded DES-like file server on 127.0.0.1; `requests` logs what it was asked."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: str, port: int = 0, handler=DesHandler, host: str = "127.0.0.1") -> None:
        super().__init__((host, port), handler)
        self.root = root
        # (method, path, Range header) and headers of the latest requests (bounded: the demo runs for hours)
        self.requests: deque[tuple[str, str, str]] = deque(maxlen=REQUEST_LOG_MAX)
        self.headers_seen: deque[dict[str, str]] = deque(maxlen=REQUEST_LOG_MAX)
        self._log_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._connections: set = set()

    def process_request(self, request, client_address) -> None:
        with self._log_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._log_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    @property
    def base_url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}{PREFIX}"

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # a client that hangs up early (it had the bytes it wanted) is no fault
        super().handle_error(request, client_address)

    def inside(self, fs_path: str) -> bool:
        """Is `fs_path`, symlinks resolved, within the served tree? Nothing outside it is ever served."""
        base = os.path.realpath(os.path.join(self.root, "files-desaccess"))
        real = os.path.realpath(fs_path)
        return real == base or real.startswith(base + os.sep)

    def record(self, handler: BaseHTTPRequestHandler) -> None:
        with self._log_lock:
            path = unquote(urlsplit(handler.path).path)
            self.requests.append((handler.command, path, handler.headers.get("Range", "")))
            self.headers_seen.append(dict(handler.headers.items()))

    def start(self) -> "DesServer":
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop as a killed server would: no new connections, and the open ones closed."""
        self.shutdown()
        self.server_close()
        with self._log_lock:
            open_connections = list(self._connections)
        for conn in open_connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread:
            self._thread.join(timeout=5)
