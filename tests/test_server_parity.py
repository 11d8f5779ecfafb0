"""The built-in DES-like server (demo, fault tests) must answer as nginx configured like DES does."""

import os
from urllib.parse import quote

import pytest
import requests

pytestmark = pytest.mark.nginx


def folders(sample):
    for root, dirs, _ in os.walk(sample.cutout_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        yield os.path.relpath(root, sample.cutout_dir)


def job_url(base, sample, rel=""):
    url = sample.url(base)
    if rel and rel != ".":
        url += "/".join(quote(s, safe="") for s in rel.split("/")) + "/"
    return url


def test_listings_are_byte_identical(nginx, server, sample):
    for rel in folders(sample):
        ours = requests.get(job_url(server.base_url, sample, rel) + "json", timeout=5)
        theirs = requests.get(job_url(nginx.base_url, sample, rel) + "json", timeout=5)
        assert theirs.status_code == ours.status_code == 200
        assert theirs.headers["Content-Type"] == ours.headers["Content-Type"] == "application/json"
        assert ours.content == theirs.content, rel


@pytest.mark.parametrize("path, method", [
    ("{user}/json", "GET"), ("{user}/cutout/json", "GET"), ("{user}/", "GET"), ("{user}/cutout/", "GET"),
    ("{user}/cutout/{job}", "GET"), ("{user}/cutout/{job}/", "GET"), ("{user}/cutout/{job}/nope/json", "GET"),
    ("{user}/cutout/{job}/summary.json/json", "GET"), ("{user}/cutout/{job}.log", "GET"),
    ("{user}/cutout/{job}.tar.gz", "HEAD"), ("{user}/cutout/{job}/odd%20names/.hidden", "GET"),
    ("{user}/cutout/{job}/odd%20names/json/json", "GET"), ("{user}/cutout/{job}/missing.fits", "GET"),
])
def test_status_codes(nginx, server, sample, path, method):
    path = path.format(user=sample.user, job=sample.cutout_job)
    ours = requests.request(method, server.base_url + path, allow_redirects=False, timeout=5)
    theirs = requests.request(method, nginx.base_url + path, allow_redirects=False, timeout=5)
    assert ours.status_code == theirs.status_code, path
    if theirs.status_code == 301:
        assert ours.headers["Location"].endswith(theirs.headers["Location"].split(":", 2)[-1].split("/", 1)[-1])


@pytest.mark.parametrize("headers", [
    {}, {"Range": "bytes=10-99"}, {"Range": "bytes=-100"}, {"Range": "bytes=5000000-"},
    {"Range": "bytes=99999999-"}, {"Range": "bytes=0-0"},
    {"Range": "bytes=0-9", "If-Range": "Thu, 01 Jan 1970 00:00:00 GMT"},
])
def test_file_answers(nginx, server, sample, headers):
    path = f"{sample.user}/cutout/{sample.cutout_job}/big.bin"
    ours = requests.get(server.base_url + path, headers=headers, timeout=5)
    theirs = requests.get(nginx.base_url + path, headers=headers, timeout=5)
    assert ours.status_code == theirs.status_code
    assert ours.headers.get("Content-Range") == theirs.headers.get("Content-Range")
    if theirs.status_code < 400:  # error pages name the server's version
        for h in ("ETag", "Last-Modified", "Content-Length", "Accept-Ranges"):
            assert ours.headers.get(h) == theirs.headers.get(h), h
        assert ours.content == theirs.content


def test_if_range_with_etag_and_date(nginx, server, sample):
    path = f"{sample.user}/cutout/{sample.cutout_job}/big.bin"
    for base in (server.base_url, nginx.base_url):
        head = requests.head(base + path, timeout=5)
        for validator in (head.headers["ETag"], head.headers["Last-Modified"]):
            r = requests.get(base + path, headers={"Range": "bytes=0-9", "If-Range": validator}, timeout=5)
            assert r.status_code == 206 and len(r.content) == 10
