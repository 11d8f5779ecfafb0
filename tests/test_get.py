"""`desfs get` and `desfs ls` as a user runs them, against nginx and the fault server."""

import os
import signal
import subprocess
import time

import pytest

from conftest import DESFS, ODD_NAMES, run_desfs, source_files

pytestmark = pytest.mark.nginx


def tree_files(folder):
    return {rel: open(p, "rb").read() for rel, p in source_files(folder).items()}


def assert_same_tree(src, dest):
    want, got = tree_files(src), tree_files(dest)
    assert sorted(got) == sorted(want)
    for rel in want:
        assert got[rel] == want[rel], rel
        assert int(os.stat(os.path.join(dest, rel)).st_mtime) == int(os.stat(os.path.join(src, rel)).st_mtime), rel
    leftovers = [n for _, _, files in os.walk(dest) for n in files if n.endswith(".desfs-part")]
    assert leftovers == []


def test_get_a_job_tree_from_nginx(nginx, sample, tmp_path):
    dest = tmp_path / "job"
    r = run_desfs("get", sample.url(nginx.base_url), str(dest), "-q")
    assert r.returncode == 0, r.stderr
    assert_same_tree(sample.cutout_dir, dest)
    assert all((dest / "odd names" / n).exists() for n in ODD_NAMES)
    assert "failed" in r.stderr and " 0 failed" in r.stderr
    assert os.path.getmtime(dest / "DES0226-1541") == os.path.getmtime(os.path.join(sample.cutout_dir, "DES0226-1541"))


def test_second_run_fetches_nothing(nginx, sample, tmp_path):
    dest = tmp_path / "job"
    assert run_desfs("get", sample.url(nginx.base_url), str(dest), "-q").returncode == 0
    mark = nginx.mark()
    r = run_desfs("get", sample.url(nginx.base_url), str(dest), "-q")
    assert r.returncode == 0 and "0 files" in r.stderr
    assert [p for m, p, *_ in nginx.requests_since(mark) if not p.endswith("/json")] == []


def test_default_destination_is_named_after_the_job(nginx, sample, tmp_path):
    r = run_desfs("get", sample.url(nginx.base_url, "query"), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert_same_tree(sample.query_dir, tmp_path / sample.query_job)


def test_include_exclude_and_dry_run(nginx, sample, tmp_path):
    url = sample.url(nginx.base_url)
    mark = nginx.mark()
    r = run_desfs("get", url, str(tmp_path / "dry"), "--dry-run", "--include", "*_r.fits")
    assert r.returncode == 0 and not (tmp_path / "dry").exists()
    assert [p for m, p, *_ in nginx.requests_since(mark) if not p.endswith("/json")] == []
    assert len(r.stdout.splitlines()) == 3 and all(line.endswith("_r.fits") for line in r.stdout.splitlines())
    assert "would fetch 3 files" in r.stderr
    r = run_desfs("get", url, str(tmp_path / "r"), "-q", "--include", "*_r.fits")
    assert r.returncode == 0
    assert sorted(os.path.basename(p) for p in source_files(tmp_path / "r")) == sorted(
        os.path.basename(p) for p in source_files(sample.cutout_dir) if p.endswith("_r.fits"))
    r = run_desfs("get", url, str(tmp_path / "x"), "-q", "--exclude", "*.fits", "--exclude", "odd names/*",
                  "--exclude", "big.bin")
    got = source_files(tmp_path / "x")
    assert got and not any(p.endswith(".fits") or p.startswith("odd names/") for p in got)


def test_single_file_from_a_folder_that_cannot_be_listed(nginx, sample, tmp_path):
    url = f"{nginx.base_url}{sample.user}/cutout/{sample.cutout_job}.log"
    r = run_desfs("get", url, "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    src = os.path.join(os.path.dirname(sample.cutout_dir), f"{sample.cutout_job}.log")
    assert (tmp_path / f"{sample.cutout_job}.log").read_bytes() == open(src, "rb").read()


def test_interrupted_download_resumes_without_refetching(server, sample, tmp_path, kill_after):
    dest = tmp_path / "job"
    server.faults.match, server.faults.slow_chunk_delay = "big.bin", 0.05
    proc = subprocess.Popen([*DESFS, "get", sample.url(server.base_url), str(dest), "-q", "-j", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kill_after(proc)
    part = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and part is None:
        # big.bin's part only: the small files' parts come and go (renamed when done) meanwhile
        parts = [os.path.join(r, n) for r, _, fs in os.walk(dest) for n in fs
                 if n.endswith(".desfs-part") and "big.bin" in n]
        if parts and os.path.getsize(parts[0]) > 256 * 1024:  # big.bin is slowed down: its part stays
            part = parts[0]
        time.sleep(0.05)
    assert part and "big.bin" in part
    others = len(source_files(sample.cutout_dir)) - 1
    while len(source_files(dest)) < others and time.monotonic() < deadline + 30:
        time.sleep(0.05)  # the small files finish meanwhile
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 130
    assert "interrupted" in proc.stderr.read()
    src = source_files(sample.cutout_dir)
    finished = source_files(dest)
    assert finished and "big.bin" not in finished
    for rel, path in finished.items():  # nothing truncated under a real name
        assert open(path, "rb").read() == open(src[rel], "rb").read(), rel
    had = os.path.getsize(part)
    server.reset()
    r = run_desfs("get", sample.url(server.base_url), str(dest), "-q")
    assert r.returncode == 0, r.stderr
    assert_same_tree(sample.cutout_dir, dest)
    fetched = [(p, rng) for m, p, rng in server.requests if m == "GET" and not p.endswith("/json")]
    assert not any(os.path.relpath(p, f"/files-desaccess/{sample.user}/cutout/{sample.cutout_job}") in finished
                   for p, _ in fetched)
    big = [rng for p, rng in fetched if p.endswith("big.bin")]
    assert len(big) == 1 and int(big[0].split("=")[1].split("-")[0]) >= had


def test_failed_files_are_listed_and_exit_1(server, sample, tmp_path):
    server.faults.match, server.faults.status, server.faults.status_count = "summary.json", 503, 100
    r = run_desfs("get", sample.url(server.base_url), str(tmp_path / "job"), "-q", "--retries", "1")
    assert r.returncode == 1
    assert "failed: summary.json" in r.stderr and "503" in r.stderr
    assert (tmp_path / "job" / f"positions_{sample.cutout_job}.csv").exists()
    assert not (tmp_path / "job" / "summary.json").exists()


def test_progress_lines_when_not_on_a_terminal(server, sample, tmp_path):
    server.faults.match, server.faults.slow_chunk_delay = "big.bin", 0.02
    r = subprocess.run([*DESFS, "get", sample.url(server.base_url), str(tmp_path / "job"), "--progress-every", "0.5"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    progress = [line for line in r.stderr.splitlines() if "%" in line and "files" in line]
    assert progress and "of" in progress[0] and "/s" in progress[0]


def test_get_errors_are_one_line(tmp_path, server, sample):
    r = run_desfs("get", f"{server.base_url}{sample.user}/cutout/{'0' * 32}/", str(tmp_path / "x"))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "not found" in r.stderr
    r = run_desfs("get", "cutout/" + "0" * 32, env=no_credentials_env())  # a job id needs a sign-in
    assert r.returncode == 1 and "no DESaccess credentials" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_desfs("get", "not-a-url-or-id")
    assert r.returncode == 2 and "URL" in r.stderr


def no_credentials_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESACCESS_")}
    env["HOME"] = "/nonexistent"
    return env


def test_ls(nginx, sample):
    url = sample.url(nginx.base_url)
    names = run_desfs("ls", url).stdout.splitlines()
    assert names[:3] == ["DES0226-1541", "DES0305-3415", "odd names"] and "summary.json" in names
    long = run_desfs("ls", "-l", url + "odd%20names/").stdout.splitlines()
    row = next(line for line in long if line.endswith(" with space.txt"))
    assert row.startswith("-r--r--r--") and "Nov" in row
    assert any(line.startswith("dr-xr-xr-x") and line.endswith(" json") for line in long)
    big = next(line for line in run_desfs("ls", "-l", url).stdout.splitlines() if line.endswith(" big.bin"))
    assert " 12M " in big
    rec = run_desfs("ls", "-R", url).stdout
    assert ".:\n" in rec and "./odd names/json:\ninside json.txt" in rec
    one = run_desfs("ls", "-l", url + "summary.json").stdout.strip()
    assert one.startswith("-r--r--r--") and one.endswith(" summary.json")
