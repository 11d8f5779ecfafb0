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


def test_the_stored_blocks_of_a_deleted_job_are_dropped(mount, api, files, sample, env, tmp_path):  # noqa: F811
    import shutil

    from desfs.diskcache import DiskStore
    from test_account import job

    env.update(DESACCESS_USER=USER, DESACCESS_PASSWORD=PASSWORD)
    nginx, user_dir = files
    doomed = "c" * 32
    shutil.copytree(user_dir / "query" / sample.query_job, user_dir / "query" / doomed)
    try:
        api.jobs[USER].append(job(doomed, "query", "doomed"))
        folder = tmp_path / "cache"
        options = [*account_options(api, files), "--disk-cache", str(folder), "--jobs-ttl", "1"]
        base = f"{nginx.base_url}{USER}/"

        def stored(job_id):
            store = DiskStore(str(folder), 1 << 30)
            try:
                return [u for u in store.urls_below(base) if f"/{job_id}/" in u]
            finally:
                store.close()

        # deleted while mounted: dropped at once
        m = mount(None, *options, env=env, name="m")
        for job_id in (doomed, sample.query_job):
            assert (m.path / "query" / job_id / "meta.json").read_bytes()
        wait_for(lambda: stored(doomed) and stored(sample.query_job))  # (written behind the reads)
        api.jobs[USER] = [j for j in api.jobs[USER] if j["job_id"] != doomed]
        wait_for(lambda: doomed not in os.listdir(m.path / "query"))
        wait_for(lambda: not stored(doomed))
        assert stored(sample.query_job)

        # deleted while not mounted: dropped at the next mount
        api.jobs[USER].append(job(doomed, "query", "doomed"))
        wait_for(lambda: doomed in os.listdir(m.path / "query"))
        for name in os.listdir(m.path / "query" / doomed):  # (the kernel may keep meta.json's pages: each one)
            with open(m.path / "query" / doomed / name, "rb") as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                f.read()
        assert wait_for(lambda: stored(doomed))
        umount(m)
        api.jobs[USER] = [j for j in api.jobs[USER] if j["job_id"] != doomed]
        mount(None, *options, env=env, name="again")
        wait_for(lambda: not stored(doomed))
        assert stored(sample.query_job)
    finally:
        shutil.rmtree(user_dir / "query" / doomed)
