"""Sample DESaccess job output for `desfs demo` and the tests: small but valid files.

Writes a cutout job in the current layout (tile/object folders, one FITS image
per band, PNGs, positions CSV, summary.json, logs, the job archive) and a query
job (CSV and a FITS table) under `<root>/files-desaccess/<user>/`. Deterministic:
the same call writes the same bytes. Needs only the standard library.
"""

from __future__ import annotations

import array
import json
import math
import os
import random
import struct
import sys
import tarfile
import zlib
from dataclasses import dataclass

CUTOUT_JOB = "5b0a7ed4c4e94d7e8b6f1a2c3d4e5f60"
QUERY_JOB = "9f8e7d6c5b4a49382716f5e4d3c2b1a0"
MTIME = 1795651200  # 2026-11-26 00:00:00 UTC: a fixed date, so listings are reproducible
BANDS = "grizy"
OBJECTS = {
    "DES0226-1541": ["DESJ022640.4160-154120.0040", "DESJ022642.8160-153932.0040"],
    "DES0305-3415": ["DESJ030510.9606-341521.6000"],
}


@dataclass(frozen=True)
class Sample:
    root: str  # what a server serves
    user: str
    cutout_job: str = CUTOUT_JOB
    query_job: str = QUERY_JOB

    @property
    def cutout_dir(self) -> str:
        return os.path.join(self.root, "files-desaccess", self.user, "cutout", self.cutout_job)

    @property
    def query_dir(self) -> str:
        return os.path.join(self.root, "files-desaccess", self.user, "query", self.query_job)

    @property
    def jobs(self) -> list[tuple[str, str, str]]:
        """(type, job id, job name) of the sample's jobs."""
        return [("cutout", self.cutout_job, "sample cutouts"), ("query", self.query_job, "sample gold query")]

    def url(self, base_url: str, job_type: str = "cutout") -> str:
        """The job folder's URL on a server whose files root is `base_url` (…/files-desaccess/)."""
        job = self.cutout_job if job_type == "cutout" else self.query_job
        return f"{base_url.rstrip('/')}/{self.user}/{job_type}/{job}/"


def make_sample(root: str, user: str = "demo", image_size: int = 64, query_rows: int = 2000) -> Sample:
    sample = Sample(root=root, user=user)
    rng = random.Random(20261125)
    _write_cutout_job(sample, rng, image_size)
    _write_query_job(sample, rng, query_rows)
    for folder, dirs, files in os.walk(os.path.join(root, "files-desaccess")):
        for name in dirs + files:
            os.utime(os.path.join(folder, name), (MTIME, MTIME))
    return sample


# -- jobs -------------------------------------------------------------------


def _write_cutout_job(sample: Sample, rng: random.Random, size: int) -> None:
    job, top = sample.cutout_job, sample.cutout_dir
    os.makedirs(top, exist_ok=True)
    rows = ["RA,DEC,COLORS_FITS,COLORS_PNG,XSIZE,YSIZE"]
    summary = {"job_id": job, "cutouts": []}
    for tile, objects in OBJECTS.items():
        for obj in objects:
            ra, dec = _coords(obj)
            folder = os.path.join(top, tile, obj)
            os.makedirs(folder, exist_ok=True)
            for band in BANDS:
                pixels = _galaxy(rng, size)
                header = {"OBJECT": obj, "TILENAME": tile, "BAND": band, "RA": ra, "DEC": dec, "EXPTIME": 900.0}
                _write(os.path.join(folder, f"{obj}_{band}.fits"), fits_image(pixels, size, size, header))
            for kind in ("stiff", "lupton"):
                _write(os.path.join(folder, f"{obj}_irg_{kind}.png"), png_rgb(_rgb(rng, size), size, size))
            rows.append(f"{ra:.6f},{dec:.6f},{BANDS},irg,1.0,1.0")
            summary["cutouts"].append({"tile": tile, "object": obj, "bands": list(BANDS)})
    _write(os.path.join(top, f"positions_{job}.csv"), ("\n".join(rows) + "\n").encode())
    _write(os.path.join(top, "summary.json"), json.dumps(summary, indent=2).encode())
    log = "".join(f"2026-11-24 23:5{i}:00 INFO cutout {i + 1} of 3 done\n" for i in range(3))
    _write(os.path.join(top, f"cutout_{job}.log"), log.encode())
    parent = os.path.dirname(top)
    _write(os.path.join(parent, f"{job}.log"), b"job " + job.encode() + b" finished: success\n")
    with tarfile.open(os.path.join(parent, f"{job}.tar.gz"), "w:gz", compresslevel=1) as tar:
        tar.add(top, arcname=job)


def _write_query_job(sample: Sample, rng: random.Random, nrows: int) -> None:
    job, top = sample.query_job, sample.query_dir
    os.makedirs(top, exist_ok=True)
    columns = [("COADD_OBJECT_ID", "K"), ("RA", "D"), ("DEC", "D"), ("MAG_AUTO_G", "E"), ("TILENAME", "12A")]
    records = []
    for i in range(nrows):
        records.append((1_000_000_000 + i, rng.uniform(0, 360), rng.uniform(-65, 5), rng.uniform(17, 25),
                        rng.choice(list(OBJECTS))))
    csv = ["COADD_OBJECT_ID,RA,DEC,MAG_AUTO_G,TILENAME"]
    csv += [f"{r[0]},{r[1]:.6f},{r[2]:.6f},{r[3]:.4f},{r[4]}" for r in records]
    _write(os.path.join(top, "results.csv"), ("\n".join(csv) + "\n").encode())
    _write(os.path.join(top, "results.fits"), fits_table(columns, records))
    meta = {"job_id": job, "query": "SELECT COADD_OBJECT_ID, RA, DEC, MAG_AUTO_G, TILENAME FROM Y6_GOLD", "rows": nrows}
    _write(os.path.join(top, "meta.json"), json.dumps(meta, indent=2).encode())
    _write(os.path.join(os.path.dirname(top), f"{job}.log"), b"job " + job.encode() + b" finished: success\n")


def _coords(obj: str) -> tuple[float, float]:
    hh, mm, ss = int(obj[4:6]), int(obj[6:8]), float(obj[8:15])
    sign = -1 if "-" in obj[15:] else 1
    dd, dm, ds = int(obj[16:18]), int(obj[18:20]), float(obj[20:27])
    return 15 * (hh + mm / 60 + ss / 3600), sign * (dd + dm / 60 + ds / 3600)


def _galaxy(rng: random.Random, n: int) -> list[float]:
    cx, cy, width = n / 2 + rng.uniform(-3, 3), n / 2 + rng.uniform(-3, 3), rng.uniform(3, 8)
    flux = rng.uniform(500, 5000)
    return [flux * math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * width**2)) + rng.gauss(10, 3)
            for y in range(n) for x in range(n)]


def _rgb(rng: random.Random, n: int) -> bytes:
    cx, cy = n / 2, n / 2
    out = bytearray()
    for y in range(n):
        for x in range(n):
            v = int(255 * math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (n / 8) ** 2)))
            out += bytes((v, v * 3 // 4, min(255, v // 2 + rng.randrange(16))))
    return bytes(out)


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


# -- file formats -----------------------------------------------------------

BLOCK = 2880


def _card(key: str, value: object = None, comment: str = "") -> bytes:
    if value is None:
        text = key.ljust(80)
    else:
        if isinstance(value, bool):
            v = ("T" if value else "F").rjust(20)
        elif isinstance(value, int):
            v = str(value).rjust(20)
        elif isinstance(value, float):
            v = repr(value).upper().rjust(20)
        else:
            v = ("'" + str(value).replace("'", "''").ljust(8) + "'").ljust(20)
        text = f"{key:<8}= {v}" + (f" / {comment}" if comment else "")
    return text[:80].ljust(80).encode("ascii")


def _pad(data: bytes, fill: bytes) -> bytes:
    return data + fill * (-len(data) % BLOCK)


def _header(cards: list[bytes]) -> bytes:
    return _pad(b"".join(cards) + _card("END"), b" ")


def fits_image(pixels: list[float], width: int, height: int, keywords: dict) -> bytes:
    """A primary-HDU FITS image of 32-bit floats."""
    cards = [_card("SIMPLE", True, "conforms to FITS standard"), _card("BITPIX", -32), _card("NAXIS", 2),
             _card("NAXIS1", width), _card("NAXIS2", height)]
    cards += [_card(k, v) for k, v in keywords.items()]
    data = array.array("f", pixels)
    if sys.byteorder == "little":
        data.byteswap()
    return _header(cards) + _pad(data.tobytes(), b"\0")


def fits_table(columns: list[tuple[str, str]], records: list[tuple]) -> bytes:
    """An empty primary HDU and a BINTABLE extension; formats K, D, E and nA."""
    codes = {"K": ">q", "D": ">d", "E": ">f"}
    fmt = ">" + "".join(codes[f][1] if f in codes else f"{int(f[:-1])}s" for _, f in columns)
    row = struct.Struct(fmt)
    body = b"".join(row.pack(*[v.encode() if isinstance(v, str) else v for v in r]) for r in records)
    primary = _header([_card("SIMPLE", True), _card("BITPIX", 8), _card("NAXIS", 0), _card("EXTEND", True)])
    cards = [_card("XTENSION", "BINTABLE"), _card("BITPIX", 8), _card("NAXIS", 2), _card("NAXIS1", row.size),
             _card("NAXIS2", len(records)), _card("PCOUNT", 0), _card("GCOUNT", 1), _card("TFIELDS", len(columns))]
    for i, (name, form) in enumerate(columns, 1):
        cards += [_card(f"TTYPE{i}", name), _card(f"TFORM{i}", form)]
    cards.append(_card("EXTNAME", "RESULTS"))
    return primary + _header(cards) + _pad(body, b"\0")


def png_rgb(pixels: bytes, width: int, height: int) -> bytes:
    """An 8-bit RGB PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    stride = width * 3
    raw = b"".join(b"\0" + pixels[y * stride:(y + 1) * stride] for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
