"""The API, credentials and account layers on their own: an emulated API, no FUSE."""

import errno
import io
import os

import pytest

from desfs.account import AccountTree, safe_name
from desfs.api import Api, LoginFailed
from desfs.client import JsonCaller
from desfs.credentials import NoCredentials, find_credentials
from desfs.errors import NotFound
from desfs.settings import Settings

from fakeapi import FakeApi

USER, PASSWORD = "astrobuff", "pa55-w0rd"


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def fake(sample):
    jobs = [{"job_id": sample.cutout_job, "job_type": "cutout", "job_name": "same", "job_status": "success",
             "job_time_complete": "2026-11-24 23:59:00", "expiration_date": "2026-12-08 23:59:00"},
            {"job_id": sample.query_job, "job_type": "query", "job_name": "same", "job_status": "success"},
            {"job_id": "a" * 32, "job_type": "cutout", "job_name": "../../etc", "job_status": "started"}]
    server = FakeApi({USER: PASSWORD}, {USER: jobs}).start()
    yield server
    server.stop()


def api_for(fake, password=PASSWORD, user="AstroBuff"):
    return Api(fake.url, user, password, "desdr", JsonCaller(fake.url, timeout=5, retries=1, backoff=0.01))


def test_login_gives_the_canonical_name_and_each_answer_slides_the_token(fake):
    api = api_for(fake)
    api.login()
    assert api.username == USER
    api.call("POST", "/profile")
    api.call("POST", "/profile")
    first, second = fake.auth_seen[-2:]
    assert first != second  # the second call used the new_token of the first
    assert PASSWORD not in repr(api)


def test_expired_token_signs_in_again_once(fake):
    api = api_for(fake)
    api.login()
    fake.expire_tokens()
    assert len(api.jobs()) == 3
    assert fake.logins == 2


@pytest.mark.parametrize("case", ["bad", "change"])
def test_refused_sign_in(fake, case):
    if case == "change":
        fake.must_change_password.add(USER)
    api = api_for(fake, password="nope" if case == "bad" else PASSWORD)
    with pytest.raises(LoginFailed) as info:
        api.login()
    assert info.value.errno == errno.EACCES and "nope" not in str(info.value)
    assert ("refused" if case == "bad" else "changed") in str(info.value)


def test_jobs_merge_status_details(fake, sample):
    api = api_for(fake)
    jobs = {j.job_id: j for j in api.jobs()}
    assert jobs[sample.cutout_job].expires == "2026-12-08 23:59:00" and jobs[sample.cutout_job].finished
    assert not jobs["a" * 32].finished


def test_credentials_order(tmp_path):
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine des.example.org login netuser password netpass\n")
    netrc.chmod(0o600)
    api = "https://des.example.org/desaccess/api"
    env = {"DESACCESS_USER": "envuser", "DESACCESS_PASSWORD": "envpass"}
    no_tty = io.StringIO()
    assert find_credentials(api, None, env, no_tty, str(netrc)).source == "netrc"
    c = find_credentials(api, "envuser", env, no_tty, str(netrc))  # --user not the netrc login
    assert (c.username, c.password, c.source) == ("envuser", "envpass", "environment")
    c = find_credentials(api, "other", {"DESACCESS_PASSWORD": "p"}, no_tty, str(netrc))
    assert (c.username, c.source) == ("other", "environment")
    with pytest.raises(NoCredentials) as info:
        find_credentials(api, None, {}, no_tty, str(tmp_path / "none"))
    assert "des.example.org" in str(info.value)
    assert "envpass" not in repr(find_credentials(api, None, env, no_tty, str(tmp_path / "none")))


def test_safe_names():
    assert safe_name("a/b") == "a_b" and safe_name("..") == "" and safe_name("x\x00y") == "x_y"
    assert len(safe_name("é" * 300).encode()) <= 200


def test_account_tree_routes_without_fuse(fake, server, sample):
    api = api_for(fake)
    api.login()
    clock = Clock()
    tree = AccountTree(api, server.base_url, Settings(jobs_ttl=600, timeout=5, retries=1), timer=clock)
    try:
        assert list(tree.list_dir("/")) == ["cutout", "query", "by-name"]
        cutout = tree.list_dir("/cutout")
        assert set(cutout) == {sample.cutout_job, f"{sample.cutout_job}.log", f"{sample.cutout_job}.tar.gz", "a" * 32}
        heads = server.count("HEAD")
        tree.list_dir("/cutout")
        assert server.count("HEAD") == heads  # within the running job's listing TTL: nothing checked again
        clock.now += 11
        tree.list_dir("/cutout")
        assert server.count("HEAD") == heads + 2  # the running job's sidecars are checked again; finished ones not
        links = tree.list_dir("/by-name")
        assert set(links) == {"same", f"same-{sample.query_job[:8]}", ".._.._etc"}  # "/" made "_"
        assert tree.readlink("/by-name/same").startswith("../")
        e = tree.lookup(f"/cutout/{sample.cutout_job}/summary.json")
        data = tree.read(f"/cutout/{sample.cutout_job}/summary.json", e, 0, e.size)
        assert data == open(os.path.join(sample.cutout_dir, "summary.json"), "rb").read()
        log = tree.lookup(f"/cutout/{sample.cutout_job}.log")
        assert tree.read(f"/cutout/{sample.cutout_job}.log", log, 0, log.size).startswith(b"job ")
        with pytest.raises(NotFound):
            tree.lookup("/cutout/" + "0" * 32)
        with pytest.raises(NotFound):
            tree.lookup("/nosuchtype")
    finally:
        tree.close()
