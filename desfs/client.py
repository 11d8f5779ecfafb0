"""HTTP layer: the only module that imports requests.

Knows URLs, HTTP status codes, Range/If-Range and retries; knows nothing of
caches, FUSE or the command line. Paths are mount paths ("/", "/a/b c"): each
segment is percent-encoded here and nowhere else. Ranges are half-open
[start, stop) everywhere; the inclusive HTTP form is written in `_range_header`
alone. Every failure leaves as a desfs.errors exception with a real errno.

Internals of others relied on here (each guarded by a test that fails if it changes):
- urllib3's `HTTPResponse._fp`, the http.client answer beneath it, whose `readinto` reads
  range bodies straight into a block (`_plain_body`; any other transport falls back to
  urllib3's `read`): tests/test_client.py::test_range_reads_keep_one_connection_alive and
  every range read;
- urllib3's `HTTPConnection._new_conn` (where it makes a socket), `ConnectionCls` of its
  pools and `PoolManager.pool_classes_by_scheme`, so the deadline watchdog learns each
  try's socket: tests/test_deadlines.py::test_a_dripping_file_fails_with_etimedout.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import quote, urlsplit

import requests
import urllib3
import urllib3.connection
import urllib3.connectionpool
from requests.adapters import HTTPAdapter

from desfs import __version__
from desfs.errors import (AccessDenied, DesfsError, NotFound, ServerError, Stale, Timeout, TooLarge, Unreachable,
                          redact)
from desfs.listing import Entry, Listing, ListingParser
from desfs.settings import MIN_RATE, RETRY_AFTER_MAX, allowance
from desfs.stats import COUNTERS

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024
LISTING_MAX_BYTES = 64 * 1024 * 1024
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
DOWN_SECONDS = 10.0  # after a host could not be reached, requests to it get one try, no retries, for this long

_down_until: dict[str, float] = {}  # host → until when it is taken as unreachable (every client of the process)

class _Retryable(Exception):
    """A failure worth another try: connection lost, body cut short, 5xx/429."""

    def __init__(self, message: str, delay: float | None = None, unreachable: bool = False) -> None:
        super().__init__(message)
        self.delay = delay
        self.unreachable = unreachable  # no connection at all (not an answer cut short, not a 5xx)


class Client:
    """Reads listings and byte ranges below one base folder URL.

    `timeout` bounds every wait on the network (connect, and each read of the
    socket); `retries` is how many more tries a retryable failure gets, with
    exponential backoff starting at `backoff` seconds (a Retry-After is honoured).
    Thread-safe: one connection pool serves every thread.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.25,
        connections: int = 16,
        ca_bundle: str | None = None,
        session: requests.Session | None = None,
        offline: bool = False,
    ) -> None:
        """`offline`: never touch the network, every request fails at once (Unreachable)."""
        if not base_url.endswith("/"):
            base_url += "/"
        scheme = urlsplit(base_url).scheme
        if scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) URL: {base_url}")
        self.base_url = base_url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.offline = offline
        self._host = urlsplit(base_url).netloc
        # A session handed in is shared (the jobs of an account mount): used as it is, so that
        # its connection pool survives; a new one is configured here.
        self.session = session or _new_session(base_url, connections, ca_bundle)
        self._warned: set[str] = set()
        self._warn_lock = threading.Lock()

    # -- URLs ---------------------------------------------------------------

    def url(self, path: str, folder: bool = False) -> str:
        """URL of a mount path; a folder's URL ends with '/'."""
        segments = [quote(s, safe="") for s in path.split("/") if s]
        url = self.base_url + "/".join(segments)
        if folder and segments:
            url += "/"
        return url

    # -- operations ---------------------------------------------------------

    def list_dir(self, path: str) -> list[Entry]:
        """The entries of a folder, from its `<folder>/json` listing."""
        return list(self.listing(path).values())

    def listing(self, path: str, max_bytes: int | None = None) -> Listing:
        """A folder's `<folder>/json` listing, parsed as it arrives. TooLarge once its entries would hold
        more than `max_bytes` (see listing.entry_bytes), or its JSON passes LISTING_MAX_BYTES (or `max_bytes`)."""
        url = self.url(path, folder=True) + "json"
        cap = max(LISTING_MAX_BYTES, max_bytes or 0)

        def consume(resp: requests.Response) -> Listing:
            declared = _length(resp, url)
            too_large = f"folder listing larger than {cap} bytes of JSON"
            if declared is not None and "Content-Encoding" not in resp.headers and declared > cap:
                raise TooLarge(too_large, url)
            expect_bytes(min(declared or 0, cap))
            parser = ListingParser(url, max_bytes)
            for chunk in resp.iter_content(CHUNK_BYTES):
                if parser.received + len(chunk) > cap:
                    raise TooLarge(too_large, url)
                parser.feed(chunk)
                expect_bytes(parser.received)  # an answer of unknown length: the bytes so far at MIN_RATE
            if declared is not None and "Content-Encoding" not in resp.headers and declared != parser.received:
                raise _Retryable(f"listing cut short ({parser.received} of {declared} bytes)")
            return parser.close()

        return self.request("GET", url, {}, consume)

    def stat(self, path: str) -> Entry:
        """Size and mtime of a file from a HEAD request (for a file named by URL alone)."""
        url = self.url(path)

        def consume(resp: requests.Response) -> Entry:
            size = _length(resp, url)
            if size is None:
                raise ServerError("the server gave no size (Content-Length) for the file", url)
            name = [s for s in path.split("/") if s][-1] if path.strip("/") else ""
            return Entry(name=name, is_dir=False, size=size, mtime=_http_time(resp.headers.get("Last-Modified")))

        return self.request("HEAD", url, {}, consume)

    def fetch(self, path: str, start: int, stop: int, expect: Entry,
              write: "Sink | Callable[[memoryview], object]") -> None:
        """Stream bytes [start, stop) of version `expect` into `write`, resuming after a retry.

        `write` gets each piece as a memoryview valid only during the call; a
        `Sink` (room/filled) gets the bytes read from the socket straight into
        its own memory instead.
        Raises Stale when the server holds another version than `expect`
        (If-Range with its mtime, and the size in Content-Range, tell).
        """
        if not 0 <= start <= stop <= expect.size:
            raise ValueError(f"range [{start}, {stop}) outside a file of {expect.size} bytes")
        url = self.url(path)
        done = 0  # bytes already handed to `write`, kept across retries
        sink = write if isinstance(write, Sink) else _Pieces(write, min(CHUNK_BYTES, stop - start))

        def consume(resp: requests.Response) -> None:
            nonlocal done
            offset = start + done
            encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding != "identity":  # the bytes on the wire would not be the file's bytes
                raise ServerError(f"server sent the file encoded (Content-Encoding: {encoding[:40]})", url)
            if resp.status_code == 206:
                first, total = _parse_content_range(resp.headers.get("Content-Range"), url)
                if total is not None and total != expect.size:
                    raise Stale(f"file changed on the server (size {total}, expected {expect.size})", url)
                if first != offset:
                    self._warn_once("content-range", f"server answered a wrong Content-Range for {url}")
                    raise ServerError(f"server answered bytes from {first}, asked for {offset}", url)
                skip = 0
            else:  # 200: the server ignored Range, or the file changed (If-Range failed)
                self._check_version(resp, expect, url)
                self._warn_once("ignores-range", f"server ignores Range requests ({url}): reading whole bodies")
                skip = offset
            want = stop - offset
            expect_bytes(skip + want)
            body = _plain_body(resp)
            read_into = body.readinto if body else _urllib3_reader(resp)
            if skip:
                scratch = memoryview(bytearray(min(CHUNK_BYTES, skip)))
                while skip:
                    n = read_into(scratch[:skip])
                    if not n:
                        raise _Retryable("body ended before the requested range")
                    skip -= n
            while want:
                n = read_into(sink.room()[:want])
                if not n:
                    raise _Retryable(f"body cut short ({want} bytes missing)")
                sink.filled(n)
                done += n
                want -= n
            COUNTERS.add("bytes_fetched", stop - offset)  # once an answer, not under a lock per socket read
            if body is not None and body.isclosed():  # read to its end: the connection can serve again
                resp.raw.release_conn()  # (urllib3 does this in its own read, which is bypassed here)

        def headers() -> dict[str, str]:
            h = {"Range": _range_header(start + done, stop), "Accept-Encoding": "identity"}
            if expect.mtime > 0:
                h["If-Range"] = formatdate(expect.mtime, usegmt=True)
            return h

        if start == stop:
            return
        self.request("GET", url, headers, consume)

    # -- the one place that talks to the network ----------------------------

    def request(self, method: str, url: str, headers, consume: Callable[[requests.Response], object], *,
                data: dict | None = None, passthrough: tuple[int, ...] = (), redirects: bool = True):
        """Send a request and hand the answer to `consume`, retrying what is worth retrying.

        `headers` is a dict or a callable that makes one per try (a resumed
        range). 404/410 → NotFound and 401/403 → AccessDenied at once; a
        timeout → Timeout at once (a stalled server must not cost retries ×
        timeout); connection failures, 5xx/429 and cut bodies are retried.
        Each try has a total deadline (`allowance`): the headers within
        `timeout`, the body at MIN_RATE on average (`consume` tells the size it
        expects with `expect_bytes`). `redirects=False` refuses any redirect.
        """
        if self.offline:
            raise Unreachable("offline (--offline): not in the disk cache", url)
        # A host that could not be reached a moment ago gets one try, no retries: a refused connection then
        # fails in a millisecond, not after every backoff, and the first answer ends the spell.
        retries = 0 if time.monotonic() < _down_until.get(self._host, 0.0) else self.retries
        attempt = 0
        while True:
            try:
                answer = self._try_once(method, url, headers() if callable(headers) else headers, consume, data,
                                        passthrough, redirects)
                _down_until.pop(self._host, None)
                return answer
            except _Retryable as exc:
                if attempt >= retries:
                    if exc.unreachable:  # the next requests fail at once for a while, not after every retry
                        _down_until[self._host] = time.monotonic() + DOWN_SECONDS
                        raise Unreachable(f"{exc} (after {attempt + 1} tries)", url) from None
                    raise ServerError(f"{exc} (after {attempt + 1} tries)", url) from None
                delay = exc.delay if exc.delay is not None else self.backoff * (2**attempt)
                delay *= 1 + random.random() * 0.25
                log.info("retrying %s %s in %.2fs: %s", method, redact(url), delay, exc)
                attempt += 1
                time.sleep(delay)

    def _try_once(self, method, url, headers, consume, data, passthrough, redirects):
        watch = _watchdog.begin(self.timeout, 0)
        try:
            return self._answer(method, url, headers, consume, data, passthrough, redirects)
        except (_Retryable, ServerError, Timeout) as exc:
            if watch.fired and not isinstance(exc, Timeout):
                raise Timeout(f"no complete answer within {watch.seconds:.0f} s (--timeout {self.timeout:g} s plus "
                              f"the size at {MIN_RATE // 1024} KiB/s, shared by the transfers at once)", url) from None
            raise
        finally:
            _watchdog.end(watch)

    def _answer(self, method, url, headers, consume, data, passthrough, redirects):
        COUNTERS.add("requests")
        COUNTERS.add("in_flight")
        try:
            return self._answer_counted(method, url, headers, consume, data, passthrough, redirects)
        finally:
            COUNTERS.add("in_flight", -1)

    def _answer_counted(self, method, url, headers, consume, data, passthrough, redirects):
        started = time.monotonic()
        try:
            resp = self.session.request(
                method, url, headers=headers, data=data, timeout=(self.timeout, self.timeout), stream=True,
                allow_redirects=redirects,
            )
        except requests.Timeout as exc:
            raise Timeout(f"no answer within {self.timeout:g} s", url) from exc
        except requests.exceptions.InvalidURL as exc:
            raise DesfsError(f"invalid URL ({exc})", url) from None
        except requests.exceptions.SSLError as exc:
            raise DesfsError(f"TLS error ({_reason(exc)})", url) from None
        except requests.ConnectionError as exc:
            raise _Retryable(f"cannot connect ({_reason(exc)})", unreachable=True) from None
        except requests.TooManyRedirects:
            raise ServerError("too many redirects", url) from None
        with resp:
            log.debug("%s %s %s -> %d", method, redact(url), headers.get("Range", ""), resp.status_code)
            status = resp.status_code
            if status in passthrough:
                pass  # the caller reads the answer, whatever its status
            elif status in (404, 410):
                raise NotFound("not found on the server (HTTP %d)" % status, url)
            elif status in (401, 403):
                raise AccessDenied("access denied by the server (HTTP %d)" % status, url)
            elif status in RETRY_STATUSES:
                raise _Retryable(f"server answered HTTP {status}", _retry_after(resp.headers.get("Retry-After")))
            elif status == 416:
                raise Stale("range not satisfiable: the file is shorter than listed", url)
            elif 300 <= status < 400 and not redirects:
                where = redact(resp.headers.get("Location", "")[:200]) or "nowhere"
                raise ServerError(f"answered a redirect (HTTP {status} to {where}): not followed", url)
            elif status >= 300:
                raise ServerError(f"unexpected answer HTTP {status}", url)
            try:
                result = consume(resp)
            except (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
                if isinstance(exc, DesfsError):
                    raise
                if _is_timeout(exc):
                    raise Timeout(f"server stopped sending for {self.timeout:g} s", url) from None
                raise _Retryable(f"connection lost mid-answer ({_reason(exc)})") from None
            log.debug("%s %s done in %.0f ms", method, redact(url), (time.monotonic() - started) * 1000)
            return result

    def _check_version(self, resp: requests.Response, expect: Entry, url: str) -> None:
        length = _length(resp, url)
        modified = _http_time(resp.headers.get("Last-Modified"))
        if (length is not None and length != expect.size) or (
            modified and expect.mtime and abs(modified - expect.mtime) >= 1
        ):
            raise Stale("file changed on the server since it was listed", url)

    def _warn_once(self, key: str, message: str) -> None:
        with self._warn_lock:
            if key in self._warned:
                return
            self._warned.add(key)
        log.warning("%s", message)


# -- total deadlines ---------------------------------------------------------
#
# A socket timeout bounds each pause of an answer, not the whole answer: a server that sends a
# byte just before every timeout would hold a read (and the FUSE thread, and the program in D
# state) forever. Each try of a request therefore has a deadline (`allowance`); a watchdog thread
# shuts the try's socket when it passes, which ends any blocking connect, send or receive at once.
# The socket is learnt where urllib3 makes or reuses a connection (`_new_conn`, urllib3's own hook
# for making the socket, and `request`), in the thread that runs the try.


WATCH_GRACE = 0.5  # seconds


class _Watch:
    """The deadline of one try, and the socket it uses once it has one.

    The bytes it may carry are timed at MIN_RATE shared among the tries in flight
    at once (`peak`, the most there were during its life): desfs itself runs
    several transfers at once on a slow link (readahead, `get -j`), and each
    gets its share of the link, not all of it."""

    __slots__ = ("started", "timeout", "nbytes", "peak", "sock", "fired")

    def __init__(self, timeout: float, nbytes: int) -> None:
        self.started = time.monotonic()
        self.timeout = timeout
        self.nbytes = nbytes
        self.peak = 1
        self.sock: socket.socket | None = None
        self.fired = False

    def allow(self, nbytes: int) -> None:
        """Give the try time for `nbytes` (a size learnt from the answer, or bytes already received)."""
        self.nbytes = max(self.nbytes, nbytes)

    @property
    def seconds(self) -> float:
        """What the try is allowed: `timeout`, and its bytes at its share of MIN_RATE."""
        return allowance(self.timeout, self.nbytes * self.peak)

    @property
    def deadline(self) -> float:
        # WATCH_GRACE later: a plain stall meets the socket's own timeout first (a clearer message)
        return self.started + self.seconds + WATCH_GRACE


class _Watchdog:
    def __init__(self) -> None:
        self._watches: set[_Watch] = set()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._local = threading.local()

    def begin(self, timeout: float, nbytes: int) -> _Watch:
        watch = _Watch(timeout, nbytes)
        with self._cond:
            self._watches.add(watch)
            now_in_flight = len(self._watches)
            for w in self._watches:
                w.peak = max(w.peak, now_in_flight)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="desfs-deadlines", daemon=True)
                self._thread.start()
            self._cond.notify()
        self._local.watch = watch
        return watch

    def current(self) -> _Watch | None:
        return getattr(self._local, "watch", None)

    def end(self, watch: _Watch) -> None:
        with self._cond:
            self._watches.discard(watch)
            watch.sock = None
        self._local.watch = None

    def attach(self, sock: socket.socket | None) -> None:
        """The socket the current thread's try is about to use."""
        watch = getattr(self._local, "watch", None)
        if watch is None or sock is None:
            return
        with self._cond:
            watch.sock = sock
            if watch.fired:
                _shut(sock)

    def _loop(self) -> None:
        # This thread may be the first of its process (a sign-in before a mount): it must not take the
        # stop signals that the mount's own thread waits for (cli._hold_stop_signals).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        with self._cond:
            while True:
                now = time.monotonic()
                for watch in [w for w in self._watches if w.deadline <= now]:
                    watch.fired = True
                    self._watches.discard(watch)
                    if watch.sock is not None:
                        _shut(watch.sock)
                soonest = min((w.deadline for w in self._watches), default=None)
                self._cond.wait(None if soonest is None else max(0.01, soonest - now))


def _shut(sock: socket.socket) -> None:
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: also under a TLS layer
    except OSError:
        pass


_watchdog = _Watchdog()


class _Watched:
    """The part of a urllib3 connection that tells the watchdog which socket the current try uses."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watchdog.attach(sock)
        return sock

    def request(self, *args, **kwargs):  # a kept-alive connection, reused
        _watchdog.attach(self.sock)
        return super().request(*args, **kwargs)


class _WatchedHTTPConnection(_Watched, urllib3.connection.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _WatchedHTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter, with connections whose sockets the watchdog can shut."""

    _POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(self._POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = dict(self._POOLS)
        return manager


@runtime_checkable
class Sink(Protocol):
    """Where `Client.fetch` can put a range's bytes straight from the socket (cache._BlockWriter is one)."""

    def room(self) -> memoryview:
        """Writable memory for the next bytes; never empty while bytes are due."""

    def filled(self, n: int) -> None:
        """`n` more bytes are in `room()`."""


def _new_session(base_url: str, connections: int, ca_bundle: str | None) -> requests.Session:
    session = requests.Session()
    adapter = _WatchedAdapter(pool_connections=4, pool_maxsize=connections, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = f"desfs/{__version__}"
    # Proxies from the environment are read once here; with trust_env requests would also
    # stat ~/.netrc and re-read the environment on every request (a range read is one).
    session.proxies.update(requests.utils.get_environ_proxies(base_url))
    session.trust_env = False
    ca_bundle = ca_bundle or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if ca_bundle:
        session.verify = ca_bundle
    return session


class JsonCaller:
    """JSON calls to an API (POST a form or GET), with the Client's timeouts, retries and errors.

    Answers of any status come back as (status, body); only the transport
    (refused connection, 5xx/429, timeout) is retried and turned into errors.
    A body that is not JSON is a ServerError. Nothing here is ever logged of
    the form or headers (they hold passwords and tokens).
    """

    def __init__(self, api_url: str, *, timeout: float = 30.0, retries: int = 3, backoff: float = 0.25,
                 ca_bundle: str | None = None) -> None:
        # on the API's own URL, so that proxy settings (no_proxy) are those of the API host
        self._http = Client(api_url, timeout=timeout, retries=retries, backoff=backoff,
                            ca_bundle=ca_bundle, connections=4)

    def call(self, method: str, url: str, form: dict | None = None, token: str | None = None) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        http = self._http

        def consume(resp: requests.Response) -> tuple[int, dict]:
            try:
                body = resp.json()
            except ValueError:
                raise ServerError(f"the API answered HTTP {resp.status_code} without JSON", url) from None
            return resp.status_code, body if isinstance(body, dict) else {"value": body}

        # No redirect is followed: requests would carry the form (the password) along a 307/308 to any host.
        return http.request(method, url, headers, consume, data=form, passthrough=(400, 401, 403, 404, 406),
                            redirects=False)


def expect_bytes(nbytes: int) -> None:
    """Tell the deadline of the current try how many bytes its answer is expected to carry."""
    watch = _watchdog.current()
    if watch is not None:
        watch.allow(nbytes)


def _length(resp: requests.Response, url: str) -> int | None:
    """The answer's Content-Length as a number of bytes (None when not given); anything else is a
    server error, not a crash."""
    value = resp.headers.get("Content-Length")
    if value is None:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 19:
        raise ServerError(f"the server sent a bad Content-Length {value[:40]!r}", url)
    return int(value)


def _range_header(start: int, stop: int) -> str:
    """The HTTP Range header for the half-open byte range [start, stop)."""
    return f"bytes={start}-{stop - 1}"


def _parse_content_range(value: str | None, url: str) -> tuple[int, int | None]:
    """(first byte, total size or None) of a `bytes a-b/total` header."""
    try:
        unit, _, spec = (value or "").partition(" ")
        span, _, total = spec.partition("/")
        first = int(span.split("-")[0])
        if unit != "bytes":
            raise ValueError
        return first, (None if total == "*" else int(total))
    except ValueError:
        raise ServerError(f"206 answer with a bad Content-Range {value!r}", url) from None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = _http_time(value) - time.time()
    return max(0.0, min(seconds, RETRY_AFTER_MAX))


def _http_time(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return 0.0


class _Pieces:
    """The room/filled side of a plain `write`: bytes are read into one reused buffer and handed
    to `write` piece by piece (as memoryviews valid during the call)."""

    def __init__(self, write: Callable[[memoryview], object], size: int) -> None:
        self._write = write
        self._buf = memoryview(bytearray(size))

    def room(self) -> memoryview:
        return self._buf

    def filled(self, n: int) -> None:
        self._write(self._buf[:n])


def _plain_body(resp: requests.Response) -> http.client.HTTPResponse | None:
    """The http.client answer beneath urllib3's: its `readinto` puts bytes from the socket straight
    into the caller's buffer, not through urllib3's chunks. Ranges are asked for with
    Accept-Encoding: identity and taken as sent (never decoded), so both see the same bytes."""
    body = getattr(resp.raw, "_fp", None)
    return body if isinstance(body, http.client.HTTPResponse) else None


def _urllib3_reader(resp: requests.Response) -> Callable[[memoryview], int]:
    """`readinto` through urllib3, for any other transport: one copy more."""
    def read_into(view: memoryview) -> int:
        chunk = resp.raw.read(len(view), decode_content=False)
        view[: len(chunk)] = chunk
        return len(chunk)

    return read_into


def _is_timeout(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (TimeoutError, requests.Timeout)) or "timed out" in str(exc).lower():
            return True
        wrapped = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        exc = exc.__cause__ or exc.__context__ or wrapped
        seen += 1
    return False


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "Connection reset", "timed out",
                   "Temporary failure in name resolution", "No route to host", "IncompleteRead",
                   "certificate verify failed"):
        if marker in text:
            return marker
    return type(exc).__name__
