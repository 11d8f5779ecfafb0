"""An emulated DESaccess API (shared/DESACCESS.md) for the tests, on 127.0.0.1.

POST /login (form or JSON) → token; authenticated calls take `Authorization:
Bearer`, answer a `new_token` each (sliding lifetime) and report auth failures
as HTTP 200 with status "error" (Signature has expired / verification failed /
Missing authorization); a bad password is 401, a password to change is 406.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PREFIX = "/desaccess/api"


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "FakeApi"

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    def dispatch(self) -> None:
        api = self.server
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Type", "").startswith("application/json"):
            form = json.loads(raw or b"{}")
        else:
            form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        with api.lock:
            api.calls.append((self.command, path))
            down, delay, redirect = api.down, api.delay, api.redirect_login
        if down:
            return self.reply(503, {"status": "error", "message": "down"})
        if path == PREFIX + "/login" and self.command == "POST" and redirect:
            self.send_response(307)
            self.send_header("Location", redirect)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if path == PREFIX + "/login" and self.command == "POST":
            return self.login(form)
        if delay:
            time.sleep(delay)
        if path == PREFIX + "/logout":
            api.logouts += 1
            return self.reply(200, {"status": "ok"})
        with api.lock:
            api.auth_seen.append(self.headers.get("Authorization", ""))
        user, problem = api.check(self.headers.get("Authorization", ""))
        if problem:
            return self.reply(200, {"status": "error", "message": problem})
        extra = {"new_token": api.issue(user)}
        if path == PREFIX + "/job/list":
            jobs = [{k: j[k] for k in ("job_id", "job_status", "job_type", "job_name")} for j in api.jobs_of(user)]
            return self.reply(200, {"status": "ok", "jobs": jobs, **extra})
        if path == PREFIX + "/job/status" and self.command == "POST":
            wanted = form.get("job-id", "all")
            jobs = [j for j in api.jobs_of(user) if wanted in ("all", j["job_id"])]
            return self.reply(200, {"status": "ok", "jobs": jobs, **extra})
        if path == PREFIX + "/profile" and self.command == "POST":
            return self.reply(200, {"status": "ok", "ttl": api.token_seconds, **extra})
        return self.reply(404, {"status": "error", "message": "not found"})

    def login(self, form: dict) -> None:
        api = self.server
        name = (form.get("username") or form.get("email") or "").lower()
        if api.users.get(name) != form.get("password"):
            return self.reply(401, {"status": "error", "message": "Invalid username or password"})
        if name in api.must_change_password:
            return self.reply(406, {"status": "error", "message": "Password must be changed"})
        with api.lock:
            api.logins += 1
        return self.reply(200, {"status": "ok", "username": name, "token": api.issue(name), "message": "login ok"},
                          cookie=f"session={secrets.token_hex(8)}; Path=/")

    def reply(self, status: int, body: dict, cookie: str | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if cookie:  # a session cookie on sign-in: a client sharing the API's cookies would send it anywhere
            self.send_header("Set-Cookie", cookie)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class FakeApi(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, users: dict[str, str], jobs: dict[str, list[dict]], token_seconds: float = 3600) -> None:
        super().__init__(("127.0.0.1", 0), ApiHandler)
        self.users, self.jobs, self.token_seconds = users, jobs, token_seconds
        self.must_change_password: set[str] = set()
        self.tokens: dict[str, tuple[str, float]] = {}
        self.calls: list[tuple[str, str]] = []
        self.auth_seen: list[str] = []  # the Authorization header of every authenticated call
        self.logins = self.logouts = 0
        self.down = False
        self.delay = 0.0  # seconds every call but the login waits before answering (a slow API)
        self.redirect_login: str | None = None  # answer the login with a 307 to this URL
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{PREFIX}"

    def issue(self, user: str) -> str:
        token = secrets.token_hex(16)
        with self.lock:
            self.tokens[token] = (user, time.time() + self.token_seconds)
        return token

    def expire_tokens(self) -> None:
        """Every token issued so far expires now (as if its lifetime had passed)."""
        with self.lock:
            self.tokens = {t: (user, time.time() - 1) for t, (user, _) in self.tokens.items()}

    def check(self, header: str) -> tuple[str, str | None]:
        if not header.startswith("Bearer "):
            return "", "Missing authorization"
        with self.lock:
            found = self.tokens.get(header[len("Bearer "):])
        if found is None:
            return "", "Signature verification failed"
        if found[1] < time.time():
            return "", "Signature has expired"
        return found[0], None

    def jobs_of(self, user: str) -> list[dict]:
        with self.lock:
            return [dict(j) for j in self.jobs.get(user, [])]

    def start(self) -> "FakeApi":
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
