"""desfs benchmark (not a test; run: bash .ci/bench).

Starts nginx configured like the DES file server on loopback, and a latency
proxy in front of it that plays a far server (default 40 ms each way, each
connection paced to 16 MB/s). On both, on the same files, it measures:

  1. sequential read of a large file through desfs vs a direct single-stream
     download (curl) of the same URL, both timed the same way: from the first
     bytes received to the last (curl's own timers; for desfs, from the return
     of the first 1 MiB read), so neither counts connecting, the first request
     or curl's start-up;
  2. reading the header of a 1 GiB FITS file with astropy: bytes and time;
  3. a cold `ls -lR` of a job tree with a folder of 5000 files: time, requests
     and entries (checked against the tree on disk). A mount lists its root when
     it mounts, so this mount trusts listings for LS_TTL seconds only, and the
     timer starts once the root's listing has expired: every folder, the root
     too, is listed during the timed run. `ls -l` of the 5000-file folder: its
     own listing, on a fresh mount (the root's listing, made at mount time, only
     finds the folder's name);
  4. re-reading the file of (1), already read: MB/s;
  5. from memory: the file of (1) read again through a mount whose block cache
     holds all of it (--cache-size twice the file), after the kernel's page cache
     was dropped (/proc/sys/vm/drop_caches, as root): MB/s, and the requests made
     during it (0);
  6. the peak resident memory of the desfs process during (1);
  7. downloading a whole job (hundreds of small files, a few large ones) with
     `desfs get` vs the documentation's sequential script;
  7. (loopback) re-reading the file of (1) after an unmount and a new mount, from the
     disk cache, vs reading the same file from local disk; and how long a mount takes
     to start with a disk cache of 100 000 blocks vs an empty one.

Every mount of (1)-(5) has a fresh disk cache of its own, so that they measure the network.

  8. the far link (`--only link` runs it alone): a proxy with 40 ms each way, 16 MB/s a connection and
     100 MB/s for all connections together, in front of nginx and of the emulated API; the link's
     capacity, aria2c -x16, rclone mounts, desfs's sequential and cold random reads, `desfs get`, a
     300-job account and a 1040-folder job (see measure_link and README "The far link").

prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from latencyproxy import LatencyProxy, Link  # noqa: E402
from nginxserver import start_nginx, stop_nginx  # noqa: E402

from desfs.sample import make_sample  # noqa: E402

MiB = 1024 * 1024
DESFS = [sys.executable, "-m", "desfs"]
GET_JOB = "0123456789abcdef0123456789abcdef"
LS_TTL = 2.0  # seconds the cold ls -lR's mount trusts a listing: its root listing expires before the timer


def build_data(root: Path, size_mib: int, many: int) -> tuple[str, str]:
    """The sample jobs plus big.bin, a sparse 1 GiB big.fits and a folder of `many` files."""
    sample = make_sample(str(root), user="bench")
    job = Path(sample.cutout_dir)
    with open(job / "big.bin", "wb") as f:
        for _ in range(size_mib // 16):
            f.write(os.urandom(16 * MiB))
    side = 16384  # 16384² float32 = 1 GiB of data after one header block
    cards = [f"{'SIMPLE':<8}= {'T':>20}", f"{'BITPIX':<8}= {-32:>20}", f"{'NAXIS':<8}= {2:>20}",
             f"{'NAXIS1':<8}= {side:>20}", f"{'NAXIS2':<8}= {side:>20}", f"{'OBJECT':<8}= 'BENCH   '", "END"]
    header = "".join(c.ljust(80) for c in cards).ljust(2880).encode()
    with open(job / "big.fits", "wb") as f:
        f.write(header)
        f.truncate(2880 + -(-side * side * 4 // 2880) * 2880)  # data padded to whole FITS blocks
    (job / "many").mkdir()
    for i in range(many):
        (job / "many" / f"DESJ{i:06d}_r.fits").write_bytes(b"x" * (i % 97))
    get_job = Path(sample.cutout_dir).parent / GET_JOB  # for (6): a cutout job of a usual shape
    for t in range(6):
        for o in range(10):
            folder = get_job / f"DES{t:04d}-1541" / f"DESJ02264{o}.4160-154120.0040"
            folder.mkdir(parents=True)
            for band in "grizy":
                (folder / f"cutout_{band}.fits").write_bytes(os.urandom(20_160))
    for i in range(3):
        (get_job / f"stack_{i}.fits").write_bytes(os.urandom(16 * MiB))
    return sample.cutout_job, sample.user


class Mount:
    """A desfs mount through the CLI, with its process id from the log."""

    def __init__(self, url: str | None, where: Path, *options: str, env: dict | None = None) -> None:
        """A mount of the job at `url`, or of the account (url None: credentials and --api-url in `env`, options)."""
        self.path = where
        where.mkdir(parents=True, exist_ok=True)
        self.log = where.with_suffix(".log")
        if "--disk-cache" not in options:  # a cold disk cache of its own: the measures are of the network
            options = (*options, "--disk-cache", str(where.with_suffix(".cache")))
        started = time.monotonic()
        r = subprocess.run([*DESFS, "mount", *([url] if url else []), str(where), "--log-file", str(self.log),
                            *options], capture_output=True, text=True, timeout=120, env=env)
        self.start_s = time.monotonic() - started
        if r.returncode != 0:
            raise RuntimeError(f"mount failed: {r.stderr}")
        self.pid = int(self.log.read_text().rsplit("(pid ", 1)[1].split(")")[0])

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        subprocess.run([*DESFS, "umount", str(self.path)], capture_output=True, timeout=60)


def read_file(path: Path, chunk: int = MiB) -> tuple[int, float, float]:
    """(bytes read, seconds from open to end, seconds from the return of the first read to the end)."""
    started = time.monotonic()
    total = 0
    first = None
    with open(path, "rb", buffering=0) as f:
        while True:
            data = f.read(chunk)
            if not data:
                break
            total += len(data)
            if first is None:
                first = time.monotonic()
    end = time.monotonic()
    return total, end - started, end - (first or end)


def steady_rate(n: int, secs_after_first: float, chunk: int = MiB) -> float:
    """MB/s of a read_file() from its first chunk on: the bytes after the first read over their time."""
    return (n - min(n, chunk)) / max(secs_after_first, 1e-9) / 1e6


def curl_download(url: str) -> tuple[int, float, float]:
    """(bytes, seconds in all: connect, request and body, seconds from the first byte received to the last),
    from curl's own timers (its start-up is in neither)."""
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{time_starttransfer} %{time_total}",
                          url], capture_output=True, text=True, check=True, timeout=1800).stdout
    size, first_byte, total = out.split()
    return int(float(size)), float(total), float(total) - float(first_byte)


LS_ENTRY = re.compile(r"[-dlbcps][-rwxsStT]{9}[.+@]? ")  # the mode column of an `ls -l` line


def ls_entries(out: str) -> tuple[int, int]:
    """(entries, folders among them) in the output of `ls -lR`: the lines that describe a file,
    folder or link, not the folder headers, the `total` lines nor the blank lines between folders."""
    lines = [line for line in out.splitlines() if LS_ENTRY.match(line)]
    return len(lines), sum(1 for line in lines if line.startswith("d"))


def tree_entries(folder: Path) -> int:
    """Entries below `folder` on disk that `ls -lR` shows (names not starting with '.')."""
    count = 0
    for _root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        count += len(dirs) + sum(1 for f in files if not f.startswith("."))
    return count


def measure(name: str, base: str, job: str, user: str, work: Path, nginx, size: int, repeats: int) -> dict:
    job_url = f"{base}{user}/cutout/{job}/"
    res: dict = {"site": name}
    direct, through, rss = [], [], []
    direct_all, through_all = [], []  # from the start: curl with its connect and request, desfs with its open
    for attempt in range(repeats):  # the median of a few runs: one run on a shared machine says little
        print(f"[{name}] direct download ({attempt + 1}/{repeats}) ...", flush=True)
        n, secs, steady = curl_download(job_url + "big.bin")
        assert n == size, f"curl got {n} of {size} bytes"
        direct.append(n / steady / 1e6)
        direct_all.append(n / secs / 1e6)
        print(f"[{name}] sequential read through desfs ({attempt + 1}/{repeats}) ...", flush=True)
        m = Mount(job_url, work / f"{name}-seq{attempt}")
        try:
            n, secs, steady = read_file(m.path / "big.bin")
            assert n == size, f"desfs read {n} of {size} bytes"
            through.append(steady_rate(n, steady))
            through_all.append(n / secs / 1e6)
            rss.append(m.peak_rss_mib())
            if attempt == 0:
                print(f"[{name}] re-read ...", flush=True)
                n, secs, _ = read_file(m.path / "big.bin")
                res["reread_mb_s"] = n / secs / 1e6
        finally:
            m.close()
    res["direct_mb_s"], res["desfs_mb_s"] = statistics.median(direct), statistics.median(through)
    res["ratio"] = res["desfs_mb_s"] / res["direct_mb_s"]
    paired = [t / d for d, t in zip(direct, through, strict=True)]  # each run against the download just before it
    res["ratio_range"] = f"{min(paired):.2f}–{max(paired):.2f}"
    res["peak_rss_mib"] = max(rss)
    res["runs"] = {"direct_mb_s": direct, "desfs_mb_s": through, "peak_rss_mib": rss,
                   "from_start": {"direct_mb_s": direct_all, "desfs_mb_s": through_all}}

    print(f"[{name}] from memory (block cache warm, page cache dropped) ...", flush=True)
    m = Mount(job_url, work / f"{name}-mem", "--cache-size", f"{2 * size // MiB}M")
    try:
        read_file(m.path / "big.bin")  # fills the block cache, which holds the whole file
        if drop_page_cache():
            mark = nginx.mark()
            n, secs, _ = read_file(m.path / "big.bin")
            assert n == size, f"desfs read {n} of {size} bytes"
            res["memory_mb_s"] = n / secs / 1e6
            res["memory_requests"] = len(nginx.requests_since(mark))
        else:
            print(f"[{name}] cannot drop the page cache (not root): no from-memory figure", flush=True)
    finally:
        m.close()

    print(f"[{name}] FITS header read ...", flush=True)
    from astropy.io import fits

    m = Mount(job_url, work / f"{name}-fits")
    try:
        os.stat(m.path / "big.fits")
        mark = nginx.mark()
        started = time.monotonic()
        with fits.open(m.path / "big.fits") as h:
            assert h[0].header["NAXIS1"] == 16384
        res["header_s"] = time.monotonic() - started
        res["header_bytes"] = sum(r[4] for r in nginx.requests_since(mark) if r[1].endswith("big.fits"))
    finally:
        m.close()

    print(f"[{name}] cold ls -lR ...", flush=True)
    root_json = f"/files-desaccess/{user}/cutout/{job}/json"
    m = Mount(job_url, work / f"{name}-ls", "--listing-ttl", repr(LS_TTL))
    try:
        time.sleep(LS_TTL + 0.5)  # the root's listing, made at mount time, has expired
        mark = nginx.mark()
        started = time.monotonic()
        out = subprocess.run(["ls", "-lR", str(m.path)], capture_output=True, text=True, check=True).stdout
        res["ls_lR_s"] = time.monotonic() - started
        reqs = nginx.requests_since(mark)
        assert any(r[1] == root_json for r in reqs), "the root was not listed again: ls -lR was not cold"
        res["ls_lR_requests"] = len(reqs)
        res["ls_lR_entries"], folders = ls_entries(out)
        res["ls_lR_folders"] = folders + 1  # with the root: each listed once
        res["ls_lR_entries_on_disk"] = tree_entries(work / "root" / "files-desaccess" / user / "cutout" / job)
        if res["ls_lR_entries"] != res["ls_lR_entries_on_disk"]:
            print(f"[{name}] ls -lR listed {res['ls_lR_entries']} entries, the tree holds "
                  f"{res['ls_lR_entries_on_disk']}", flush=True)
    finally:
        m.close()
    m = Mount(job_url, work / f"{name}-ls5000")
    try:
        mark = nginx.mark()
        started = time.monotonic()
        subprocess.run(["ls", "-l", str(m.path / "many")], capture_output=True, check=True)
        res["ls_l_5000_s"] = time.monotonic() - started
        reqs = nginx.requests_since(mark)
        assert [r[1] for r in reqs] == [root_json[:-len("json")] + "many/json"], reqs
        res["ls_l_5000_requests"] = len(reqs)
    finally:
        m.close()

    get_url = f"{base}{user}/cutout/{GET_JOB}/"
    print(f"[{name}] the documentation's download script ...", flush=True)
    started = time.monotonic()
    subprocess.run([sys.executable, str(HERE / "doc_download_script.py"), get_url, str(work / f"{name}-script")],
                   check=True, capture_output=True, timeout=3600)
    res["script_s"] = time.monotonic() - started
    print(f"[{name}] desfs get ...", flush=True)
    started = time.monotonic()
    subprocess.run([*DESFS, "get", get_url, str(work / f"{name}-get"), "-q"], check=True, capture_output=True,
                   timeout=3600)
    res["get_s"] = time.monotonic() - started
    res["get_speedup"] = res["script_s"] / res["get_s"]
    res["get_files"] = same_tree(work / f"{name}-script", work / f"{name}-get")
    return res


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (clean pages, after a sync; root only): a read from memory or from a
    disk cache then reads desfs's own memory or disk, and a local file its disk. False when not allowed."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def measure_disk_cache(base: str, job: str, user: str, work: Path, root: Path, size: int) -> dict:
    """(7): a remount's re-read from the disk cache against the local file; mount start with 100 000 blocks."""
    job_url = f"{base}{user}/cutout/{job}/"
    res: dict = {}
    cache = work / "disk-cache"
    print("[disk cache] filling it through a mount, then a new mount re-reads ...", flush=True)
    m = Mount(job_url, work / "disk-fill", "--disk-cache", str(cache))
    try:
        read_file(m.path / "big.bin")
    finally:
        m.close()
    m = Mount(job_url, work / "disk-reread", "--disk-cache", str(cache))
    try:
        res["page_cache_dropped"] = drop_page_cache()
        n, secs, _ = read_file(m.path / "big.bin")
        assert n == size
        res["disk_reread_mb_s"] = n / secs / 1e6
    finally:
        m.close()
    drop_page_cache()
    n, secs, _ = read_file(root / "files-desaccess" / user / "cutout" / job / "big.bin")
    res["local_read_mb_s"] = n / secs / 1e6
    res["disk_vs_local"] = res["disk_reread_mb_s"] / res["local_read_mb_s"]

    print("[disk cache] mount start with 100 000 blocks ...", flush=True)
    import sqlite3

    from desfs.diskcache import DiskStore

    big = work / "disk-big"
    DiskStore(str(big), 10 * 1024 * MiB).close()
    rows = []
    for i in range(100_000):
        name = f"{i:064x}"
        (big / "blocks" / name[:2]).mkdir(mode=0o700, exist_ok=True)
        (big / "blocks" / name[:2] / name).write_bytes(b"x" * 64)
        rows.append((name, f'"k{i}"', 64, i, 0.0))
    db = sqlite3.connect(big / "index.sqlite")
    with db:
        db.executemany("INSERT INTO blocks (name, key, size, used, stored) VALUES (?, ?, ?, ?, ?)", rows)
    db.close()
    starts = {}
    for label, folder in (("empty", work / "disk-empty"), ("100k", big)):
        times = []
        for attempt in range(3):
            m = Mount(job_url, work / f"disk-start-{label}{attempt}", "--disk-cache", str(folder))
            times.append(m.start_s)
            m.close()
        starts[label] = statistics.median(times)
    res["mount_start_empty_s"], res["mount_start_100k_s"] = starts["empty"], starts["100k"]
    return res


def same_tree(a: Path, b: Path) -> int:
    """How many files the two downloads hold; both must hold the same names and sizes."""
    def files(root: Path) -> dict:
        return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}

    fa, fb = files(a), files(b)
    assert fa == fb, "desfs get and the script downloaded different trees"
    return len(fa)


ROWS = [
    ("direct_mb_s", "direct download (curl), MB/s, median, first byte to last", "{:.1f}"),
    ("desfs_mb_s", "desfs sequential read, MB/s, median, first read to last", "{:.1f}"),
    ("ratio", "desfs / direct (medians)", "{:.2f}"),
    ("ratio_range", "desfs / direct, run by run: lowest–highest", "{}"),
    ("peak_rss_mib", "desfs peak RSS during it, MiB (budget 256 + 64)", "{:.0f}"),
    ("reread_mb_s", "re-read of the same file, MB/s", "{:.0f}"),
    ("memory_mb_s", "from memory (block cache warm, page cache dropped), MB/s", "{:.0f}"),
    ("memory_requests", "from memory: requests", "{}"),
    ("header_bytes", "FITS header of 1 GiB file: bytes fetched", "{:,}"),
    ("header_s", "FITS header of 1 GiB file: seconds", "{:.3f}"),
    ("ls_lR_s", "cold ls -lR, seconds", "{:.2f}"),
    ("ls_lR_requests", "cold ls -lR: requests", "{}"),
    ("ls_lR_folders", "cold ls -lR: folders, the root included", "{}"),
    ("ls_lR_entries", "cold ls -lR: entries listed (files, folders)", "{}"),
    ("ls_l_5000_requests", "cold ls -l of the 5000-file folder: requests", "{}"),
    ("ls_l_5000_s", "cold ls -l of the 5000-file folder: seconds", "{:.2f}"),
    ("script_s", "whole job (303 files, 54 MiB): documentation script, s", "{:.1f}"),
    ("get_s", "whole job: desfs get, s", "{:.1f}"),
    ("get_speedup", "desfs get speed-up over the script", "{:.1f}x"),
    ("disk_reread_mb_s", "after a remount, re-read from the disk cache, MB/s", "{:.0f}"),
    ("local_read_mb_s", "the same file read from local disk, MB/s", "{:.0f}"),
    ("disk_vs_local", "disk cache / local disk", "{:.2f}"),
    ("mount_start_empty_s", "desfs mount, empty disk cache, s (median of 3)", "{:.2f}"),
    ("mount_start_100k_s", "desfs mount, disk cache of 100 000 blocks, s (median of 3)", "{:.2f}"),
]


def table(results: list[dict]) -> str:
    lines = ["| measure | " + " | ".join(r["site"] for r in results) + " |", "|---|" + "---|" * len(results)]
    for key, label, fmt in ROWS:
        lines.append(f"| {label} | " + " | ".join(fmt.format(r[key]) if key in r else "-" for r in results) + " |")
    return "\n".join(lines)


# -- the far link (issue 11): a server 40 ms away on a link shared by all connections -------------------------

LINK_JOB = "11111111111111111111111111111111"  # the 512 MiB file and a sparse 8 GiB one, for reads and downloads
TILES_JOB = "40404040404040404040404040404040"  # a cutout job of 40 tiles × 25 objects: 1040 folders
ACCOUNT_JOBS = 300
ACCOUNT_PASSWORD = "bench-Pa55word"
SPARSE_GIB = 8
RANDOM_READ = 64 * 1024
RANDOM_ONE, RANDOM_EACH, RANDOM_THREADS = 40, 40, 8  # reads: 1 thread; each of 8 threads


def account_job_id(i: int) -> str:
    return f"{0xacc0 + i:032x}"


def build_link_data(root: Path, user: str, size_mib: int) -> dict:
    """The far link's files: a job with the big file and a sparse one, the 1040-folder job, and the
    300 cutout jobs of the account (each a tile folder of 5 FITS files, its .log and .tar.gz beside it)."""
    base = root / "files-desaccess" / user / "cutout"
    job = base / LINK_JOB
    job.mkdir(parents=True)
    with open(job / "big.bin", "wb") as f:
        for _ in range(size_mib // 16):
            f.write(os.urandom(16 * MiB))
    with open(job / "sparse.bin", "wb") as f:
        f.truncate(SPARSE_GIB * 1024 * MiB)
    tiles = base / TILES_JOB
    for t in range(40):
        for o in range(25):
            folder = tiles / f"DES{t:04d}-1541" / f"DESJ0226{o:02d}.4160-154120.0040"
            folder.mkdir(parents=True)
            for band in "grizy":
                (folder / f"DESJ0226{o:02d}_{band}.fits").write_bytes(b"x" * 2880)
    jobs = []
    for i in range(ACCOUNT_JOBS):
        job_id = account_job_id(i)
        tile = base / job_id / "DES0226-1541"
        tile.mkdir(parents=True)
        for band in "grizy":
            (tile / f"DESJ022640.4160-154120.0040_{band}.fits").write_bytes(b"x" * 2880)
        (base / job_id / "summary.json").write_text("{}")
        (base / f"{job_id}.log").write_text("done\n")
        (base / f"{job_id}.tar.gz").write_bytes(b"x" * 1000)
        jobs.append({"job_id": job_id, "job_type": "cutout", "job_name": f"cutouts {i}", "job_status": "success",
                     "job_time_start": "2026-11-24 23:50:00", "job_time_complete": "2026-11-24 23:59:00",
                     "expiration_date": "2026-12-08 23:59:00", "query_files": [], "cutout_files": []})
    return {"jobs": jobs, "fits": ACCOUNT_JOBS * 5}


def rclone_version() -> str:
    try:
        return subprocess.run(["rclone", "version"], capture_output=True, text=True, timeout=30).stdout.split()[1]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def mib_s(nbytes: int, secs: float) -> float:
    return nbytes / max(secs, 1e-9) / MiB


def parallel_curl(url: str, size: int, streams: int) -> float:
    """Seconds for `streams` curl range downloads of the file's parts, all at once (from their start to the end
    of the last): what the link itself carries."""
    part = -(-size // streams)
    started = time.monotonic()
    procs = [subprocess.Popen(["curl", "-s", "-f", "-o", "/dev/null", "-w", "%{size_download}", "-r",
                               f"{i * part}-{min(size, (i + 1) * part) - 1}", url], stdout=subprocess.PIPE, text=True)
             for i in range(streams)]
    got = sum(int(float(p.communicate(timeout=1800)[0] or 0)) for p in procs)
    secs = time.monotonic() - started
    assert got == size, f"parallel curl got {got} of {size} bytes"
    return secs


def aria2c(url: str, dest: Path, size: int) -> float:
    """Seconds for aria2c -x16 -s16 to download the file (the process, start to end)."""
    dest.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    subprocess.run(["aria2c", "-x16", "-s16", "-q", "--file-allocation=none", "--allow-overwrite=true",
                    "--auto-file-renaming=false", "-d", str(dest), "-o", "big.bin", url],
                   check=True, capture_output=True, timeout=1800)
    secs = time.monotonic() - started
    assert (dest / "big.bin").stat().st_size == size
    shutil.rmtree(dest)
    return secs


# rclone's mount of the same files as a user would tune it for big sequential reads (rclone 1.60, Debian 12):
# the whole-file cache with a long read-ahead, a large buffer, chunks of 16 MiB and 16 streams; rclone's
# multi-thread streams serve `rclone copy`, its mount reads a file over one stream at a time.
RCLONE_TUNED = ["--vfs-cache-mode", "full", "--vfs-read-ahead", "512M", "--buffer-size", "64M",
                "--vfs-read-chunk-size", "16M", "--multi-thread-streams", "16"]


def rclone_read(url: str, where: Path, size: int, *options: str) -> float:
    """Seconds to read the file big.bin through an rclone mount (`:http:` remote on the job folder's HTML
    listing), from its open to the last byte, on a fresh mount."""
    where.mkdir(parents=True)
    log = where.with_suffix(".log")
    proc = subprocess.Popen(["rclone", "mount", ":http:", str(where), "--http-url", url, "--read-only",
                             "--cache-dir", str(where.with_suffix(".cache")), "--log-file", str(log), *options],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(where):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rclone mount failed: {log.read_text(errors='replace')[-500:]}")
            time.sleep(0.05)
        n, secs, _ = read_file(where / "big.bin")
        assert n == size, f"rclone read {n} of {size} bytes"
        return secs
    finally:
        subprocess.run(["fusermount3", "-u", str(where)], capture_output=True)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def random_reads(path: Path, offsets: list[int], threads: int) -> float:
    """Seconds for `threads` threads to read RANDOM_READ bytes at each of `offsets` (shared out), each thread
    with a file of its own opened before the timer."""
    import concurrent.futures

    shares = [offsets[i::threads] for i in range(threads)]
    fds = [os.open(path, os.O_RDONLY) for _ in range(threads)]

    def run(fd: int, share: list[int]) -> None:
        for off in share:
            assert len(os.pread(fd, RANDOM_READ, off)) == RANDOM_READ

    try:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            started = time.monotonic()
            for f in [pool.submit(run, fd, share) for fd, share in zip(fds, shares, strict=True)]:
                f.result()
            return time.monotonic() - started
    finally:
        for fd in fds:
            os.close(fd)


def measure_link(nginx, link, work: Path, user: str, size_mib: int, delay: float, rate: float) -> dict:
    """The far-link section: everything through one link (`link`) with `delay` each way and `rate` per connection."""
    import random

    from fakeapi import FakeApi

    size = size_mib * MiB
    data = build_link_data(work / "root", user, size_mib)
    os.sync()
    files = LatencyProxy(nginx.port, delay, rate, link=link).start()
    api = FakeApi({user: ACCOUNT_PASSWORD}, {user: data["jobs"]}).start()
    api_proxy = LatencyProxy(api.server_address[1], delay, rate, link=link).start()
    base = f"http://127.0.0.1:{files.port}/files-desaccess/"
    job_url = f"{base}{user}/cutout/{LINK_JOB}/"
    res: dict = {"delay_ms": delay * 1000, "rate_mb_s": rate / 1e6, "link_mb_s": link.rate / 1e6, "file_mib": size_mib}
    try:
        print("[link] its capacity: 16 curl range downloads at once ...", flush=True)
        res["link_capacity_mib_s"] = mib_s(size, parallel_curl(job_url + "big.bin", size, 16))

        print("[link] aria2c -x16 -s16 ...", flush=True)
        conns = files.connections
        res["aria2c_mib_s"] = mib_s(size, aria2c(job_url + "big.bin", work / "aria2c", size))
        res["aria2c_connections"] = files.connections - conns

        for label, options in (("rclone", []), ("rclone_tuned", RCLONE_TUNED)):
            print(f"[link] {label.replace('_', ' ')} mount, sequential read ...", flush=True)
            conns = files.connections
            res[f"{label}_mib_s"] = mib_s(size, rclone_read(job_url, work / f"link-{label}", size, *options))
            res[f"{label}_connections"] = files.connections - conns
        res["rclone_tuned_options"] = " ".join(RCLONE_TUNED)

        print("[link] desfs sequential read ...", flush=True)
        m = Mount(job_url, work / "link-seq")
        try:
            os.stat(m.path / "big.bin")
            conns = files.connections
            n, secs, _ = read_file(m.path / "big.bin")
            assert n == size, f"desfs read {n} of {size} bytes"
            res["desfs_mib_s"] = mib_s(size, secs)
            res["desfs_connections"] = files.connections - conns
            res["desfs_peak_rss_mib"] = m.peak_rss_mib()
        finally:
            m.close()

        rng = random.Random(11)
        blocks = rng.sample(range(SPARSE_GIB * 1024), RANDOM_ONE + RANDOM_EACH * RANDOM_THREADS)  # no MiB twice
        offsets = [b * MiB + rng.randrange(0, MiB - RANDOM_READ + 1, 4096) for b in blocks]
        for threads, share in ((1, offsets[:RANDOM_ONE]), (RANDOM_THREADS, offsets[RANDOM_ONE:])):
            print(f"[link] cold random 64 KiB reads, {threads} thread(s) ...", flush=True)
            m = Mount(job_url, work / f"link-random{threads}")
            try:
                os.stat(m.path / "sparse.bin")
                mark = nginx.mark()
                secs = random_reads(m.path / "sparse.bin", share, threads)
                fetched = sum(r[4] for r in nginx.requests_since(mark) if r[1].endswith("/sparse.bin"))
                res[f"random{threads}_reads_s"] = len(share) / secs
                res[f"random{threads}_kib_per_read"] = fetched / len(share) / 1024
            finally:
                m.close()

        print("[link] desfs get of the file ...", flush=True)
        dest = work / "link-get"
        dest.mkdir()
        started = time.monotonic()
        subprocess.run([*DESFS, "get", job_url + "big.bin", str(dest), "-q"], check=True,
                       capture_output=True, timeout=3600)
        res["get_mib_s"] = mib_s(size, time.monotonic() - started)
        got = [p for p in dest.rglob("*") if p.is_file()]
        assert [p.stat().st_size for p in got] == [size], got
        shutil.rmtree(dest)

        env = {k: v for k, v in os.environ.items() if not k.startswith("DESACCESS_")}
        home = work / "link-home"
        home.mkdir()
        env.update(HOME=str(home), DESACCESS_USER=user, DESACCESS_PASSWORD=ACCOUNT_PASSWORD)
        account = ("--api-url", f"http://127.0.0.1:{api_proxy.port}/desaccess/api", "--files-url", base)
        print(f"[link] account of {ACCOUNT_JOBS} jobs: cold ls -l cutout ...", flush=True)
        mark = nginx.mark()  # the requests counted include the mount's own (the job list is the API's)
        m = Mount(None, work / "link-account-ls", *account, env=env)
        try:
            res["account_mount_s"] = m.start_s
            started = time.monotonic()
            out = subprocess.run(["ls", "-l", str(m.path / "cutout")], capture_output=True, text=True,
                                 check=True, timeout=600).stdout
            res["account_ls_s"] = time.monotonic() - started
            res["account_ls_requests"] = len(nginx.requests_since(mark))
            res["account_ls_entries"] = ls_entries(out)[0]
            assert res["account_ls_entries"] == 3 * ACCOUNT_JOBS, f"ls -l cutout: {res['account_ls_entries']} entries"
        finally:
            m.close()
        print(f"[link] account of {ACCOUNT_JOBS} jobs: cold find -name '*.fits' ...", flush=True)
        mark = nginx.mark()
        m = Mount(None, work / "link-account-find", *account, env=env)
        try:
            started = time.monotonic()
            out = subprocess.run(["find", str(m.path), "-name", "*.fits"], capture_output=True, text=True,
                                 check=True, timeout=600).stdout
            res["account_find_s"] = time.monotonic() - started
            res["account_find_requests"] = len(nginx.requests_since(mark))
            res["account_find_files"] = len(out.splitlines())
            assert res["account_find_files"] == data["fits"], f"find found {res['account_find_files']} FITS files"
        finally:
            m.close()

        print("[link] cutout job of 1040 folders: cold find ...", flush=True)
        mark = nginx.mark()  # with the root's listing, made while mounting (one round trip, not timed)
        m = Mount(f"{base}{user}/cutout/{TILES_JOB}/", work / "link-tiles")
        try:
            started = time.monotonic()
            out = subprocess.run(["find", str(m.path)], capture_output=True, text=True, check=True,
                                 timeout=600).stdout
            res["tiles_find_s"] = time.monotonic() - started
            res["tiles_find_requests"] = len(nginx.requests_since(mark))
            res["tiles_find_entries"] = len(out.splitlines()) - 1  # not the mount point itself
            on_disk = tree_entries(work / "root" / "files-desaccess" / user / "cutout" / TILES_JOB)
            assert res["tiles_find_entries"] == on_disk, f"find listed {res['tiles_find_entries']} of {on_disk}"
        finally:
            m.close()
    finally:
        api_proxy.stop()
        api.stop()
        files.stop()
    return res


# (key, label, the today, target: a figure, or a function of the run's figures; True when higher is better)
LINK_ROWS = [
    ("link_capacity_mib_s", "the link: 16 curl range downloads at once, MiB/s", "95", None),
    ("aria2c_mib_s", "aria2c -x16 -s16 of the {file_mib} MiB file, MiB/s", "85", None),
    ("aria2c_connections", "  connections opened", "-", None),
    ("rclone_mib_s", "rclone mount (defaults), sequential read, MiB/s", "-", None),
    ("rclone_connections", "  connections opened (listing and HEAD included)", "-", None),
    ("rclone_tuned_mib_s", "rclone mount (tuned options), sequential read, MiB/s", "-", None),
    ("rclone_tuned_connections", "  connections opened (listing and HEAD included)", "-", None),
    ("desfs_mib_s", "desfs sequential read of the {file_mib} MiB file, fresh mount, MiB/s", "44–53",
     lambda r: (max(0.9 * r["link_capacity_mib_s"], r["aria2c_mib_s"]), True)),
    ("desfs_connections", "  connections opened", "-", None),
    ("desfs_peak_rss_mib", "  peak RSS of the desfs process, MiB", "-", lambda r: (256 + 64, False)),
    ("random1_reads_s", "cold random 64 KiB reads, 1 thread, reads/s", "5.3", lambda r: (10, True)),
    ("random1_kib_per_read", "cold random 64 KiB reads, 1 thread: KiB fetched per read", "1024", None),
    ("random8_reads_s", "cold random 64 KiB reads, 8 threads, reads/s", "57", lambda r: (75, True)),
    ("random8_kib_per_read", "cold random 64 KiB reads, 8 threads: KiB fetched per read", "1024", None),
    ("get_mib_s", "desfs get of the {file_mib} MiB file, MiB/s", "~10", lambda r: (r["aria2c_mib_s"], True)),
    ("account_mount_s", f"account of {ACCOUNT_JOBS} jobs: the mount's start (job list), s", "-", None),
    ("account_ls_s", f"account of {ACCOUNT_JOBS} jobs: cold ls -l cutout, s", "6.8", lambda r: (1.5, False)),
    ("account_ls_requests", "  requests to the file server, the mount's own included", "600 HEADs", None),
    ("account_find_s", f"account of {ACCOUNT_JOBS} jobs: cold find -name '*.fits', s", "50", lambda r: (5, False)),
    ("account_find_requests", "  requests to the file server, the mount's own included", "600 listings + HEADs",
     None),
    ("tiles_find_s", "cutout job of 40 tiles × 25 objects (1040 folders): cold find, s", "27",
     lambda r: (4, False)),
    ("tiles_find_requests", "  requests to the file server, the mount's own included", "-", None),
]


def link_table(res: dict) -> str:
    lines = ["| measure | this run | issue 11: today | target | met |", "|---|---|---|---|---|"]
    for key, label, today, target in LINK_ROWS:
        value = res.get(key)
        shown = "-" if value is None else f"{value:.0f}" if isinstance(value, int) else f"{value:.2f}" \
            if value < 10 else f"{value:.1f}"
        goal = met = ""
        if target is not None and value is not None:
            try:
                figure, higher = target(res)
            except KeyError:
                figure = None
            if figure is not None:
                goal = f"{'≥' if higher else '≤'} {figure:.1f}"
                met = "yes" if (value >= figure if higher else value <= figure) else "no"
        lines.append(f"| {label.format(**res)} | {shown} | {today} | {goal} | {met} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mib", type=int, default=256, help="size of the sequentially read file (default 256)")
    p.add_argument("--delay-ms", type=float, default=40, help="far server: delay each way (default 40)")
    p.add_argument("--rate-mb", type=float, default=16, help="far server: MB/s per connection (default 16)")
    p.add_argument("--many", type=int, default=5000, help="files in the big folder (default 5000)")
    p.add_argument("--repeats", type=int, default=9,
                   help="loopback: runs of the sequential read, median reported (default 9: curl's own speed varies)")
    p.add_argument("--far-repeats", type=int, default=3, help="far server: runs of the sequential read (default 3)")
    p.add_argument("--link-mb", type=float, default=100, help="far link: MB/s of all connections (default 100)")
    p.add_argument("--link-size-mib", type=int, default=512, help="far link: size of the big file (default 512)")
    p.add_argument("--only", choices=("all", "link"), default=os.environ.get("DESFS_BENCH_ONLY", "all"),
                   help="link: only the far-link section (a few minutes); default all (or $DESFS_BENCH_ONLY)")
    p.add_argument("--out", default="bench-results.json")
    args = p.parse_args(argv)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        os.environ.pop(var, None)
    if not shutil.which("curl"):
        print("bench: curl is needed for the direct download", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="desfs-bench-"))
    nginx_proc = proxy = None
    results: list[dict] = []
    link_res: dict = {}
    try:
        print(f"bench: writing data under {work} ...", flush=True)
        if args.only == "all":
            job, user = build_data(work / "root", args.size_mib, args.many)
            os.sync()  # the data just written goes to disk now, not during the first measurements
        else:
            user = "bench"
            (work / "root").mkdir()
        nginx, nginx_proc = start_nginx(str(work / "root"), work / "nginx")
        if args.only == "all":
            proxy = LatencyProxy(nginx.port, args.delay_ms / 1000, args.rate_mb * 1e6).start()
            sites = [("loopback", nginx.base_url),
                     (f"far ({2 * args.delay_ms:.0f} ms RTT, {args.rate_mb:g} MB/s per connection)",
                      f"http://127.0.0.1:{proxy.port}/files-desaccess/")]
            size = args.size_mib * MiB
            results = [measure(name, base, job, user, work, nginx, size, runs)
                       for (name, base), runs in zip(sites, (args.repeats, args.far_repeats), strict=True)]
            results[0].update(measure_disk_cache(nginx.base_url, job, user, work, work / "root", size))
        if not (shutil.which("aria2c") and shutil.which("rclone")):
            print("bench: aria2c and rclone are needed for the far link (.ci/bench installs them): skipped",
                  file=sys.stderr)
        else:
            link_res = measure_link(nginx, Link(args.link_mb * 1e6), work, user, args.link_size_mib,
                                    args.delay_ms / 1000, args.rate_mb * 1e6)
    finally:
        if proxy:
            proxy.stop()
        if nginx_proc:
            stop_nginx(nginx_proc)
        for mnt in work.glob("*/"):
            subprocess.run([*DESFS, "umount", str(mnt)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "file_mib": args.size_mib,
            "defaults": "cache 256M, block 1M, readahead 64M, 16 connections"}
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results, "link": link_res}, indent=2))
    if results:
        print()
        print(table(results))
    if link_res:
        print(f"\nFar link: {2 * args.delay_ms:.0f} ms RTT, {args.rate_mb:g} MB/s per connection, "
              f"{args.link_mb:g} MB/s for all connections together; {args.link_size_mib} MiB file; every figure "
              f"from this run, each timed from the start of the request, download or walk (the mount already made) "
              f"to its end")
        print(link_table(link_res))
        print(f"(rclone tuned: {' '.join(RCLONE_TUNED)}; rclone {rclone_version()})")
    print(f"\n({meta['when']}, {meta['cpus']} CPUs, Python {meta['python']}; JSON in {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
