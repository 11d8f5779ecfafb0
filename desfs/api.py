"""API layer: the DESaccess job API (login, job list and status), as shared/DESACCESS.md describes it.

Speaks to the API through client.JsonCaller (the HTTP layer); knows nothing of
files, caches or FUSE. Holds the password and token in memory only; neither
ever appears in a log line or an error message. Never calls /logout (it would
also cancel the session that running jobs use).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from desfs.client import JsonCaller
from desfs.errors import AccessDenied, DesfsError

log = logging.getLogger(__name__)

SITES = {
    "public": ("https://des.ncsa.illinois.edu", "desdr"),
    "collab": ("https://deslabs.ncsa.illinois.edu", "dessci"),
}
AUTH_ERRORS = ("Signature has expired", "Signature verification failed", "Missing authorization")


class LoginFailed(AccessDenied):
    """The API refused the credentials (401), or wants the password changed first (406)."""


@dataclass(frozen=True)
class Job:
    job_id: str
    job_type: str  # cutout, query, ...
    name: str
    status: str  # init, started, success, failure, unknown
    time_complete: str = ""  # "YYYY-MM-DD HH:MM:SS" UTC, empty while running
    expires: str = ""

    @property
    def finished(self) -> bool:
        return self.status in ("success", "failure")


class Api:
    """A signed-in DESaccess API session: the token slides with every answer, and is renewed
    by logging in again once when the API says it expired."""

    def __init__(self, api_url: str, username: str, password: str, database: str, caller: JsonCaller) -> None:
        self.api_url = api_url.rstrip("/")
        self.username = username
        self._password = password
        self.database = database
        self._caller = caller
        self._token: str | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the password or token
        return f"Api({self.api_url!r}, user={self.username!r})"

    def login(self) -> None:
        status, body = self._caller.call("POST", f"{self.api_url}/login",
                                         {"username": self.username, "password": self._password,
                                          "database": self.database})
        if status == 401:
            raise LoginFailed(f"DESaccess refused the sign-in of {self.username!r}: {_message(body)}")
        if status == 406:
            raise LoginFailed(f"DESaccess wants the password of {self.username!r} changed first "
                              "(sign in on the website once)")
        if status != 200 or body.get("status") != "ok" or not body.get("token"):
            raise DesfsError(f"DESaccess sign-in failed (HTTP {status}): {_message(body)}")
        with self._lock:
            self._token = body["token"]
            self.username = body.get("username") or self.username  # the canonical name, used in file paths
        log.info("signed in to %s as %s", self.api_url, self.username)

    def call(self, method: str, endpoint: str, form: dict | None = None) -> dict:
        """An authenticated call; its new_token is kept; one fresh login if the token expired."""
        renewed = False
        while True:
            with self._lock:
                token = self._token
            if token is None:
                self.login()
                continue
            status, body = self._caller.call(method, f"{self.api_url}{endpoint}", form, token=token)
            if body.get("new_token"):
                with self._lock:
                    if self._token == token:
                        self._token = body["new_token"]
            if status == 200 and body.get("status") == "ok":
                return body
            message = _message(body)
            if not renewed and (status in (401, 403) or any(m in message for m in AUTH_ERRORS)):
                log.info("DESaccess token no longer valid (%s): signing in again", message)
                renewed = True
                with self._lock:
                    if self._token in (token, body.get("new_token")):
                        self._token = None
                continue
            raise DesfsError(f"DESaccess {endpoint} failed (HTTP {status}): {message}")

    def jobs(self) -> list[Job]:
        """The account's jobs (deleted ones are not listed), with times from job/status."""
        listed = self.call("GET", "/job/list").get("jobs") or []
        if not isinstance(listed, list):
            raise DesfsError(f"DESaccess /job/list answered a job list that is not a list ({type(listed).__name__})")
        detail = {}
        try:
            statuses = self.call("POST", "/job/status", {"job-id": "all"}).get("jobs")
            for j in statuses if isinstance(statuses, list) else []:
                if isinstance(j, dict) and j.get("job_id"):
                    detail[j["job_id"]] = j
        except DesfsError as exc:  # the list alone is enough to mount
            log.warning("job status unavailable: %s", exc)
        jobs = []
        for j in listed:
            if not (isinstance(j, dict) and isinstance(j.get("job_id"), str) and isinstance(j.get("job_type"), str)):
                continue
            d = detail.get(j["job_id"], {})
            jobs.append(Job(job_id=j["job_id"], job_type=j["job_type"], name=str(j.get("job_name") or ""),
                            status=str(j.get("job_status") or d.get("job_status") or "unknown"),
                            time_complete=str(d.get("job_time_complete") or ""),
                            expires=str(d.get("expiration_date") or "")))
        return jobs


def _message(body: dict) -> str:
    message = body.get("message") or body.get("msg") or ""
    return str(message)[:200] or "no message"
