"""Listing memory is counted in bytes, within --listing-cache-size: the size accounting, the bounded
parse, and through real mounts a folder too large for the budget and four large folders in a small one."""

import errno
import gc
import json
import os
import random
import re
import time
import tracemalloc

import pytest

from faultserver import FaultServer  # noqa: F401  (the `server` fixture's type)

MiB = 1024 * 1024
MTIME = "Thu, 26 Nov 2026 00:00:00 GMT"


def listing_json(n: int, prefix: str = "DESJ", mtimes: bool = True) -> bytes:
    """An nginx-like listing of `n` files, made as bytes (a list of dicts would cost the test ~400 B a name)."""
    time_part = f', "mtime":"{MTIME}"' if mtimes else ""
    items = ('{ "name":"%s%07d_r.fits", "type":"file"%s, "size":%d }' % (prefix, i, time_part, 1000 + i)
             for i in range(n))
    return ("[\n" + ",\n".join(items) + "\n]\n").encode()


def parse(body: bytes, max_bytes=None, pieces=None):
    from desfs.listing import ListingParser

    parser = ListingParser("http://h/x/json", max_bytes)
    step = pieces or len(body) or 1
    for i in range(0, len(body), step):
        parser.feed(body[i:i + step])
    return parser.close()


# -- the size of a parsed listing --------------------------------------------

@pytest.mark.parametrize("prefix, mtimes", [("DESJ", True), ("ünï ✓ cutout of a longer name ", False)])
def test_listing_bytes_are_what_python_holds(prefix, mtimes):
    """The estimate (`nbytes`) is what tracemalloc sees the parsed listing hold, each block rounded up to
    pymalloc's 16-byte size classes as it is in memory (tracemalloc's own total counts the bytes asked for)."""
    n = 50_000
    body = listing_json(n, prefix, mtimes)
    gc.collect()
    tracemalloc.start()
    try:
        listing = parse(body, pieces=256 * 1024)
        gc.collect()
        asked, _ = tracemalloc.get_traced_memory()
        held = sum((t.size + 15) & ~15 for t in tracemalloc.take_snapshot().traces)
    finally:
        tracemalloc.stop()
    assert len(listing) == n
    print(f"per name: estimate {listing.nbytes / n:.1f}, held {held / n:.1f}, asked for {asked / n:.1f} bytes")
    assert 0.97 * held <= listing.nbytes <= 1.03 * held
    assert asked <= listing.nbytes


def test_entry_bytes_of_one_entry():
    from desfs.listing import Entry, Listing, entry_bytes

    small = Entry("a.fits", False, 12, 0.0)
    big = Entry("a" * 200, False, 5 * 1024**3, 1594048895.0)
    assert entry_bytes(big) - entry_bytes(small) >= 200  # the name's characters, the size and time objects
    assert Listing.of([small, big]).nbytes > entry_bytes(small) + entry_bytes(big)  # plus the dict


def test_parse_stops_at_the_budget():
    """A listing whose entries would pass the budget is refused while it is parsed: memory stays near the budget."""
    from desfs.errors import TooLarge

    body = listing_json(400_000)
    gc.collect()
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge) as info:
            parse(body, max_bytes=4 * MiB, pieces=256 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.errno == errno.EFBIG
    assert "--listing-cache-size" in str(info.value)
    assert peak < 4 * MiB + 3 * MiB, peak  # the budget, one piece of text and the item being parsed


def test_parse_does_not_keep_the_items_of_a_hostile_listing():
    """Items that are no entries (type other, refused names) cost nothing once parsed, however many."""
    junk = b",".join([b'{"name":"s%d","type":"other","x":[1,2,3,4,5,6,7,8]}' % i for i in range(100_000)])
    body = b"[" + junk + b"]"
    gc.collect()
    tracemalloc.start()
    try:
        listing = parse(body, pieces=256 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(listing) == 0
    assert peak < 3 * MiB, peak  # json.loads of the whole body would hold ~100 MB of dicts


@pytest.mark.parametrize("pieces", [1, 2, 3, 7, 64, 1000])
def test_parse_in_pieces_is_parse_of_the_whole(pieces):
    items = [{"name": "ünï ✓ #?%+", "type": "file", "size": 123456789, "mtime": MTIME},
             {"name": 'q"uote\\d', "type": "directory", "mtime": MTIME},
             {"name": "😀 astral", "type": "file", "size": 7},
             {"name": "..", "type": "file", "size": 1},
             17, "a string", None, [1, [2, [3]]],
             {"name": "n", "type": "file", "size": 1, "extra": {"deep": [1.5e3, True, False, None]}}]
    body = json.dumps(items, ensure_ascii=pieces % 2 == 0).encode()
    whole = parse(body)
    assert list(parse(body, pieces=pieces).values()) == list(whole.values())
    assert [e.name for e in whole.values()] == ["ünï ✓ #?%+", 'q"uote\\d', "😀 astral", "n"]
    assert whole["ünï ✓ #?%+"].size == 123456789


@pytest.mark.parametrize("body", [b"[1,]", b"[,1]", b"[1 2]", b"[] x", b"[", b"", b"  ", b"{}", b'"a"', b"[1]]",
                                  b"[" * 100_000])
def test_parse_refuses_what_is_not_a_listing(body):
    from desfs.errors import BadListing

    for pieces in (None, 5):
        with pytest.raises(BadListing):
            parse(body, pieces=pieces)


def test_an_item_longer_than_any_listing_item_is_refused():
    """The item under way is held until it is complete: beyond ITEM_MAX_CHARS the listing is refused."""
    from desfs.errors import BadListing

    body = b'[{"name":"a", "type":"file", "pad":"' + b"x" * 70_000 + b'"}]'
    with pytest.raises(BadListing):
        parse(body, pieces=4096)


def test_json_module_agrees_on_valid_bodies():
    for body in (b"[]", b" [ ] ", b'[{"name":"a","type":"file"}]\n', b"[1,2,3]"):
        json.loads(body)
        parse(body, pieces=1)


def test_listing_cache_counts_bytes_and_evicts():
    """The listing cache of a mount is bounded by the bytes of its listings, oldest use out first."""
    from desfs.settings import Settings
    from desfs.tree import Caches

    one = parse(listing_json(10_000))
    caches = Caches(Settings(listing_cache_size=int(2.5 * one.nbytes)))
    try:
        for key in ("/a", "/b"):
            caches.listings.put(key, parse(listing_json(10_000)))
        assert caches.listings.current_size == 2 * one.nbytes
        caches.listings.put("/c", parse(listing_json(10_000)))
        assert "/a" not in caches.listings and "/b" in caches.listings and "/c" in caches.listings
    finally:
        caches.close()


def test_a_refused_listing_is_remembered_for_its_ttl(server, sample):
    """A folder over the budget is refused (EFBIG) with one request per --listing-ttl, not one per look."""
    from desfs.client import Client
    from desfs.errors import TooLarge
    from desfs.settings import Settings
    from desfs.tree import Tree

    server.faults.listing_body = {job_path(sample, "odd names/json"): listing_json(20_000)}
    clock = Clock()
    tree = Tree(Client(sample.url(server.base_url), timeout=5, retries=0),
                Settings(listing_ttl=60, listing_cache_size=2 * MiB), timer=clock)
    try:
        for name in ("DESJ0000001_r.fits", "DESJ0000002_r.fits", "nope"):
            with pytest.raises(TooLarge):
                tree.lookup("/odd names/" + name)
        assert server.count(suffix="odd names/json") == 1
        assert tree.lookup("/odd names").is_dir  # its parent's listing is fine
        clock.now += 61
        with pytest.raises(TooLarge):
            tree.list_dir("/odd names")
        assert server.count(suffix="odd names/json") == 2
    finally:
        tree.close()


def test_running_jobs_listings_share_the_budget_and_expire_sooner(server, sample):
    """A Tree with a shorter listing TTL (a running job's) uses the same byte budget; its listings expire first."""
    from desfs.client import Client
    from desfs.settings import Settings
    from desfs.tree import Caches, Tree

    clock = Clock()
    caches = Caches(Settings(listing_ttl=120), timer=clock)
    client = Client(sample.url(server.base_url), timeout=5, retries=0)
    done = Tree(client, caches=caches, prefix="/done")
    running = Tree(client, caches=caches, prefix="/running", listing_ttl=10)
    try:
        done.list_dir("/")
        running.list_dir("/")
        assert caches.listings.current_size == 2 * done.list_dir("/").nbytes
        clock.now += 11
        assert "/done" in caches.listings and "/running" not in caches.listings
        before = server.count(suffix="/json")
        running.list_dir("/")
        done.list_dir("/")
        assert server.count(suffix="/json") == before + 1
    finally:
        caches.close()


def test_account_sidecars_and_running_jobs_count_in_the_listing_budget(server, sample):
    """An account mount keeps the .log/.tar.gz of each job and the listings of running jobs among the listings,
    counted in bytes in the one budget (they were bounded by count alone: a million items each)."""
    from desfs.account import AccountTree, FixedJobs
    from desfs.api import Job
    from desfs.settings import Settings

    clock = Clock()
    running = "b" * 32
    jobs = [Job(sample.cutout_job, "cutout", "done", "success", "2026-11-24 23:59:00"),
            Job(running, "cutout", "running", "started")]
    tree = AccountTree(FixedJobs(sample.user, jobs), server.base_url, Settings(), timer=clock)
    try:
        cutout = tree.list_dir("/cutout")
        assert f"{sample.cutout_job}.log" in cutout
        sidecars = tree.caches.listings.current_size
        assert sidecars > 0  # the sidecar files are held as listings, in bytes
        heads = server.count("HEAD")
        job = tree.list_dir(f"/cutout/{sample.cutout_job}")
        assert tree.caches.listings.current_size == sidecars + job.nbytes
        clock.now += 11  # the running job's (missing) sidecars expire, the finished job's stay
        tree.list_dir("/cutout")
        assert server.count("HEAD") == heads + 2  # running.log and running.tar.gz, checked again
    finally:
        tree.close()


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def job_path(sample, rel=""):
    return f"/files-desaccess/{sample.user}/cutout/{sample.cutout_job}/" + rel


# -- through real mounts -----------------------------------------------------

def daemon_pid(m) -> int:
    found = re.search(r"\(pid (\d+)\)", m.log_text())
    assert found, m.log_text()
    return int(found.group(1))


def memory_kib(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in f) if k in ("VmRSS", "VmHWM")}


@pytest.mark.mount
def test_folder_over_the_budget_costs_one_request(mount, server, sample):
    """1 050 000 names: more than the default budget holds. Every look into it is answered EFBIG from one request
    (today's code fetched and parsed it again on every stat, 3.7 s each)."""
    server.faults.listing_body = {job_path(sample, "odd names/json"): listing_json(1_050_000, mtimes=False)}
    m = mount(sample.url(server.base_url), "--timeout", "20", "--retries", "1")
    folder = m.path / "odd names"
    started = time.monotonic()
    for i in random.Random(5).sample(range(1_050_000), 5):
        with pytest.raises(OSError) as info:
            os.stat(folder / ("DESJ%07d_r.fits" % i))
        assert info.value.errno == errno.EFBIG
    with pytest.raises(OSError) as info:
        os.listdir(folder)
    assert info.value.errno == errno.EFBIG
    assert server.count(suffix="odd names/json") == 1
    assert time.monotonic() - started < 30
    assert "--listing-cache-size" in m.log_text()
    assert os.stat(m.path / "summary.json").st_size > 0  # the rest of the mount is unharmed


@pytest.mark.mount
def test_four_large_folders_stay_within_the_budget(mount, server, sample):
    """Four folders of 100 000 names (~23 MiB of listing each) with --listing-cache-size 32M, so that one fits:
    the daemon's memory stays within --cache-size + --listing-cache-size + 64 MiB once a folder is read, and
    within one listing more while one is being read; the first folder was evicted (fetched again).
    (Today's code: 31 → 313 MB, all four kept.)"""
    folders = ["odd names/json", "odd names/sub #2?", "odd names/empty folder", "DES0305-3415"]
    server.faults.listing_body = {job_path(sample, f + "/json"): listing_json(100_000, prefix=f"F{n}_")
                                  for n, f in enumerate(folders)}
    m = mount(sample.url(server.base_url), "--cache-size", "16M", "--listing-cache-size", "32M")
    pid = daemon_pid(m)
    before = memory_kib(pid)
    for n, f in enumerate(folders):
        names = os.listdir(m.path / f)  # readdir, then a stat of a few names: one request per folder
        assert len(names) == 100_000 and names[0] == f"F{n}_0000000_r.fits"
        for i in (0, 777, 99_999):
            assert os.stat(m.path / f / f"F{n}_{i:07d}_r.fits").st_size == 1000 + i
    after = memory_kib(pid)
    assert [server.count(suffix=f + "/json") for f in folders] == [1, 1, 1, 1]
    print(f"daemon memory (KiB): before {before}, after {after}")
    assert after["VmRSS"] <= (16 + 32 + 64) * 1024, (before, after)
    assert after["VmHWM"] <= (16 + 32 + 32 + 64) * 1024, (before, after)
    os.stat(m.path / folders[-1] / "F3_0000005_r.fits")  # the last folder is still cached ...
    assert server.count(suffix=folders[-1] + "/json") == 1
    os.stat(m.path / folders[0] / "F0_0000005_r.fits")  # ... the first was evicted: fetched again
    assert server.count(suffix=folders[0] + "/json") == 2
