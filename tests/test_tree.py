"""The tree layer without FUSE: request counts prove the caching."""

import errno
import os

import pytest

from desfs.client import Client
from desfs.errors import NotFound
from desfs.tree import Tree
from desfs.settings import Settings


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def tree(server, sample, clock):
    client = Client(sample.url(server.base_url), timeout=2, retries=1, backoff=0.01)
    return Tree(client, Settings(listing_ttl=60, block_size=64 * 1024, cache_size=1 << 20), timer=clock)


def test_lookup_uses_parent_listing_no_head(tree, server):
    tree.list_dir("/odd names")
    for name in ["with space.txt", "hash#1.txt", "empty.dat"]:
        assert not tree.lookup(f"/odd names/{name}").is_dir
    assert [m for m, *_ in server.requests] == ["GET"]  # one listing, no HEAD


def test_missing_name_in_cached_folder_costs_nothing(tree, server):
    tree.list_dir("/")
    for _ in range(5):
        with pytest.raises(NotFound) as info:
            tree.lookup("/no-such-file.fits")
        assert info.value.errno == errno.ENOENT
    assert len(server.requests) == 1


def test_listing_ttl(tree, server, clock):
    tree.list_dir("/")
    clock.now += 59
    tree.list_dir("/")
    assert server.count(suffix="/json") == 1
    clock.now += 2
    tree.list_dir("/")
    assert server.count(suffix="/json") == 2


def test_read_caches_blocks(tree, server, sample):
    e = tree.lookup("/big.bin")
    data = open(os.path.join(sample.cutout_dir, "big.bin"), "rb").read()
    assert tree.read("/big.bin", e, 70_000, 100) == data[70_000:70_100]
    assert tree.read("/big.bin", e, 65_536, 65_536) == data[65_536:131_072]
    assert server.count(contains="big.bin") == 1


def test_walk_visits_every_folder_once(tree, server, sample):
    folders = [f for f, _ in tree.walk("/")]
    on_disk = [r for r, d, f in os.walk(sample.cutout_dir) if not os.path.basename(r).startswith(".")]
    assert len(folders) == len(on_disk)
    assert server.count(suffix="/json") == len(on_disk)


def test_deleted_job_drops_caches(tree, server, sample):
    e = tree.lookup("/summary.json")
    tree.read("/summary.json", e, 0, 10)
    server.faults.status, server.faults.status_count = 404, 100
    tree.forget_listing("/")
    with pytest.raises(NotFound):
        tree.list_dir("/")
    assert tree.blocks.blocks.current_size == 0


def test_a_walk_lists_ahead_without_extra_requests(tree, server, sample, clock):
    import time

    tree.read_folder("/")
    assert server.count(suffix="/json") == 1  # a folder read on its own: its listing only
    tree.read_folder("/DES0226-1541")  # soon after its parent: a walk
    deadline = time.monotonic() + 5  # its 2 sub-folders and its 2 sibling folders, in the background
    while server.count(suffix="/json") < 2 + 2 + 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.count(suffix="/json") >= 6
    for _ in tree.walk("/"):
        pass
    on_disk = sum(1 for r, d, f in os.walk(sample.cutout_dir) if not os.path.basename(r).startswith("."))
    assert server.count(suffix="/json") == on_disk  # every folder listed exactly once
    tree.close()


def test_folders_read_apart_do_not_list_ahead(tree, server, clock):
    tree.read_folder("/")
    clock.now += 60
    tree.read_folder("/DES0226-1541")
    assert tree.caches.walker.idle()  # whatever was sent ahead has been listed
    assert server.count(suffix="/json") == 2
    tree.close()


def test_both_trees_speak_the_mount_tree_interface():
    """The FUSE adapter serves a Tree or an AccountTree through tree.MountTree: both have every method,
    with the same parameters."""
    import inspect

    from desfs.account import AccountTree
    from desfs.tree import MountTree

    wanted = {name for name, value in vars(MountTree).items() if callable(value) and not name.startswith("_")}
    assert wanted == {"lookup", "list_dir", "read_folder", "open", "read", "readlink", "attributes", "close"}
    for cls in (Tree, AccountTree):
        for name in wanted:
            have = list(inspect.signature(getattr(cls, name)).parameters)
            assert have == list(inspect.signature(getattr(MountTree, name)).parameters), (cls.__name__, name)
