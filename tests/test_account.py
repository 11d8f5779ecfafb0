"""The account mount (`desfs mount ~/des`), `desfs jobs` and job ids as SOURCE, against an emulated
DESaccess API and nginx configured like the DES file server."""

import errno
import json
import os
import pty
import shutil
import time
from pathlib import Path

import pytest

from conftest import DESFS, free_port, run_desfs, source_files, wait_for
from fakeapi import FakeApi
from faultserver import FaultServer
from nginxserver import start_nginx, stop_nginx

pytestmark = [pytest.mark.mount, pytest.mark.nginx]

USER, PASSWORD = "astrobuff", "s3cret-Pa55word"
RUNNING_JOB = "f" * 32
DOOMED_JOB = "d" * 32


@pytest.fixture(scope="module")
def files(sample, tmp_path_factory):
    """A copy of the sample served by its own nginx (tests here delete jobs), with more jobs."""
    root = tmp_path_factory.mktemp("account-root")
    shutil.copytree(sample.root, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("a fifo"))
    user_dir = root / "files-desaccess" / USER
    shutil.copytree(user_dir / "query" / sample.query_job, user_dir / "query" / RUNNING_JOB)
    server, proc = start_nginx(str(root), tmp_path_factory.mktemp("account-nginx"))
    yield server, user_dir
    stop_nginx(proc)


def job(job_id, job_type, name, status="success", done="2026-11-24 23:59:00", expires="2026-12-08 23:59:00"):
    return {"job_id": job_id, "job_type": job_type, "job_name": name, "job_status": status,
            "job_time_start": "2026-11-24 23:50:00", "job_time_complete": done if status == "success" else "",
            "expiration_date": expires, "query_files": [], "cutout_files": []}


@pytest.fixture
def api(sample):
    jobs = [job(sample.cutout_job, "cutout", "my cutouts"), job(sample.query_job, "query", "gold sample"),
            job(RUNNING_JOB, "query", "my cutouts", status="started"), job("e" * 32, "cutout", "a/b")]
    server = FakeApi({USER: PASSWORD}, {USER: jobs}).start()
    yield server
    server.stop()


@pytest.fixture
def env(tmp_path):
    """The test's environment: no netrc, no DESACCESS_* unless a test adds them."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("DESACCESS_")}
    e["HOME"] = str(tmp_path / "home")
    (tmp_path / "home").mkdir()
    return e


def stat_errno(path):
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno
    return None


def account_options(api, files):
    return ["--api-url", api.url, "--files-url", files[0].base_url, "--timeout", "5", "--retries", "1"]


def test_every_job_of_the_account(mount, api, files, sample, env):
    env.update(DESACCESS_USER=USER, DESACCESS_PASSWORD=PASSWORD)
    m = mount(None, *account_options(api, files), env=env)
    assert sorted(os.listdir(m.path)) == ["by-name", "cutout", "query"]
    cutout = sorted(os.listdir(m.path / "cutout"))
    assert cutout == sorted([sample.cutout_job, f"{sample.cutout_job}.log", f"{sample.cutout_job}.tar.gz", "e" * 32])
    assert sorted(os.listdir(m.path / "query")) == sorted([sample.query_job, f"{sample.query_job}.log", RUNNING_JOB])
    job_dir = m.path / "cutout" / sample.cutout_job
    for rel, src in source_files(sample.cutout_dir).items():
        assert (job_dir / rel).read_bytes() == open(src, "rb").read(), rel
    tar = files[1] / "cutout" / f"{sample.cutout_job}.tar.gz"
    assert (m.path / "cutout" / f"{sample.cutout_job}.tar.gz").read_bytes() == tar.read_bytes()
    links = sorted(os.listdir(m.path / "by-name"))
    assert links == sorted(["a_b", "gold sample", "my cutouts", f"my cutouts-{RUNNING_JOB[:8]}"])
    assert os.readlink(m.path / "by-name" / "my cutouts") == f"../cutout/{sample.cutout_job}"
    assert (m.path / "by-name" / "gold sample" / "meta.json").read_bytes() == \
        open(os.path.join(sample.query_dir, "meta.json"), "rb").read()
    with pytest.raises(FileNotFoundError):
        os.stat(m.path / "cutout" / ("0" * 32))
    assert api.logouts == 0


def test_jobs_command(api, files, sample, env):
    env.update(DESACCESS_USER=USER, DESACCESS_PASSWORD=PASSWORD)
    r = run_desfs("jobs", *account_options(api, files), env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["TYPE", "ID", "NAME", "STATUS", "FINISHED", "EXPIRES"]
    row = next(line for line in lines if sample.cutout_job in line)
    assert "my cutouts" in row and "success" in row and "2026-11-24 23:59:00" in row and "2026-12-08" in row
    assert any(RUNNING_JOB in line and "started" in line for line in lines)
    data = json.loads(run_desfs("jobs", "--json", *account_options(api, files), env=env).stdout)
    assert {j["job_id"] for j in data} == {sample.cutout_job, sample.query_job, RUNNING_JOB, "e" * 32}


@pytest.mark.parametrize("case", ["bad password", "must change"])
def test_refused_sign_in_is_one_line(tmp_path, api, files, env, case):
    env.update(DESACCESS_USER=USER, DESACCESS_PASSWORD="wrong-password-123" if case == "bad password" else PASSWORD)
    if case == "must change":
        api.must_change_password.add(USER)
    (tmp_path / "m").mkdir()
    r = run_desfs("mount", str(tmp_path / "m"), *account_options(api, files), env=env)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert ("refused" if case == "bad password" else "changed") in r.stderr
    assert "wrong-password-123" not in r.stderr and PASSWORD not in r.stderr


def test_unreachable_api_is_one_line(tmp_path, files, env):
    env.update(DESACCESS_USER=USER, DESACCESS_PASSWORD=PASSWORD)
    (tmp_path / "m").mkdir()
    r = run_desfs("mount", str(tmp_path / "m"), "--api-url", f"http://127.0.0.1:{free_port()}/desaccess/api",
                  "--files-url", files[0].base_url, "--retries", "0", env=env)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "cannot reach" in r.stderr


def test_credentials_from_netrc(mount, api, files, env, tmp_path):
    netrc = Path(env["HOME"]) / ".netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    netrc.chmod(0o600)
    m = mount(None, *account_options(api, files), env=env)
    assert "cutout" in os.listdir(m.path)


def test_credentials_from_user_option_and_environment_password(mount, api, files, env):
    env["DESACCESS_PASSWORD"] = PASSWORD
    m = mount(None, "--user", USER, *account_options(api, files), env=env)
    assert "query" in os.listdir(m.path)


def test_credentials_from_a_prompt(tmp_path, api, files, env):
    mnt = tmp_path / "m"
    mnt.mkdir()
    pid, fd = pty.fork()
    if pid == 0:  # the child: desfs on a terminal
        os.execvpe(DESFS[0], [*DESFS, "mount", str(mnt), "--user", USER, *account_options(api, files),
                              "--log-file", str(tmp_path / "log")], env)
    try:
        out = b""
        deadline = time.monotonic() + 30
        while b"password" not in out.lower() and time.monotonic() < deadline:
            out += os.read(fd, 1024)
        os.write(fd, (PASSWORD + "\n").encode())
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert "cutout" in os.listdir(mnt)
    finally:
        run_desfs("umount", str(mnt))


def test_secrets_stay_out_of_logs_and_process_title(mount, api, files, env):
    env.update(DESACCESS_USER=USER, DESACCESS_PASSWORD=PASSWORD)
    m = mount(None, "--debug", *account_options(api, files), env=env)
    os.listdir(m.path / "cutout")
    pid = int(m.log_text().split("(pid ")[1].split(")")[0])
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert PASSWORD.encode() not in cmdline and PASSWORD.encode() not in environ
    log = m.log_text()
    assert "DEBUG" in log and PASSWORD not in log
    assert not any(tok in log for tok in api.tokens)


def test_job_deleted_during_a_mount_vanishes(mount, api, files, sample, env):
    user_dir = files[1]
    shutil.copytree(user_dir / "query" / sample.query_job, user_dir / "query" / DOOMED_JOB)
    api.jobs[USER].append(job(DOOMED_JOB, "query", "doomed"))
    env.update(DESACCESS_USER=USER, DESACCESS_PASSWORD=PASSWORD)
    m = mount(None, "--jobs-ttl", "1", *account_options(api, files), env=env)
    assert (m.path / "query" / DOOMED_JOB / "meta.json").read_bytes()
    doomed = [j for j in api.jobs[USER] if j["job_id"] == DOOMED_JOB]
    api.jobs[USER] = [j for j in api.jobs[USER] if j["job_id"] != DOOMED_JOB]
    shutil.move(user_dir / "query" / DOOMED_JOB, user_dir / "query" / "away")
    assert wait_for(lambda: DOOMED_JOB not in os.listdir(m.path / "query"))  # the next job list, after 1 s
    assert wait_for(lambda: stat_errno(m.path / "query" / DOOMED_JOB / "meta.json") == errno.ENOENT, 3)
    assert "doomed" not in os.listdir(m.path / "by-name")
    # its caches went with it: were it listed again, its listing and blocks are fetched again
    shutil.move(user_dir / "query" / "away", user_dir / "query" / DOOMED_JOB)
    mark = files[0].mark()
    api.jobs[USER] += doomed
    assert wait_for(lambda: DOOMED_JOB in os.listdir(m.path / "query"))
    with open(m.path / "query" / DOOMED_JOB / "meta.json", "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # not from the kernel's page cache
        assert f.read() == open(os.path.join(sample.query_dir, "meta.json"), "rb").read()
    asked = [p for _, p, *_ in files[0].requests_since(mark) if DOOMED_JOB in p]
    assert any(p.endswith("/meta.json") for p in asked) and any(p.endswith(f"{DOOMED_JOB}/json") for p in asked), \
        asked


def test_token_expiry_during_a_mount_is_renewed(mount, api, files, sample, env):
    env.update(DESACCESS_USER=USER, DESACCESS_PASSWORD=PASSWORD)
    m = mount(None, "--jobs-ttl", "1", *account_options(api, files), env=env)
    logins = api.logins
    api.expire_tokens()  # the token (and every new_token) has expired
    api.jobs[USER].append(job("b" * 32, "cutout", "new after expiry"))
    assert wait_for(lambda: "b" * 32 in os.listdir(m.path / "cutout"))  # the job list was really fetched again
    assert api.logins == logins + 1
    assert "signing in again" in m.log_text() and "keeping the last one" not in m.log_text()


def test_api_failing_later_keeps_the_last_job_list(mount, api, files, sample, env):
    env.update(DESACCESS_USER=USER, DESACCESS_PASSWORD=PASSWORD)
    m = mount(None, "--jobs-ttl", "1", *account_options(api, files), env=env)
    os.listdir(m.path / "cutout")
    api.down = True
    assert wait_for(lambda: os.listdir(m.path / "cutout") and "keeping the last one" in m.log_text())
    assert sample.cutout_job in os.listdir(m.path / "cutout")
    assert (m.path / "cutout" / sample.cutout_job / "summary.json").read_bytes()


@pytest.mark.parametrize("form", ["id", "type/id"])
def test_mount_and_get_by_job_id(mount, api, files, sample, env, tmp_path, form):
    env.update(DESACCESS_USER=USER, DESACCESS_PASSWORD=PASSWORD)
    source = sample.cutout_job if form == "id" else f"cutout/{sample.cutout_job}"
    m = mount(source, *account_options(api, files), env=env)
    assert (m.path / "summary.json").read_bytes() == open(os.path.join(sample.cutout_dir, "summary.json"), "rb").read()
    r = run_desfs("get", f"{source}/DES0226-1541", str(tmp_path / "got"), "-q", *account_options(api, files), env=env)
    assert r.returncode == 0, r.stderr
    assert len(source_files(tmp_path / "got")) == 14
    r = run_desfs("ls", "query/" + "0" * 32, *account_options(api, files), env=env)
    assert r.returncode == 1 and "no job" in r.stderr


def test_no_token_or_cookie_reaches_the_file_server(mount, api, sample, env):
    """An account mount holds an API token (and the API sets a cookie): the file server, and a host it
    redirects to, get neither (shared/DESACCESS.md: the file server has no authentication at all)."""
    files = FaultServer(sample.root).start()
    other = FaultServer(sample.root, host="127.0.0.2").start()  # another host, same files
    try:
        src = f"/files-desaccess/{USER}/cutout/{sample.cutout_job}/summary.json"
        files.faults.redirect = {src: other.base_url + src[len("/files-desaccess/"):]}
        env.update(DESACCESS_USER=USER, DESACCESS_PASSWORD=PASSWORD)
        m = mount(None, "--api-url", api.url, "--files-url", files.base_url, "--timeout", "5", "--retries", "1",
                  env=env)
        job_dir = m.path / "cutout" / sample.cutout_job
        assert (job_dir / "summary.json").read_bytes() == open(os.path.join(sample.cutout_dir, "summary.json"),
                                                                "rb").read()
        assert (m.path / "cutout" / f"{sample.cutout_job}.log").read_bytes().startswith(b"job ")
        assert os.listdir(job_dir / "DES0226-1541")
        assert other.count(contains="summary.json") >= 1 and files.count(suffix="/json") >= 2
        seen = list(files.headers_seen) + list(other.headers_seen)
        assert not [h for h in seen if {"authorization", "cookie"} & {k.lower() for k in h}]
        secrets = [*api.tokens, PASSWORD]
        assert not [v for h in seen for v in h.values() if any(s in v for s in secrets)]
        assert api.calls  # the account was really signed in to
    finally:
        files.stop()
        other.stop()


def test_a_running_jobs_listings_are_trusted_10_seconds(mount, api, files, sample, env):
    user_dir = files[1]
    env.update(DESACCESS_USER=USER, DESACCESS_PASSWORD=PASSWORD)
    m = mount(None, *account_options(api, files), env=env)
    running, finished = m.path / "query" / RUNNING_JOB, m.path / "query" / sample.query_job
    assert "late.csv" not in os.listdir(running) and "late.csv" not in os.listdir(finished)
    listed = time.monotonic()
    late = [user_dir / "query" / job_id / "late.csv" for job_id in (RUNNING_JOB, sample.query_job)]
    try:
        for path in late:
            path.write_text("written while the job runs\n")
        assert wait_for(lambda: "late.csv" in os.listdir(running), 20)
        assert 9 <= time.monotonic() - listed <= 10 + 4  # trusted for 10 s (not less; not much more)
        assert "late.csv" not in os.listdir(finished)  # a finished job's listing: --listing-ttl (120 s)
        assert (running / "late.csv").read_text() == "written while the job runs\n"
    finally:
        for path in late:
            path.unlink()
