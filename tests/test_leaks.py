"""Nothing leaks to other local users or to the terminal: a job's URL (the only key to its files)
stays out of process titles, the mount table and error messages; logs are private; hostile names
from the server reach the terminal escaped; allow_other is warned about. Real CLI, real mounts."""

import os
import stat
from pathlib import Path

import pytest

from desfs.mounting import find_mount, lazy_unmount

from conftest import free_port, run_desfs
from fakeapi import FakeApi

pytestmark = pytest.mark.mount

USER, PASSWORD = "astrobuff", "s3cret-Pa55word"
URL_PASSWORD = "Url-Secr3t-pw"
# Characters that must never reach a terminal raw: ESC (title, clear, colours), BEL, newline,
# the C1 CSI U+009B, and the bidi overrides and isolates.
RAW = ["\x1b", "\x07", "\x9b", *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))]
HOSTILE_NAMES = ["\x1b]0;pwned\x07title", "\x1b[2Jclear", "\x1b[31mred", "two\nlines", "csi\x9b31m",
                 "evil\u202etxt.exe", "iso\u2066late\u2069"]
# how they are shown: GNU ls's shell-escape quoting, with the bidi controls escaped too
HOSTILE_SHOWN = ["''$'\\033'']0;pwned'$'\\a''title'", "''$'\\033''[2Jclear'", "''$'\\033''[31mred'",
                 "'two'$'\\n''lines'", "'csi'$'\\302\\233''31m'", "'evil'$'\\342\\200\\256''txt.exe'",
                 "'iso'$'\\342\\201\\246''late'$'\\342\\201\\251'"]


@pytest.fixture
def mounted(tmp_path):
    """Mount points made by a test's own `desfs mount` runs: unmounted at teardown whatever happened."""
    paths: list[Path] = []
    yield paths.append
    for p in paths:
        if find_mount(str(p)):
            if run_desfs("umount", str(p)).returncode != 0:
                lazy_unmount(str(p))


@pytest.fixture
def env(tmp_path):
    """The environment of a run: an empty HOME, no DESACCESS_* unless a test adds them."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("DESACCESS_")}
    e["HOME"] = str(tmp_path / "home")
    (tmp_path / "home").mkdir()
    return e


def serving_pid(log_text: str) -> int:
    return int(log_text.split("(pid ")[1].split(")")[0])


def mountinfo_line(path) -> list[str]:
    line = next(row for row in open("/proc/self/mountinfo") if f" {path} " in row)
    return line.split()


def with_userinfo(url: str, password: str = URL_PASSWORD) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://someone:{password}@{rest}"


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# -- 4: job URLs, the mount table, logs ------------------------------------------------


def test_job_url_stays_out_of_the_command_line_and_the_mount_table(mount, server, sample):
    url = with_userinfo(sample.url(server.base_url))
    m = mount(url, "--debug")
    assert "summary.json" in os.listdir(m.path)
    cmdline = Path(f"/proc/{serving_pid(m.log_text())}/cmdline").read_bytes().decode()
    port = f":{server.server_address[1]}"
    for part in ("someone", URL_PASSWORD, "127.0.0.1", port, "files-desaccess", sample.user, sample.cutout_job):
        assert part not in cmdline, (part, cmdline)
    fields = mountinfo_line(m.path)
    assert fields[fields.index("-") + 2] == "desfs", fields  # the source field
    for part in ("someone", URL_PASSWORD, "127.0.0.1", "files-desaccess", sample.cutout_job):
        assert part not in " ".join(fields)
    log = m.log_text()
    assert "mounting http://***@127.0.0.1" in log and URL_PASSWORD not in log and "someone" not in log


def test_account_urls_and_user_stay_out_of_the_command_line(mount, server, sample, env):
    api = FakeApi({USER: PASSWORD}, {USER: [{"job_id": sample.cutout_job, "job_type": "cutout", "job_name": "mine",
                                             "job_status": "success", "job_time_complete": "2026-11-24 23:59:00"}]})
    api.start()
    try:
        env.update(DESACCESS_USER=USER, DESACCESS_PASSWORD=PASSWORD)
        m = mount(None, "--api-url", api.url, "--files-url", server.base_url, "--retries", "1", env=env)
        assert "summary.json" in os.listdir(m.path / "cutout" / sample.cutout_job)
        cmdline = Path(f"/proc/{serving_pid(m.log_text())}/cmdline").read_bytes().decode()
        for part in (USER, PASSWORD, "127.0.0.1", "desaccess", f":{server.server_address[1]}"):
            assert part not in cmdline, (part, cmdline)
        fields = mountinfo_line(m.path)
        assert fields[fields.index("-") + 2] == "desfs" and USER not in " ".join(fields), fields
        assert "allow_other" not in m.log_text()
    finally:
        api.stop()


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("case", ["fresh home", "left by an older desfs"])
def test_default_log_and_its_folder_are_private(tmp_path, server, sample, env, mounted, case):
    folder = Path(env["HOME"]) / ".cache" / "desfs"
    if case != "fresh home":
        folder.mkdir(parents=True, mode=0o755)
        folder.chmod(0o755)
        (folder / "mount.log").write_text("an old line\n")
        (folder / "mount.log").chmod(0o644)
    mnt = tmp_path / "m"
    mnt.mkdir()
    mounted(mnt)
    r = run_desfs("mount", sample.url(server.base_url), str(mnt), env=env)
    assert r.returncode == 0, r.stderr
    assert mode_of(folder) == 0o700 and mode_of(folder / "mount.log") == 0o600
    assert "mounting " in (folder / "mount.log").read_text()


def test_log_file_option_is_private(tmp_path, server, sample, mounted):
    log = tmp_path / "new folder" / "deeper" / "m.log"
    mnt = tmp_path / "m"
    mnt.mkdir()
    mounted(mnt)
    r = run_desfs("mount", sample.url(server.base_url), str(mnt), "--log-file", str(log))
    assert r.returncode == 0, r.stderr
    assert mode_of(log) == 0o600 and mode_of(log.parent) == 0o700 and mode_of(log.parent.parent) == 0o700


@pytest.mark.parametrize("foreground", [False, True])
def test_symlinked_log_file_is_refused(tmp_path, server, sample, mounted, foreground):
    victim = tmp_path / "victim"
    link = tmp_path / "m.log"
    link.symlink_to(victim)
    mnt = tmp_path / "m"
    mnt.mkdir()
    mounted(mnt)
    r = run_desfs("mount", *(["-f"] if foreground else []), sample.url(server.base_url), str(mnt),
                  "--log-file", str(link), timeout=60)
    assert "symbolic link" in one_line(r)
    assert not victim.exists() and not find_mount(str(mnt))


def test_password_in_a_url_is_never_shown(tmp_path, mounted):
    url = with_userinfo(f"http://127.0.0.1:{free_port()}/files-desaccess/a/b/c/")
    (tmp_path / "m").mkdir()
    mounted(tmp_path / "m")
    runs = [run_desfs("ls", url, "--retries", "0"),
            run_desfs("get", url, str(tmp_path / "got"), "--retries", "0"),
            run_desfs("mount", url, str(tmp_path / "m"), "--retries", "0", "--log-file", str(tmp_path / "m.log")),
            run_desfs("mount", "-f", url, str(tmp_path / "m"), "--retries", "0"),
            run_desfs("ls", "ftp" + url[4:])]  # a usage error quotes the URL
    for r in runs:
        assert r.returncode in (1, 2) and "***@127.0.0.1" in r.stderr, r.stderr
        assert URL_PASSWORD not in r.stderr and "someone" not in r.stderr, r.stderr
    debug = run_desfs("--debug", "ls", url, "--retries", "1")  # every request logged, and the traceback
    assert debug.returncode == 1 and "Traceback" in debug.stderr and URL_PASSWORD not in debug.stderr
    assert URL_PASSWORD not in (tmp_path / "m.log").read_text()
