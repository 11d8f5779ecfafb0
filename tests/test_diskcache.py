"""The disk cache through real mounts against nginx: a remount reads what was read before without a
range request (counted in nginx's log), damaged and torn block files are fetched again, a kill -9
leaves every byte right, the size limit holds, two mounts share one cache folder."""

from __future__ import annotations

import errno
import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest

from conftest import BIG_SIZE, run_desfs, source_files, wait_for
from desfs.diskcache import DiskStore
from desfs.mounting import find_mount, lazy_unmount

pytestmark = [pytest.mark.mount, pytest.mark.nginx]
MiB = 1024 * 1024


def range_requests(nginx, mark: int) -> list:
    return [r for r in nginx.requests_since(mark) if r[2] not in ("", "-")]


def read_all(root: Path, files: dict[str, str]) -> None:
    for rel, src in files.items():
        with open(src, "rb") as a, open(root / rel, "rb") as b:
            assert a.read() == b.read(), rel


def umount(m) -> None:
    result = run_desfs("umount", str(m.path))
    assert result.returncode == 0, result.stderr
    wait_for(lambda: "unmounted " in m.log_text())


def block_files(folder: Path) -> list[Path]:
    return sorted(p for p in (folder / "blocks").rglob("*") if p.is_file())


def test_a_remount_rereads_with_no_range_request(mount, nginx, sample, tmp_path):
    url = sample.url(nginx.base_url)
    files = source_files(sample.cutout_dir)
    first = mount(url, name="first")
    read_all(first.path, files)
    umount(first)
    folder = tmp_path / "xdg-cache" / "desfs"  # the default: $XDG_CACHE_HOME/desfs
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    stored = block_files(folder)
    assert len(stored) >= BIG_SIZE // MiB
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in stored + [folder / "index.sqlite"])

    mark = nginx.mark()
    second = mount(url, name="second")
    read_all(second.path, files)
    umount(second)
    assert range_requests(nginx, mark) == []
    assert any(p.endswith("/json") for _, p, *_ in nginx.requests_since(mark))  # listings: fetched again

    mark = nginx.mark()  # the count above counts: without the disk cache, the same reads cost range requests
    third = mount(url, "--no-disk-cache", name="third")
    read_all(third.path, files)
    assert len(range_requests(nginx, mark)) >= BIG_SIZE // MiB


def test_a_damaged_or_torn_block_file_is_fetched_again(mount, nginx, sample, tmp_path):
    url = sample.url(nginx.base_url)
    folder = tmp_path / "cache"
    big = os.path.join(sample.cutout_dir, "big.bin")
    first = mount(url, "--disk-cache", str(folder), name="first")
    assert (first.path / "big.bin").read_bytes() == Path(big).read_bytes()
    umount(first)
    stored = [p for p in block_files(folder) if p.stat().st_size > MiB]
    assert len(stored) >= 3
    damaged, torn, gone = stored[:3]
    with open(damaged, "r+b") as f:  # one bit flipped in the data
        f.seek(damaged.stat().st_size - 1000)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    os.truncate(torn, torn.stat().st_size // 2)  # a write cut short (a crash, a full disk)
    gone.unlink()  # emptied by hand

    mark = nginx.mark()
    second = mount(url, "--disk-cache", str(folder), name="second")
    assert (second.path / "big.bin").read_bytes() == Path(big).read_bytes()
    asked = range_requests(nginx, mark)  # those three blocks, and only them (two neighbours: one request)
    assert 1 <= len(asked) <= 3 and sum(r[4] for r in asked) == 3 * MiB, asked
    assert "damaged" in second.log_text()


def test_a_kill_9_during_a_fill_leaves_every_byte_right(mount, nginx, sample, tmp_path):
    url = sample.url(nginx.base_url)
    folder = tmp_path / "cache"
    files = source_files(sample.cutout_dir)
    first = mount(url, "--disk-cache", str(folder), "--readahead", "8M", name="first")
    pid = int(wait_for(lambda: first.log_text().split("(pid ")[1].split(")")[0] if "(pid " in first.log_text()
                       else None))
    reader = threading.Thread(target=lambda: _read_quietly(first.path / "big.bin"), daemon=True)
    reader.start()
    wait_for(lambda: len(block_files(folder)) >= 2, seconds=20, interval=0.001)
    os.kill(pid, signal.SIGKILL)  # in the middle of filling the cache
    reader.join(20)
    wait_for(lambda: _gone(pid))
    lazy_unmount(str(first.path))
    wait_for(lambda: not find_mount(str(first.path)))
    first.log.write_text(first.log_text() + "\nunmounted (killed by the test)\n")  # for the fixture's check
    (folder / "tmp" / f"{'0' * 16}.{pid}.1").write_bytes(b"half a block")  # what a kill mid-write leaves

    second = mount(url, "--disk-cache", str(folder), name="second")
    read_all(second.path, files)
    assert not [p for p in (folder / "tmp").iterdir() if f".{pid}." in p.name]  # the dead process's are gone


def _read_quietly(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            while f.read(MiB):
                pass
    except OSError:
        pass


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_size_limit_holds(mount, nginx, sample, tmp_path):
    folder = tmp_path / "cache"
    m = mount(sample.url(nginx.base_url), "--disk-cache", str(folder), "--disk-cache-size", "3M", name="small")
    assert (m.path / "big.bin").read_bytes() == Path(os.path.join(sample.cutout_dir, "big.bin")).read_bytes()
    umount(m)
    on_disk = sum(p.stat().st_size for p in block_files(folder))
    assert 2 * MiB <= on_disk <= 3 * MiB + 4096  # (headers: a few hundred bytes a block)
    assert DiskStore(str(folder), 3 * MiB).current_size <= 3 * MiB


def test_two_mounts_share_one_cache_folder_at_once(mount, nginx, sample, tmp_path):
    url = sample.url(nginx.base_url)
    folder = tmp_path / "cache"
    files = source_files(sample.cutout_dir)
    options = ("--disk-cache", str(folder), "--disk-cache-size", "6M", "--cache-size", "16M")
    a, b = mount(url, *options, name="a"), mount(url, *options, name="b")
    errors: list[BaseException] = []

    def reader(root: Path) -> None:
        try:
            for _ in range(2):
                read_all(root, files)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(m.path,)) for m in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    umount(a)
    umount(b)
    assert DiskStore(str(folder), 6 * MiB).current_size <= 6 * MiB
    assert sum(p.stat().st_size for p in block_files(folder)) <= 6 * MiB + 16384

    mark = nginx.mark()  # what is left is right
    c = mount(url, "--disk-cache", str(folder), name="c")
    read_all(c.path, files)
    assert len(range_requests(nginx, mark)) < BIG_SIZE // MiB


# -- offline ------------------------------------------------------------------


@pytest.fixture
def own_nginx(sample, tmp_path):
    """An nginx of this test's own, which it may stop."""
    from nginxserver import start_nginx, stop_nginx

    server, proc = start_nginx(sample.root, tmp_path / "own-nginx")
    yield server, proc
    if proc.poll() is None:
        stop_nginx(proc)


def _read_errno(path: Path) -> tuple[int | None, float]:
    started = time.monotonic()
    try:
        path.read_bytes()
    except OSError as exc:
        return exc.errno, time.monotonic() - started
    return None, time.monotonic() - started


def test_with_the_server_gone_stored_files_are_read_and_others_fail_fast(mount, own_nginx, sample, tmp_path):
    from nginxserver import stop_nginx

    server, proc = own_nginx
    url = sample.url(server.base_url)
    folder = tmp_path / "cache"
    first = mount(url, "--disk-cache", str(folder), name="first")
    summary = (first.path / "summary.json").read_bytes()
    big = (first.path / "big.bin").read_bytes()
    tiles = sorted(os.listdir(first.path))
    umount(first)
    stop_nginx(proc)  # the server is gone

    second = mount(url, "--disk-cache", str(folder), "--listing-ttl", "1", name="second")  # from the stored listing
    assert "the last listing stored is served" in second.log_text()
    assert sorted(os.listdir(second.path)) == tiles
    assert (second.path / "summary.json").read_bytes() == summary and (second.path / "big.bin").read_bytes() == big
    first_try = _read_errno(second.path / "odd names" / "empty.dat")  # a folder never listed: not stored
    assert first_try[0] in (errno.EIO, errno.ENOENT) and first_try[1] < 5
    listed_not_read = [n for n in os.listdir(second.path) if n.endswith(".csv")]
    assert listed_not_read
    for name in listed_not_read:
        code, seconds = _read_errno(second.path / name)  # listed, never read: fails at once
        assert code == errno.EIO and seconds < 2, (name, code, seconds)
    time.sleep(1.5)  # the listing's TTL passes: it is asked for again, and the stored one served again
    assert sorted(os.listdir(second.path)) == tiles
    assert (second.path / "summary.json").read_bytes() == summary


def test_offline_never_touches_the_network(mount, nginx, sample, tmp_path):
    url = sample.url(nginx.base_url)
    folder = tmp_path / "cache"
    first = mount(url, "--disk-cache", str(folder), name="first")
    summary = (first.path / "summary.json").read_bytes()
    names = sorted(os.listdir(first.path))
    umount(first)

    mark = nginx.mark()
    offline = mount(url, "--disk-cache", str(folder), "--offline", name="offline")
    assert sorted(os.listdir(offline.path)) == names
    assert (offline.path / "summary.json").read_bytes() == summary
    code, seconds = _read_errno(offline.path / "big.bin")
    assert code == errno.EIO and seconds < 1
    code, _ = _read_errno(offline.path / "DES0226-1541" / "x")  # a folder never listed
    assert code == errno.EIO
    umount(offline)
    assert nginx.requests_since(mark) == []

    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "nothing").mkdir()
    r = run_desfs("mount", url, str(empty), "--disk-cache", str(tmp_path / "nothing"), "--offline",
                  "--log-file", str(tmp_path / "nothing.log"))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "offline" in r.stderr


def test_a_mount_starts_fast_with_100000_blocks_in_its_cache(mount, nginx, sample, tmp_path):
    """No scan at start: a cache of 100 000 block files opens in well under a second, and a mount on it
    starts and reads right."""
    import sqlite3

    folder = tmp_path / "cache"
    DiskStore(str(folder), 10 * 1024 * MiB).close()
    db = sqlite3.connect(folder / "index.sqlite")
    rows = []
    for i in range(100_000):
        name = f"{i:064x}"
        sub = folder / "blocks" / name[:2]
        if i < 256:
            sub.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(sub / name, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"x" * 64)
        os.close(fd)
        rows.append((name, f'"k{i}"', 64, i, 0.0))
    with db:
        db.executemany("INSERT INTO blocks (name, key, size, used, stored) VALUES (?, ?, ?, ?, ?)", rows)
    db.close()

    started = time.monotonic()
    store = DiskStore(str(folder), 10 * 1024 * MiB)
    opened = time.monotonic() - started
    assert store.current_size == 100_000 * 64
    store.close()
    assert opened < 1.0, opened

    started = time.monotonic()
    m = mount(sample.url(nginx.base_url), "--disk-cache", str(folder), name="big-cache")
    took = time.monotonic() - started
    assert (m.path / "summary.json").read_bytes() == Path(sample.cutout_dir, "summary.json").read_bytes()
    assert took < 5, took  # (the whole `desfs mount`: a Python start, the first listing, FUSE's INIT)


# -- desfs cache --------------------------------------------------------------


def _tree_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_cache_fetch_pin_survives_eviction_pressure_and_clear_removes(mount, nginx, sample, tmp_path):
    url = sample.url(nginx.base_url)
    folder = tmp_path / "cache"
    options = ("--disk-cache", str(folder), "--disk-cache-size", "3M")
    m = mount(url, *options, name="m")
    tile = m.path / "DES0226-1541"
    r = run_desfs("cache", "fetch", "--pin", "--disk-cache", str(folder), str(tile))
    assert r.returncode == 0, r.stderr
    assert "files" in r.stderr and "pinned" in r.stderr
    pinned = _tree_files(tile)
    assert len(pinned) >= 10
    expected = {p: Path(sample.cutout_dir, p.relative_to(m.path)).read_bytes() for p in pinned}

    assert (m.path / "big.bin").read_bytes() == Path(sample.cutout_dir, "big.bin").read_bytes()  # 12 MiB through 3M
    r = run_desfs("cache", "status", "--disk-cache", str(folder))
    assert r.returncode == 0 and "pinned" in r.stdout and "1 jobs" in r.stdout, r.stdout
    umount(m)

    mark = nginx.mark()
    again = mount(url, *options, name="again")
    for p in pinned:
        assert (again.path / p.relative_to(m.path)).read_bytes() == expected[p]
    assert range_requests(nginx, mark) == []  # pinned: never evicted by big.bin

    r = run_desfs("cache", "clear", "--disk-cache", str(folder), str(again.path / "DES0226-1541"))
    assert r.returncode == 0 and r.stdout.startswith("removed "), r.stdout + r.stderr
    assert int(r.stdout.split()[1]) >= len(pinned)
    umount(again)
    mark = nginx.mark()
    third = mount(url, *options, name="third")
    first = pinned[0]
    assert (third.path / first.relative_to(m.path)).read_bytes() == expected[first]
    assert len(range_requests(nginx, mark)) == 1  # cleared: fetched again


def test_cache_fetch_of_a_source_warms_a_later_mount(mount, nginx, sample, tmp_path):
    url = sample.url(nginx.base_url)
    folder = tmp_path / "cache"
    r = run_desfs("cache", "fetch", "-q", "--disk-cache", str(folder), url + "big.bin")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    mark = nginx.mark()
    m = mount(url, "--disk-cache", str(folder))
    assert (m.path / "big.bin").read_bytes() == Path(sample.cutout_dir, "big.bin").read_bytes()
    assert range_requests(nginx, mark) == []


def test_a_cache_folder_removed_by_hand_while_mounted(mount, nginx, sample, tmp_path):
    import shutil

    folder = tmp_path / "cache"
    m = mount(sample.url(nginx.base_url), "--disk-cache", str(folder), "--cache-size", "4M")
    big = Path(sample.cutout_dir, "big.bin").read_bytes()
    assert (m.path / "big.bin").read_bytes() == big
    wait_for(lambda: len(block_files(folder)) >= -(-BIG_SIZE // MiB))  # every block written

    def removed() -> bool:  # rm -rf ~/.cache/desfs (again if the index was being written meanwhile)
        shutil.rmtree(folder, ignore_errors=True)
        return not folder.exists()

    wait_for(removed)
    with open(m.path / "big.bin", "rb") as f:  # (not from the kernel's copy)
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert f.read() == big
    wait_for(lambda: block_files(folder) if folder.exists() else None)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # made again, private
    assert "Traceback" not in m.log_text()


def test_the_free_space_floor_is_kept(tmp_path):
    """Whatever the budget, a put that would leave less than the floor free evicts first, or keeps nothing."""
    from desfs.cache import FileKey

    key = lambda i: (FileKey("http://h/f", 10 * MiB, 1.0), i)  # noqa: E731
    roomy = DiskStore(str(tmp_path / "c"), 1 << 40, free_floor=0.0)
    for i in range(3):
        roomy.put(key(i), b"x" * 1000)
    assert roomy.current_size == 3000
    roomy.close()
    full = DiskStore(str(tmp_path / "c"), 1 << 40, free_floor=1.0)  # a disk that is always "full"
    full.put(key(3), b"y" * 1000)
    assert full.get(key(3)) is None and full.current_size == 0 and block_files(tmp_path / "c") == []


def _hammer(folder: str, budget: int, seed: int, rounds: int) -> None:
    """One process's share of test_two_processes_keep_one_budget: puts and gets of overlapping keys."""
    import random

    from desfs.cache import FileKey

    store, rnd = DiskStore(folder, budget), random.Random(seed)
    for _ in range(rounds):
        key = (FileKey("http://h/f", 1 << 30, 1.0), rnd.randrange(16))
        if store.get(key) is None:
            store.put(key, bytes([key[1]]) * (4096 + 97 * key[1]))
    store.close()


def test_two_processes_keep_one_budget(tmp_path):
    """Two processes filling one folder at once: the budget holds, and the index counts just the files there
    (a block evicted by one process and used by the other is not counted again)."""
    import multiprocessing

    folder, budget = str(tmp_path / "cache"), 64 * 1024
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(folder, budget, seed, 1500)) for seed in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = DiskStore(folder, budget)
    on_disk = sum(p.stat().st_size for p in block_files(Path(folder)))
    assert store.current_size <= budget
    assert on_disk <= budget + 40 * 256  # (headers)
    assert len(list(block_files(Path(folder)))) == len(store.keys())


def test_a_use_remembered_by_one_store_does_not_bring_back_a_block_another_removed(tmp_path):
    from desfs.cache import FileKey

    folder = str(tmp_path / "cache")
    a, b = DiskStore(folder, 10**6), DiskStore(folder, 10**6)
    key = (FileKey("http://h/f", 1000, 1.0), 0)
    a.put(key, b"x" * 1000)
    assert a.get(key) == b"x" * 1000  # a use, remembered for the index
    assert b.discard(key)
    a.close()
    store = DiskStore(folder, 10**6)
    assert (store.current_size, store.keys()) == (0, [])
