"""Real FUSE mounts through the CLI against nginx configured like the DES file server."""

import errno
import filecmp
import mmap
import os
import random
import stat
import subprocess
import threading
import time

import pytest

from conftest import BIG_SIZE, ODD_NAMES, source_files
from nginxserver import start_nginx, stop_nginx

pytestmark = [pytest.mark.mount, pytest.mark.nginx]


@pytest.fixture
def job(mount, nginx, sample):
    return mount(sample.url(nginx.base_url))


def test_every_file_reads_back_byte_identical(job, sample):
    files = source_files(sample.cutout_dir)
    assert len(files) >= 38 and any(name in rel for rel in files for name in ODD_NAMES)
    for rel, src in files.items():
        with open(src, "rb") as a, open(job.path / rel, "rb") as b:
            assert a.read() == b.read(), rel


def test_listing_matches_source_and_hides_what_nginx_hides(job, sample):
    for root, dirs, files in os.walk(sample.cutout_dir):
        rel = os.path.relpath(root, sample.cutout_dir)
        expected = sorted(n for n in dirs + files if not n.startswith(".") and not stat.S_ISFIFO(
            os.lstat(os.path.join(root, n)).st_mode))
        assert sorted(os.listdir(job.path / rel)) == expected, rel
    assert not (job.path / "odd names" / ".hidden").exists()
    assert not (job.path / "odd names" / "a fifo").exists()


def test_attributes(job, sample):
    st = os.stat(job.path / "big.bin")
    src = os.stat(os.path.join(sample.cutout_dir, "big.bin"))
    assert stat.S_IMODE(st.st_mode) == 0o444 and stat.S_ISREG(st.st_mode)
    assert st.st_size == BIG_SIZE and int(st.st_mtime) == int(src.st_mtime)
    assert st.st_uid == os.getuid() and st.st_blksize >= 128 * 1024 and st.st_blocks == (BIG_SIZE + 511) // 512
    d = os.stat(job.path / "DES0226-1541")
    assert stat.S_IMODE(d.st_mode) == 0o555 and stat.S_ISDIR(d.st_mode)
    assert os.stat(job.path / "odd names" / "empty.dat").st_size == 0


def test_ls_l_of_a_folder_costs_one_listing_request(job, nginx):
    mark = nginx.mark()
    out = subprocess.run(["ls", "-l", str(job.path / "odd names")], capture_output=True, text=True, check=True).stdout
    assert "with space.txt" in out and "hash#1.txt" in out
    reqs = nginx.requests_since(mark)
    assert [(m, p.rsplit("/", 2)[-2:]) for m, p, *_ in reqs] == [("GET", ["odd names", "json"])], reqs
    subprocess.run(["ls", "-l", str(job.path / "odd names")], capture_output=True, check=True)
    assert len(nginx.requests_since(mark)) == 1  # within the listing TTL: no request at all


def test_missing_name_is_enoent_without_a_request(job, nginx):
    os.listdir(job.path)
    mark = nginx.mark()
    with pytest.raises(FileNotFoundError):
        os.stat(job.path / "no-such-file.fits")
    assert nginx.requests_since(mark) == []


def test_partial_reads_fetch_only_ranges(job, nginx, sample):
    os.stat(job.path / "big.bin")
    src = open(os.path.join(sample.cutout_dir, "big.bin"), "rb").read()
    mark = nginx.mark()
    with open(job.path / "big.bin", "rb", buffering=0) as f:  # a FITS header read
        assert f.read(2880) == src[:2880]
    header = [r for r in nginx.requests_since(mark) if r[1].endswith("big.bin")]
    assert len(header) == 1 and header[0][2] == "bytes=0-1048575" and header[0][3] == 206, header
    mark = nginx.mark()
    with open(job.path / "big.bin", "rb") as f:  # buffered: the kernel reads ahead of it
        f.seek(6_000_000)
        assert f.read(100) == src[6_000_000:6_000_100]
    reqs = [r for r in nginx.requests_since(mark) if r[1].endswith("big.bin")]
    assert reqs and all(r[2].startswith("bytes=") and r[3] == 206 for r in reqs), reqs
    assert sum(r[4] for r in reqs) <= 4 * 1024 * 1024 < BIG_SIZE / 3, reqs


@pytest.mark.parametrize("action", [
    lambda p: open(p / "summary.json", "w"),
    lambda p: open(p / "summary.json", "a"),
    lambda p: open(p / "summary.json", "r+"),
    lambda p: open(p / "new-file", "w"),
    lambda p: os.mkdir(p / "new-folder"),
    lambda p: os.unlink(p / "summary.json"),
    lambda p: os.rmdir(p / "DES0226-1541"),
    lambda p: os.rename(p / "summary.json", p / "other.json"),
    lambda p: os.chmod(p / "summary.json", 0o644),
    lambda p: os.truncate(p / "summary.json", 0),
    lambda p: os.symlink("summary.json", p / "link"),
    lambda p: os.utime(p / "summary.json", (0, 0)),
], ids=["w", "a", "r+", "create", "mkdir", "unlink", "rmdir", "rename", "chmod", "truncate", "symlink", "utime"])
def test_writes_answer_erofs(job, action):
    with pytest.raises(OSError) as info:
        action(job.path)
    assert info.value.errno == errno.EROFS


def test_shell_tools(job, sample, tmp_path):
    run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout  # noqa: E731
    lsr = run("ls", "-lR", str(job.path))
    assert "DESJ022640.4160-154120.0040_r.fits" in lsr and "ünïcødé ✓.txt" in lsr
    found = run("find", str(job.path), "-name", "*.fits").split("\n")
    assert len([f for f in found if f]) == 15
    files = run("find", str(job.path), "-type", "f", "-printf", "x").count("x")
    assert files == len(source_files(sample.cutout_dir))
    du = int(run("du", "-s", "--block-size=1", str(job.path)).split()[0])
    assert du >= BIG_SIZE
    summary = open(os.path.join(sample.cutout_dir, "summary.json")).read()
    assert run("cat", str(job.path / "summary.json")) == summary
    assert run("head", "-c", "20", str(job.path / "summary.json")) == summary[:20]
    assert run("tail", "-c", "20", str(job.path / "summary.json")) == summary[-20:]
    fits = job.path / "DES0305-3415" / "DESJ030510.9606-341521.6000" / "DESJ030510.9606-341521.6000_g.fits"
    assert "FITS" in run("file", str(fits))
    assert "PNG image" in run("file", str(fits).replace("_g.fits", "_irg_stiff.png"))
    run("cp", "-r", str(job.path), str(tmp_path / "copy"))
    cmp = filecmp.dircmp(sample.cutout_dir, tmp_path / "copy", ignore=[".hidden", "a fifo"])
    assert not _differences(cmp)


def _differences(cmp: filecmp.dircmp) -> list:
    problems = cmp.left_only + cmp.right_only + cmp.diff_files + cmp.funny_files
    for sub in cmp.subdirs.values():
        problems += _differences(sub)
    return problems


def test_python_seek_read_and_mmap(job, sample):
    src = open(os.path.join(sample.cutout_dir, "big.bin"), "rb").read()
    with open(job.path / "big.bin", "rb") as f:
        f.seek(-1000, os.SEEK_END)
        assert f.read() == src[-1000:]
        f.seek(1_048_570)
        assert f.read(20) == src[1_048_570:1_048_590]  # across a block boundary
        assert f.read(0) == b""
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            assert m[2_000_000:2_000_050] == src[2_000_000:2_000_050]
            assert m[-5:] == src[-5:]


@pytest.mark.parametrize("memmap", [True, False])
def test_astropy_fits(job, sample, memmap):
    from astropy.io import fits
    import numpy as np

    rel = "DES0226-1541/DESJ022640.4160-154120.0040/DESJ022640.4160-154120.0040_r.fits"
    with fits.open(job.path / rel, memmap=memmap) as mounted, fits.open(os.path.join(sample.cutout_dir, rel)) as src:
        assert mounted[0].header["OBJECT"] == "DESJ022640.4160-154120.0040"
        assert np.array_equal(mounted[0].data, src[0].data)


def test_concurrent_random_reads_match_source(job, sample):
    src = open(os.path.join(sample.cutout_dir, "big.bin"), "rb").read()
    errors = []

    def reader(seed):
        rng = random.Random(seed)
        try:
            with open(job.path / "big.bin", "rb") as f:
                for _ in range(40):
                    offset, length = rng.randrange(BIG_SIZE), rng.randrange(1, 300_000)
                    f.seek(offset)
                    if f.read(length) != src[offset:offset + length]:
                        errors.append((seed, offset, length))
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []


def test_query_job_fits_table(mount, nginx, sample):
    from astropy.io import fits

    q = mount(sample.url(nginx.base_url, "query"), name="query")
    with fits.open(q.path / "results.fits") as h:
        assert len(h[1].data) == 2000 and h[1].columns.names[0] == "COADD_OBJECT_ID"
    assert open(q.path / "results.csv").readline().startswith("COADD_OBJECT_ID,RA")


def test_mount_of_a_subfolder(mount, nginx, sample):
    sub = mount(sample.url(nginx.base_url) + "odd%20names/", name="sub")
    assert "with space.txt" in os.listdir(sub.path)
    assert open(sub.path / "json" / "inside json.txt", "rb").read() == b"in a folder named json\n"


def test_stopped_nginx_gives_eio_within_the_timeout(mount, sample, tmp_path):
    own, proc = start_nginx(sample.root, tmp_path / "nginx")
    try:
        m = mount(sample.url(own.base_url), "--timeout", "3", "--retries", "1")
        assert open(m.path / "summary.json", "rb").read()
        stop_nginx(proc)
        started = time.monotonic()
        with pytest.raises(OSError) as info:
            open(m.path / "DES0305-3415" / "DESJ030510.9606-341521.6000" / "DESJ030510.9606-341521.6000_g.fits", "rb")
        assert info.value.errno == errno.EIO  # refused: not a timeout
        assert time.monotonic() - started < 3  # not --timeout: a refused connection fails at once
        with pytest.raises(OSError) as info:
            open(m.path / f"positions_{sample.cutout_job}.csv", "rb").read()
        assert info.value.errno == errno.EIO
    finally:
        stop_nginx(proc)


def test_reread_of_an_unchanged_file_is_served_by_the_page_cache(mount, nginx, sample):
    m = mount(sample.url(nginx.base_url), "--cache-size", "4M", name="small-cache")  # smaller than big.bin
    data = source_files(sample.cutout_dir)["big.bin"]
    assert (m.path / "big.bin").read_bytes() == open(data, "rb").read()
    mark = nginx.mark()
    assert (m.path / "big.bin").read_bytes() == open(data, "rb").read()  # a new open, same version
    # The page cache is best effort (this machine's kernel reclaims it eagerly): allow a third of the
    # file to be fetched again. Without keeping it, at least 8 MiB would be: only 4 MiB fit the block cache.
    fetched = sum(r[4] for r in nginx.requests_since(mark) if r[1].endswith("big.bin"))
    assert fetched <= BIG_SIZE // 3, fetched


def test_kernel_reads_ahead_a_whole_block_on_a_root_mount(job):
    """libfuse 3 lets the kernel send 1 MiB reads; the mount's readahead (128 KiB unless raised,
    which only root may) decides whether it does. desfs raises it when it can, before it is ready."""
    from desfs.fuse_ops import fuse_version_major

    st = os.stat(job.path)
    with open(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb") as f:
        readahead = int(f.read())
    raised = os.geteuid() == 0 and fuse_version_major >= 3
    assert readahead == (1024 if raised else 128)
    assert f"libfuse {fuse_version_major}; kernel readahead {readahead} KiB" in job.log_text()
