"""Extended attributes through a real mount (getfattr, setfattr) and `desfs url`: a file's or folder's
URL and ETag, an account job folder's name, status and expiry; none costs a request."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import urllib.request

import pytest

from conftest import run_desfs

pytestmark = [pytest.mark.mount, pytest.mark.nginx]
needs_attr = pytest.mark.skipif(shutil.which("getfattr") is None, reason="getfattr: apt-get install attr")

USER, PASSWORD = "astrobuff", "s3cret-Pa55word"


def getfattr(path) -> dict[str, str]:
    """getfattr -d's answer (values of user.* attributes) as a dict."""
    out = subprocess.run(["getfattr", "-d", "--absolute-names", str(path)], capture_output=True, text=True,
                         check=True).stdout
    found = {}
    for line in out.splitlines():
        if "=" in line and not line.startswith("#"):
            name, _, value = line.partition("=")
            found[name] = value[1:-1].replace('\\"', '"')  # getfattr quotes the value and escapes its quotes
    return found


@pytest.fixture
def job(mount, sample, nginx):
    return mount(sample.url(nginx.base_url))


@needs_attr
def test_getfattr_shows_url_and_etag_without_a_request(job, nginx, sample):
    path = job.path / "odd names" / "with space.txt"
    os.stat(path)
    mark = nginx.mark()
    attrs = getfattr(path)
    url = sample.url(nginx.base_url) + "odd%20names/with%20space.txt"
    assert set(attrs) == {"user.desfs.url", "user.desfs.etag"}
    assert attrs["user.desfs.url"] == url
    assert getfattr(job.path / "odd names") == {"user.desfs.url": sample.url(nginx.base_url) + "odd%20names/"}
    assert getfattr(job.path) == {"user.desfs.url": sample.url(nginx.base_url)}
    assert nginx.requests_since(mark) == []  # listing and reading them: no request
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as answer:
        assert attrs["user.desfs.etag"] == answer.headers["ETag"]  # the server's own


def test_unknown_attributes_and_setting_any(job):
    path = job.path / "odd names" / "with space.txt"
    with pytest.raises(OSError) as no_such:
        os.getxattr(path, "user.desfs.nothing")
    assert no_such.value.errno == errno.ENODATA
    with pytest.raises(OSError) as acl:
        os.getxattr(path, "system.posix_acl_access")
    assert acl.value.errno in (errno.ENODATA, errno.EOPNOTSUPP)
    for name in ("user.desfs.url", "user.other"):
        with pytest.raises(OSError) as setting:
            os.setxattr(path, name, b"x")
        assert setting.value.errno == errno.EROFS
        with pytest.raises(OSError) as removing:
            os.removexattr(path, name)
        assert removing.value.errno == errno.EROFS


def test_desfs_url_prints_urls_in_order(job, sample, nginx):
    base = sample.url(nginx.base_url)
    result = run_desfs("url", str(job.path / "odd names" / "hash#1.txt"), str(job.path / "odd names"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [base + "odd%20names/hash%231.txt", base + "odd%20names/"]


def test_desfs_url_of_a_path_outside_a_mount_says_so(tmp_path):
    (tmp_path / "f").write_text("x")
    result = run_desfs("url", str(tmp_path / "f"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"desfs url: {tmp_path / 'f'}: no URL: not in a desfs mount, or a folder desfs " \
                                    "makes up (by-name)"


@pytest.fixture
def api(one_job_api):
    return one_job_api


@needs_attr
def test_account_job_folders_show_name_status_expiry(mount, api, nginx, sample, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESACCESS_")}
    env.update(HOME=str(tmp_path), DESACCESS_USER=USER, DESACCESS_PASSWORD=PASSWORD)
    m = mount(None, "--api-url", api.url, "--files-url", nginx.base_url, env=env)
    job_dir = m.path / "cutout" / sample.cutout_job
    os.listdir(m.path / "cutout")
    mark = nginx.mark()
    assert getfattr(job_dir) == {"user.desfs.url": sample.url(nginx.base_url), "user.desfs.job_name": "my cutouts",
                                 "user.desfs.status": "success", "user.desfs.expires": "2026-12-08 23:59:00"}
    sidecar = getfattr(m.path / "cutout" / f"{sample.cutout_job}.tar.gz")
    assert sidecar["user.desfs.url"] == f"{nginx.base_url.rstrip('/')}/{USER}/cutout/{sample.cutout_job}.tar.gz"
    assert getfattr(m.path / "cutout") == {"user.desfs.url": f"{nginx.base_url.rstrip('/')}/{USER}/cutout/"}
    assert getfattr(m.path) == {"user.desfs.url": f"{nginx.base_url.rstrip('/')}/{USER}/"}
    assert getfattr(m.path / "by-name") == {}
    assert nginx.requests_since(mark) == []
    result = run_desfs("url", str(m.path / "by-name" / "my cutouts"), str(m.path / "by-name"))
    assert result.stdout.splitlines() == [sample.url(nginx.base_url)]  # a link is followed to its job
    assert result.returncode == 1 and "by-name: no URL" in result.stderr


def test_xattrs_off_leaves_them_out(mount, sample, nginx):
    """--xattrs off: no attributes, and the kernel (told ENOSYS once) stops asking: `ls -l` of a folder
    costs no round trip per name for ACLs and labels."""
    m = mount(sample.url(nginx.base_url), "--xattrs", "off")
    for _ in range(2):
        with pytest.raises(OSError) as info:
            os.getxattr(m.path / "summary.json", "user.desfs.url")
        assert info.value.errno == errno.EOPNOTSUPP
    with pytest.raises(OSError) as listing:
        os.listxattr(m.path)
    assert listing.value.errno == errno.EOPNOTSUPP
    result = run_desfs("url", str(m.path / "summary.json"))
    assert result.returncode == 1 and "no URL" in result.stderr
