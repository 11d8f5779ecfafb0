"""The disk cache of an account mount: the last job list is kept, and a mount whose API cannot be reached
(or --offline) starts from it, with a warning line, and reads what the disk cache holds."""

from __future__ import annotations

import os

import pytest

from conftest import run_desfs, wait_for
from test_account import PASSWORD, USER, account_options, api, env, files  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.mount, pytest.mark.nginx]


def umount(m) -> None:
    assert run_desfs("umount", str(m.path)).returncode == 0
    wait_for(lambda: "unmounted " in m.log_text())


def test_an_account_mount_starts_from_the_stored_job_list(mount, api, files, sample, env, tmp_path):  # noqa: F811
    env.update(DESACCESS_USER=USER, DESACCESS_PASSWORD=PASSWORD)
    folder = tmp_path / "cache"
    options = [*account_options(api, files), "--disk-cache", str(folder)]
    summary = f"cutout/{sample.cutout_job}/summary.json"
    first = mount(None, *options, env=env, name="first")
    jobs = sorted(os.listdir(first.path / "cutout"))
    data = (first.path / summary).read_bytes()
    umount(first)
    stored = list((folder / "listings").iterdir())
    assert stored and not any(PASSWORD.encode() in p.read_bytes() for p in stored)  # no password kept
    api.stop()  # the API cannot be reached

    second = mount(None, *options, env=env, name="second")
    assert "DESaccess API not reached" in second.log_text() and "job list of astrobuff stored" in second.log_text()
    assert sample.cutout_job in os.listdir(second.path / "cutout")
    assert set(os.listdir(second.path / "cutout")) <= set(jobs)
    assert (second.path / summary).read_bytes() == data
    umount(second)

    nginx = files[0]
    mark = nginx.mark()
    offline = mount(None, *options, "--offline", env=env, name="offline")
    assert (offline.path / summary).read_bytes() == data
    umount(offline)
    assert nginx.requests_since(mark) == []

    (tmp_path / "empty").mkdir()
    r = run_desfs("mount", str(tmp_path / "empty"), *account_options(api, files), "--disk-cache",
                  str(tmp_path / "nothing"), env=env)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "no job list" in r.stderr, r.stderr
