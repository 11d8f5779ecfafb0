"""nginx configured exactly like the DES file server (shared/DESACCESS.md), on a free loopback port."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NGINX_CONF = """
daemon off;
master_process on;
worker_processes 2;
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 512; }}
http {{
    default_type application/octet-stream;
    log_format desfs '$request_method "$request_uri" "$http_range" $status $body_bytes_sent';
    access_log {dir}/access.log desfs;
    client_body_temp_path {dir}/tmp; proxy_temp_path {dir}/tmp; fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp; scgi_temp_path {dir}/tmp;
    server {{
        listen 127.0.0.1:{port};
        # The DES file server's locations, as in shared/DESACCESS.md.
        location ~ ^/files-desaccess/.+/jupyter/public/.+/$ {{ root {root}; autoindex on; autoindex_format html; }}
        location ~ ^/files-desaccess/.+/jupyter/.+/$        {{ root {root}; autoindex off; }}
        location ~ ^/files-desaccess/.+/.+/.+/json$ {{
            rewrite ^(/files-desaccess/.+/.+/.+/)json$ $1 break;
            root {root}; autoindex on; autoindex_format jsonp; }}
        location ~ ^/files-desaccess/.+/.+/.+/$ {{ root {root}; autoindex on; autoindex_format html; }}
        location / {{ root {root}; index index.html index.htm; }}
    }}
}}
"""


@dataclass
class Nginx:
    base_url: str
    access_log: Path
    port: int

    def log_lines(self) -> list[str]:
        return self.access_log.read_text(errors="replace").splitlines()

    def mark(self) -> int:
        return len(self.log_lines())

    def requests_since(self, mark: int) -> list[tuple[str, str, str, int, int]]:
        """(method, decoded path, range, status, body bytes) of each request after `mark`."""
        out = []
        for line in self.log_lines()[mark:]:
            m = re.match(r'(\S+) "(.*)" "(.*)" (\d+) (\d+)$', line)
            if m:
                out.append((m[1], unquote(m[2]), m[3], int(m[4]), int(m[5])))
        return out


def start_nginx(root: str, workdir: Path) -> tuple[Nginx, subprocess.Popen]:
    """nginx configured like the DES file server, serving `root` on a free loopback port."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(binary):
        raise RuntimeError("nginx is not installed: the README's test command installs it "
                           "(apt-get install nginx-light)")
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        port = free_port()
        conf = workdir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=workdir, port=port, root=root))
        proc = subprocess.Popen([binary, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return Nginx(f"http://127.0.0.1:{port}/files-desaccess/", workdir / "access.log", port), proc
            except OSError:
                time.sleep(0.05)
        stop_nginx(proc)
    raise RuntimeError(f"nginx did not start: {(workdir / 'error.log').read_text(errors='replace')}")


def stop_nginx(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


