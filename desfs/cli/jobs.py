"""Command line: the DESaccess account (sign-in options, credentials, job ids as SOURCE) and `desfs jobs`.

The password travels from the command to a background mount through a pipe (mount.handoff):
never in argv (the process title), the environment or a log.
"""

from __future__ import annotations

import argparse
import errno
import json
import re
import sys
from urllib.parse import quote

from desfs.api import SITES, Api, Job
from desfs.cli.common import UsageError, shown
from desfs.client import JsonCaller
from desfs.credentials import Credentials, find_credentials
from desfs.errors import DesfsError
from desfs.settings import Settings

JOB_SOURCE = re.compile(r"^(?:(?P<type>[a-z_]+)/)?(?P<id>[0-9a-f]{32})(?P<rest>/.*)?$")

def add_account_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("DESaccess account (for a mount of every job, and job ids as SOURCE)")
    g.add_argument("--site", choices=sorted(SITES), default="public",
                   help="public: des.ncsa.illinois.edu (database desdr); collab: deslabs.ncsa.illinois.edu "
                        "(database dessci) (default: public)")
    g.add_argument("--user", metavar="NAME", help="DESaccess user name (else ~/.netrc, DESACCESS_USER, a prompt)")
    g.add_argument("--database", metavar="NAME", help="database to sign in to (default: the site's)")
    g.add_argument("--api-url", metavar="URL", help="the DESaccess API of another deployment (…/desaccess/api)")
    g.add_argument("--files-url", metavar="URL", help="its file server (…/files-desaccess/)")

def site_urls(args: argparse.Namespace) -> tuple[str, str, str]:
    """(API URL, files URL, database) of the chosen site, or of --api-url/--files-url."""
    host, database = SITES[args.site]
    api_url = (args.api_url or f"{host}/desaccess/api").rstrip("/")
    files_url = (args.files_url or f"{host}/files-desaccess/").rstrip("/") + "/"
    return api_url, files_url, args.database or database

def credentials(args: argparse.Namespace) -> Credentials:
    handed = getattr(args, "handed_credentials", None)  # a background mount's, from the command that started it
    if handed is not None:
        return handed
    return find_credentials(site_urls(args)[0], args.user)

def sign_in(args: argparse.Namespace, creds: Credentials | None = None) -> Api:
    """A signed-in Api; a refused sign-in or an unreachable API is an OSError with one clear line."""
    api_url, _, database = site_urls(args)
    creds = creds or credentials(args)
    settings = Settings.from_args(args)
    caller = JsonCaller(api_url, timeout=settings.timeout, retries=settings.retries, ca_bundle=settings.ca_bundle)
    api = Api(api_url, creds.username, creds.password, database, caller)
    try:
        api.login()
    except DesfsError as exc:
        if exc.errno == errno.EACCES:  # refused: the message says why
            raise
        raise DesfsError(f"cannot reach the DESaccess API at {api_url}: {exc.strerror}") from None
    return api

def resolve_source(args: argparse.Namespace, text: str) -> str:
    """The URL of SOURCE: a URL as it is; `<type>/<job_id>[/path]` or a job id through the account's job list."""
    if "://" in text:
        return text
    m = JOB_SOURCE.match(text.strip())
    if not m:
        raise UsageError(f"SOURCE must be a URL, <type>/<job_id> or a 32-character job id, got {text!r}")
    api = sign_in(args)
    jobs = [j for j in api.jobs() if j.job_id == m["id"] and (m["type"] in (None, j.job_type))]
    if not jobs:
        raise DesfsError(f"no job {m['id']} among the jobs of {api.username} (deleted or expired?)")
    job = jobs[0]
    rest = "/".join(quote(s, safe="") for s in (m["rest"] or "").split("/") if s)
    folder = f"{site_urls(args)[1]}{api.username}/{job.job_type}/{job.job_id}/"
    return folder + rest if rest else folder

def cmd_jobs(args: argparse.Namespace) -> int:
    jobs = sorted(sign_in(args).jobs(), key=lambda j: (j.job_type, j.time_complete, j.job_id))
    if args.json:
        json.dump([j.__dict__ for j in jobs], sys.stdout, indent=2)
        print()
        return 0
    print(table(jobs))
    return 0

def table(jobs: list[Job]) -> str:
    rows = [("TYPE", "ID", "NAME", "STATUS", "FINISHED", "EXPIRES")]
    rows += [tuple(shown(c, terminal=False) for c in (j.job_type, j.job_id, j.name, j.status, j.time_complete or "-",
                                                      j.expires or "-")) for j in jobs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
