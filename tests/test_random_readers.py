"""The programs the random-read path is for (issue 11), on a real mount of a real nginx: HDF5 chunks
read with h5py, a FITS image section read with astropy. Each read gets the right bytes and costs
about what it asks, not whole blocks of the file."""

import mmap
import os
import random
import time

import h5py
import numpy as np
import pytest

from faultserver import pattern_bytes
from nginxserver import start_nginx, stop_nginx

pytestmark = pytest.mark.mount

KiB, MiB = 1024, 1024 * 1024
JOB = "u/cutout/0123456789abcdef0123456789abcdef"


@pytest.fixture
def far_files(tmp_path):
    """A job folder served by an nginx of its own: (folder to write files in, the job's URL, the nginx)."""
    root = tmp_path / "root"
    folder = root / "files-desaccess" / JOB
    folder.mkdir(parents=True)
    made = []

    def serve():
        own, proc = start_nginx(str(root), tmp_path / "nginx")
        made.append(proc)
        return f"{own.base_url}/{JOB}/", own

    yield folder, serve
    for proc in made:
        stop_nginx(proc)


def fetched(nginx, mark, name):
    """Bytes of `name` the server sent since `mark`, and how many requests."""
    reqs = [r for r in nginx.requests_since(mark) if r[1].endswith("/" + name)]
    return sum(r[4] for r in reqs), len(reqs)


def test_h5py_reads_random_chunks_for_about_their_size(mount, far_files):
    folder, serve = far_files
    data = np.random.default_rng(5).random((4096, 2048), dtype=np.float32)  # 32 MiB
    with h5py.File(folder / "cube.h5", "w") as f:
        f.create_dataset("flux", data=data, chunks=(128, 128))  # chunks of 64 KiB
    url, nginx = serve()
    m = mount(url)
    mark = nginx.mark()
    rng = random.Random(7)
    with h5py.File(m.path / "cube.h5", "r") as f:
        flux = f["flux"]
        opened, _ = fetched(nginx, mark, "cube.h5")  # superblock, object headers, the chunk index
        mark = nginx.mark()
        picks = [(rng.randrange(32) * 128, rng.randrange(16) * 128) for _ in range(12)]
        for r, c in picks:
            assert np.array_equal(flux[r:r + 128, c:c + 128], data[r:r + 128, c:c + 128])
    nbytes, requests = fetched(nginx, mark, "cube.h5")
    # a chunk of 64 KiB costs one or two 64 KiB pieces (it seldom starts on a piece's edge), and a piece of the
    # chunk index on the way (HDF5 keeps its B-tree nodes among the chunks) until h5py has it: never a 1 MiB block,
    # which reads that hop forward by less than a block would get if taken for a sequential run
    assert nbytes <= len(picks) * 192 * 1024, f"{nbytes / len(picks) / 1024:.0f} KiB a chunk read"
    assert requests <= 2 * len(picks), requests
    assert opened <= 2 * MiB, f"{opened / MiB:.2f} MiB to open the file"


def test_astropy_section_of_a_large_image_costs_its_rows_not_the_image(mount, far_files):
    from astropy.io import fits

    folder, serve = far_files
    image = np.random.default_rng(6).random((4096, 4096), dtype=np.float32)  # 64 MiB, rows of 16 KiB
    fits.PrimaryHDU(image).writeto(folder / "tile.fits")
    url, nginx = serve()
    m = mount(url)
    mark = nginx.mark()
    with fits.open(m.path / "tile.fits", memmap=False, lazy_load_hdus=True) as h:
        time.sleep(0.5)  # (the kernel's own readahead of the header's next block may come a little later)
        header, _ = fetched(nginx, mark, "tile.fits")
        mark = nginx.mark()
        cut = h[0].section[3000:3008, 1000:1064]  # 8 rows of 256 bytes, 16 KiB apart, in the file's middle
        assert np.array_equal(cut, image[3000:3008, 1000:1064])
    nbytes, _ = fetched(nginx, mark, "tile.fits")
    assert header <= 2 * MiB, f"{header / MiB:.2f} MiB for the header"
    assert 0 < nbytes <= 512 * 1024, f"{nbytes / 1024:.0f} KiB for an 8 x 64 section"
    assert os.path.getsize(m.path / "tile.fits") > 64 * MiB


def test_a_program_rereading_64_kib_with_o_direct_costs_the_piece_once(mount, server, sample):
    """O_DIRECT reads bypass the page cache, so every re-read of the same 64 KiB reaches desfs: one piece,
    once (bytes read again are no sequential run)."""
    from test_caching import made_up_file, quiet, ranges_asked

    rel = made_up_file(server, sample, 64 * MiB)
    m = mount(sample.url(server.base_url))
    os.stat(m.path / rel)
    fd = os.open(m.path / rel, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 64 * KiB)  # (page-aligned, as O_DIRECT wants)
    try:
        for _ in range(40):
            assert os.preadv(fd, [buf], 5 * MiB) == 64 * KiB
            assert bytes(buf) == pattern_bytes(5 * MiB, 5 * MiB + 64 * KiB)
    finally:
        os.close(fd)
    quiet(server)
    asked = ranges_asked(server, "huge.bin")
    total = sum(last - first + 1 for first, last in asked)
    assert total <= 128 * KiB, f"{total / MiB:.2f} MiB fetched for 64 KiB read 40 times: {asked}"


def test_h5py_reading_a_column_of_chunks_costs_about_its_chunks(mount, far_files):
    """h5py reading one column of 64 KiB chunks (flux[:, c:c+128]): 32 chunks, each 1 MiB after the last, so
    each read hops 960 KiB forward, within the slack: reads that cover less than half their span are no
    sequential run, however long (it once cost 23-31 MiB, whole blocks then readahead, for 2 MiB)."""
    folder, serve = far_files
    data = np.random.default_rng(5).random((4096, 2048), dtype=np.float32)  # 32 MiB, chunk rows of 1 MiB
    with h5py.File(folder / "cube.h5", "w") as f:
        f.create_dataset("flux", data=data, chunks=(128, 128))  # chunks of 64 KiB
    url, nginx = serve()
    m = mount(url)
    with h5py.File(m.path / "cube.h5", "r") as f:
        flux = f["flux"]
        assert flux[0, 0] == data[0, 0]  # (opened: superblock, object headers, chunk index)
        time.sleep(0.5)  # (what opening set off has arrived: the mark below counts the column only)
        mark = nginx.mark()
        assert np.array_equal(flux[:, 640:768], data[:, 640:768])
    time.sleep(0.5)  # (readahead, were it set off, would have asked by now: a negative needs a pause)
    nbytes, requests = fetched(nginx, mark, "cube.h5")
    assert nbytes <= 32 * 192 * KiB, f"{nbytes / MiB:.1f} MiB in {requests} requests for 32 chunks (2 MiB)"
