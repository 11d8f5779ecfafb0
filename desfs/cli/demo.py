"""Command line: `desfs demo`, a sample account served by a built-in DES-like file server, mounted."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from desfs.cli.daemon import hold_stop_signals, serve
from desfs.cli.mount import fuse_options
from desfs.settings import Settings


def cmd_demo(args: argparse.Namespace) -> int:
    from desfs.account import AccountTree, FixedJobs
    from desfs.api import Job
    from desfs.sample import MTIME, make_sample
    from desfs.server import DesServer

    hold_stop_signals()  # before the server's threads start: the mount's signal thread takes them
    workdir = tempfile.mkdtemp(prefix="desfs-demo-")
    mountpoint = args.mountpoint or os.path.join(workdir, "mnt")
    if args.mountpoint is None:
        os.mkdir(mountpoint)
    sample = make_sample(os.path.join(workdir, "server"))
    server = DesServer(os.path.join(workdir, "server")).start()
    finished = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(MTIME))
    account = FixedJobs(sample.user, [Job(job_id, job_type, name, "success", finished)
                                      for job_type, job_id, name in sample.jobs])
    def tell() -> None:
        mp, cut, obj = mountpoint, f"{mountpoint}/cutout/{sample.cutout_job}", "DESJ030510.9606-341521.6000"
        here = os.path.join(os.path.dirname(sys.executable), "desfs")
        prog = "desfs" if shutil.which("desfs") == here or not os.path.exists(here) else here
        print(f"desfs demo: a sample DESaccess account is mounted on {mp}\n"
              f"  (a cutout job and a query job, served by a local DES-like file server at {server.base_url})\n"
              f"Try, in another terminal:\n"
              f"  ls -lR {mp}\n"
              f"  ls -l {mp}/by-name\n"
              f"  cat {cut}/positions_{sample.cutout_job}.csv\n"
              f"  python3 -c \"from astropy.io import fits; fits.info('{cut}/DES0305-3415/{obj}/{obj}_r.fits')\"\n"
              f"  {prog} ls -l {sample.url(server.base_url, 'query')}\n"
              f"Press Ctrl-C here to unmount and stop.", flush=True)

    def demo_account(settings: Settings):
        return AccountTree(account, server.base_url, settings), f"demo@{server.base_url}"

    def cleanup() -> None:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        print("desfs demo: unmounted and stopped", file=sys.stderr, flush=True)

    return serve(mountpoint, Settings(), demo_account, fuse_options=fuse_options([]), on_ready=tell, cleanup=cleanup)
