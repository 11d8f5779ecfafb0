"""Nothing leaks to other local users or to the terminal: a job's URL (the only key to its files)
stays out of process titles, the mount table and error messages; logs are private; hostile names
from the server reach the terminal escaped; allow_other is warned about. Real CLI, real mounts."""

import json
import os
import pty
import select
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from desfs.mounting import find_mount, lazy_unmount

from conftest import DESFS, free_port, run_desfs
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


# -- 6: hostile names on the terminal -----------------------------------------------------


def on_terminal(argv: list[str], env: dict | None = None, timeout: float = 60) -> tuple[int, list[str]]:
    """Run `argv` with a pseudo-terminal as its stdout; its exit code and output lines (as the
    terminal received them)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(argv[0], argv, env if env is not None else os.environ)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the program has exited and its terminal is closed
                    break
                if not chunk:
                    break
                out += chunk
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    text = out.decode("utf-8", "surrogateescape")
    for raw in RAW:
        assert raw not in text, (raw, text)
    return os.waitstatus_to_exitcode(status), text.split("\r\n")[:-1]  # the terminal turns \n into \r\n


def hostile_listing(names: list[str]) -> bytes:
    return json.dumps([{"name": n, "type": "file", "mtime": "Mon, 06 Jul 2020 15:21:35 GMT", "size": 3}
                       for n in names]).encode()


def test_ls_shows_hostile_names_escaped(server, sample):
    names = [*HOSTILE_NAMES, "plain.fits", "with space.txt"]
    server.faults.listing_body[f"/files-desaccess/{sample.user}/cutout/{sample.cutout_job}/json"] = \
        hostile_listing(names)
    url = sample.url(server.base_url)
    code, lines = on_terminal([*DESFS, "ls", url])
    assert code == 0 and lines == [*HOSTILE_SHOWN, "plain.fits", "'with space.txt'"], lines  # quoted as ls does
    code, lines = on_terminal([*DESFS, "ls", "-l", url])
    assert code == 0 and [line.split(maxsplit=5)[5] for line in lines] == [*HOSTILE_SHOWN, "plain.fits",
                                                                            "'with space.txt'"], lines
    piped = run_desfs("ls", url)  # not a terminal: ordinary names as they are, hostile ones still escaped
    assert piped.returncode == 0 and piped.stdout.splitlines() == [*HOSTILE_SHOWN, "plain.fits", "with space.txt"]


def hostile_jobs(sample) -> list[dict]:
    done = {"job_status": "success", "job_time_complete": "2026-11-24 23:59:00", "expiration_date": "2026-12-08"}
    names = {sample.cutout_job: HOSTILE_NAMES[0] + HOSTILE_NAMES[3], "1" * 32: HOSTILE_NAMES[4],
             "2" * 32: HOSTILE_NAMES[5], "3" * 32: HOSTILE_NAMES[6] + "\x1b[2J"}
    return [{"job_id": i, "job_type": "cutout", "job_name": n, **done} for i, n in names.items()]


def test_jobs_shows_hostile_names_escaped(sample, env):
    api = FakeApi({USER: PASSWORD}, {USER: hostile_jobs(sample)}).start()
    try:
        env.update(DESACCESS_USER=USER, DESACCESS_PASSWORD=PASSWORD)
        code, lines = on_terminal([*DESFS, "jobs", "--api-url", api.url, "--retries", "0"], env)
        assert code == 0 and len(lines) == 5, lines
        row = next(line for line in lines if sample.cutout_job in line)
        assert "''$'\\033'']0;pwned'$'\\a''titletwo'$'\\n''lines'" in row, row  # title, BEL and newline escaped
        assert HOSTILE_SHOWN[5] in "".join(lines) and HOSTILE_SHOWN[4] in "".join(lines)
    finally:
        api.stop()


def test_by_name_links_of_hostile_job_names_are_clean(mount, server, sample, env):
    api = FakeApi({USER: PASSWORD}, {USER: hostile_jobs(sample)}).start()
    try:
        env.update(DESACCESS_USER=USER, DESACCESS_PASSWORD=PASSWORD)
        m = mount(None, "--api-url", api.url, "--files-url", server.base_url, "--retries", "1", env=env)
        links = os.listdir(m.path / "by-name")
        assert len(links) == 4 and all(name.isprintable() for name in links), links
        assert not any(raw in name for raw in RAW for name in links)
        assert "evil_txt.exe" in links and "csi_31m" in links
        link = next(name for name in links if "pwned" in name)
        assert os.readlink(m.path / "by-name" / link) == f"../cutout/{sample.cutout_job}"
        assert "summary.json" in os.listdir(m.path / "by-name" / link)
    finally:
        api.stop()


class HostileMessages(FakeApi):
    """The emulated API, answering its errors with a message that holds terminal controls."""

    message = "no\x1b]0;pwned\x07 way\n2026-11-26 WARNING forged line \u202eevil\x9b2J"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        handler = self.RequestHandlerClass

        self.fail_job_list = False

        class Handler(handler):
            def reply(self, status, body, **_headers):
                if body.get("status") == "error" or (self.server.fail_job_list and self.path.endswith("/job/list")):
                    body = {"status": "error", "message": HostileMessages.message}
                super().reply(status, body)

        self.RequestHandlerClass = Handler


def test_server_messages_are_escaped_in_errors_and_logs(tmp_path, server, sample, env, mount):
    api = HostileMessages({USER: PASSWORD}, {USER: hostile_jobs(sample)[:1]}).start()
    try:
        env.update(DESACCESS_USER=USER, DESACCESS_PASSWORD="wrong")
        code, lines = on_terminal([*DESFS, "jobs", "--api-url", api.url, "--retries", "0"], env)
        assert code == 1 and len(lines) == 1 and "refused" in lines[0] and "\\x1b]0;pwned" in lines[0], lines
        env["DESACCESS_PASSWORD"] = PASSWORD
        m = mount(None, "--api-url", api.url, "--files-url", server.base_url, "--jobs-ttl", "0.5", env=env)
        api.fail_job_list = True  # from now on, with the hostile message
        deadline = time.monotonic() + 20
        while "keeping the last one" not in m.log_text() and time.monotonic() < deadline:
            os.listdir(m.path / "cutout")
            time.sleep(0.2)
        log = m.log_text()
        assert "forged line" in log and not any(raw in log for raw in RAW), log
        assert not any(line.startswith("2026-11-26 WARNING forged") for line in log.splitlines())
    finally:
        api.stop()


def test_quoting_matches_gnu_ls(tmp_path):
    """Names a terminal can show are quoted exactly as GNU ls's shell-escape style quotes them."""
    from desfs.cli.common import shown

    names = ["plain.txt", "with space.txt", "a\nb", "\x1b[31mred", "end\x1b", "don't", 'dq"x', "both'\"", "#hash",
             "a#b", "~t", "a~", "{", "a{b}", "$x", "a=b", "a\\b", "ünïcødé ✓", "a,b", "\x7f", "\x01\x02", "tab\there",
             "c1\x9bz", "line\u2028sep", "'", "[", "]", "-", "back`tick"]
    folder = tmp_path / "names"
    folder.mkdir()
    for n in names:
        (folder / n).write_bytes(b"")
    out = subprocess.run(["ls", "-1", "--quoting-style=shell-escape", str(folder)], capture_output=True,
                         env={**os.environ, "LC_ALL": "C.UTF-8"}, check=True).stdout.decode()
    assert sorted(out.splitlines()) == sorted(shown(n, terminal=True) for n in names)


# -- 12: allow_other ------------------------------------------------------------------------


def test_allow_other_on_an_account_mount_is_warned_about(tmp_path, server, sample, env, mounted, kill_after):
    api = FakeApi({USER: PASSWORD}, {USER: hostile_jobs(sample)[:1]}).start()
    options = ["--api-url", api.url, "--files-url", server.base_url, "--retries", "1", "-o", "allow_other"]
    env.update(DESACCESS_USER=USER, DESACCESS_PASSWORD=PASSWORD)
    try:
        mnt, log = tmp_path / "m", tmp_path / "m.log"
        mnt.mkdir()
        mounted(mnt)
        r = run_desfs("mount", str(mnt), *options, "--log-file", str(log), env=env)
        assert r.returncode == 0, r.stderr
        warning = "allow_other: every local user can read every file of every job"
        assert warning in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert warning in log.read_text() and "WARNING" in log.read_text()
        assert "allow_other" in mountinfo_line(mnt)[-1]
        assert run_desfs("umount", str(mnt)).returncode == 0

        proc = subprocess.Popen([*DESFS, "mount", "-f", str(mnt), *options], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env)
        kill_after(proc)
        said = b""
        deadline = time.monotonic() + 30
        while not (os.path.ismount(mnt) and b"\n" in said) and time.monotonic() < deadline:
            if select.select([proc.stderr], [], [], 0.1)[0]:
                said += os.read(proc.stderr.fileno(), 4096)
        assert warning in said.decode().split("\n")[0], said
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        api.stop()
