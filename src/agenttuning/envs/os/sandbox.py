"""A persistent bash shell inside a bubblewrap sandbox: the ``os`` environment's terminal.

What the sandbox is (the measured facts behind each choice are in ``docs/envs/os.md``, section *Sandbox*):

- **Ids.** A launcher (:mod:`._launch`, started as host root) unshares a user namespace whose ids ``0..65535`` are
  host ids ``ID_BASE..ID_BASE+65535`` (no host user), then becomes its uid 0 and runs bubblewrap. The agent is root
  inside (``chown``, ``useradd``, ``su`` work across the 65,536 ids) and an unprivileged stranger on the host.
  Bubblewrap started by host root would map the sandbox's root to host root; ``--unshare-user --uid 0`` would map a
  single id, so ``chown``/``useradd -m``/``su`` fail inside; hence our own map, and no ``--unshare-user``.
- **Capabilities.** Docker's default set (no ``CAP_SYS_ADMIN``, ``CAP_SYS_RESOURCE``, ``CAP_SYS_PTRACE``, ...),
  bounding set included, all scoped to the sandbox's user namespace. No further user namespaces can be created
  (``user.max_user_namespaces`` 0 in ours: the mechanism of bubblewrap's ``--disable-userns``).
- **Files.** ``/`` is a private tmpfs of ``work_mb`` (mounted in the launcher's own mount namespace, gone with it)
  holding ``/root`` (the work dir and cwd), ``/home``, ``/tmp``, ``/var``, ``/run`` and a curated ``/etc``:
  generated ``passwd``/``group``/``shadow``/``gshadow`` (Debian's base users and groups), ``hosts``, ``hostname``,
  plus copies of non-secret host files (alternatives, PAM, ``login.defs``, ``skel``, ...); never the host's shadow.
  ``/usr`` is bound read-only and ``/bin``, ``/lib*``, ``/sbin`` follow the host (symlinks into ``/usr`` or
  read-only binds). ``/dev`` is bubblewrap's minimal one (read-only, with ``/dev/shm`` on the work tmpfs), ``/proc``
  the sandbox's own. Nothing else of the host is there: not ``/work``, not the host's ``/root``.
- **Namespaces.** pid, network (loopback only: the host's loopback services are not reachable), ipc, uts
  (hostname ``sandbox``), cgroup, mount; ``--new-session``, ``--die-with-parent`` (from a long-lived spawner
  thread, so the death signal follows this process, not a worker thread that happened to start the sandbox).
- **Limits.** Its own cgroups (:mod:`.cgroups`): ``memory_mb`` for everything inside (tmpfs pages included),
  ``pids`` processes; ``RLIMIT_CPU`` and ``RLIMIT_FSIZE`` per process; ``wall_s`` per command; output cut at
  ``output_chars`` (as AgentBench does), and reading stops, and the command is stopped, past
  :data:`OUTPUT_READ_CAP` bytes.
- **Processes.** Pid 1 is a small bash supervisor (``--as-pid-1``) that reaps orphans, starts the persistent shell
  (an interactive ``bash`` in its own session, so an interrupt acts as Ctrl-C does in a terminal) and the one-off
  scripts (each in its own session), and cannot be signalled from inside. ``close()`` kills the pid namespace's
  init, so nothing survives it (``setsid``/``nohup`` included), then removes the cgroups.

Commands go to the persistent shell as one line, ``\\eval $'...'`` with stdin from ``/dev/null``; the end of a
command is reported by the shell's ``PROMPT_COMMAND`` on a separate status pipe (a sequence number and ``$?``), so a
command printing anything, or nothing, or no final newline, cannot fake or hide its end. A command that runs past
its time (or is interrupted) gets SIGINT on the shell's process group (bash returns to its prompt, state kept); then
SIGKILL for its foreground processes; then, if the shell itself does not come back (a builtin loop with SIGINT
trapped), the shell is restarted and the observation says so.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue

from agenttuning.envs.os import cgroups
from agenttuning.envs.os.cgroups import SandboxCgroups

BWRAP = "bwrap"
ID_BASE = 2_000_000_000  # host ids of the sandbox's ids 0..ID_COUNT-1: far above any host user
ID_COUNT = 65_536
STAGE = "/mnt"  # where the launcher mounts the work tmpfs, in its private mount namespace (the host sees nothing)
OUTPUT_READ_CAP = 16 << 20  # bytes read from one command before it is stopped
STALE_READ_CAP = 1 << 20  # bytes of background output read between commands
MAX_COMMAND_BYTES = 64 << 10
MAX_SCRIPT_BYTES = 120 << 10  # a script and each argument are one argv string each (the kernel's cap: 128 KiB)
GRACE_S = 0.5  # SIGINT -> SIGKILL of the foreground -> restart of the shell, each this far apart
START_TIMEOUT_S = 15.0
INIT_PATH = "/run/sandbox-init"  # the supervisor's script inside (read-only); what `ps` shows as pid 1

TRUNCATED = "\n[truncated because the output is too long]"  # AgentBench's words

# Docker's default capabilities: what AgentBench's containers ran with.
CAPABILITIES = (
    "chown", "dac_override", "fsetid", "fowner", "mknod", "net_raw", "setgid", "setuid", "setfcap", "setpcap",
    "net_bind_service", "sys_chroot", "kill", "audit_write",
)  # fmt: skip

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ENV = {
    "PATH": _PATH, "HOME": "/root", "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash", "TERM": "dumb",
    "LANG": "C.UTF-8",
}  # fmt: skip

# Debian's base users and groups (base-passwd), the sandbox's /etc/passwd and /etc/group.
_USERS = """\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
bin:x:2:2:bin:/bin:/usr/sbin/nologin
sys:x:3:3:sys:/dev:/usr/sbin/nologin
sync:x:4:65534:sync:/bin:/bin/sync
games:x:5:60:games:/usr/games:/usr/sbin/nologin
man:x:6:12:man:/var/cache/man:/usr/sbin/nologin
lp:x:7:7:lp:/var/spool/lpd:/usr/sbin/nologin
mail:x:8:8:mail:/var/mail:/usr/sbin/nologin
news:x:9:9:news:/var/spool/news:/usr/sbin/nologin
uucp:x:10:10:uucp:/var/spool/uucp:/usr/sbin/nologin
proxy:x:13:13:proxy:/bin:/usr/sbin/nologin
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
backup:x:34:34:backup:/var/backups:/usr/sbin/nologin
list:x:38:38:Mailing List Manager:/var/list:/usr/sbin/nologin
irc:x:39:39:ircd:/run/ircd:/usr/sbin/nologin
_apt:x:42:65534::/nonexistent:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""
_GROUPS = [
    ("root", 0), ("daemon", 1), ("bin", 2), ("sys", 3), ("adm", 4), ("tty", 5), ("disk", 6), ("lp", 7),
    ("mail", 8), ("news", 9), ("uucp", 10), ("man", 12), ("proxy", 13), ("kmem", 15), ("dialout", 20),
    ("fax", 21), ("voice", 22), ("cdrom", 24), ("floppy", 25), ("tape", 26), ("sudo", 27), ("audio", 29),
    ("dip", 30), ("www-data", 33), ("backup", 34), ("operator", 37), ("list", 38), ("irc", 39), ("src", 40),
    ("shadow", 42), ("utmp", 43), ("video", 44), ("sasl", 45), ("plugdev", 46), ("staff", 50), ("games", 60),
    ("users", 100), ("nogroup", 65534),
]  # fmt: skip
# Host /etc entries copied in when present and readable by the sandbox's unprivileged uid (nothing secret: no
# shadow, ssh, ssl keys, machine-id, resolv.conf, gitconfig, package-manager credentials).
_ETC_COPY = (
    "adduser.conf", "alternatives", "bash.bashrc", "bindresvport.blacklist", "debian_version", "default",
    "deluser.conf", "environment", "ethertypes", "gai.conf", "host.conf", "inputrc", "issue", "issue.net",
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "locale.alias", "localtime", "login.defs", "lsb-release", "magic",
    "magic.mime", "mime.types", "mke2fs.conf", "networks", "nsswitch.conf", "os-release", "pam.conf", "pam.d",
    "perl", "profile", "profile.d", "protocols", "python3", "python3.11", "python3.12", "rpc", "security",
    "services", "shells", "skel", "terminfo", "timezone", "vim", "xattr.conf",
)  # fmt: skip
_DIRS = [
    ("etc", 0o755), ("root", 0o700), ("home", 0o755), ("tmp", 0o1777), ("var", 0o755), ("var/tmp", 0o1777),
    ("var/log", 0o755), ("var/lib", 0o755), ("var/cache", 0o755), ("var/spool", 0o755), ("var/mail", 0o755),
    ("var/backups", 0o755), ("var/local", 0o755), ("var/opt", 0o755), ("opt", 0o755), ("srv", 0o755),
    ("mnt", 0o755), ("media", 0o755), ("run", 0o755), ("run/lock", 0o1777), ("run/shm", 0o1777),
]  # fmt: skip


def _etc_files() -> dict[str, tuple[str, int]]:
    names = [line.split(":", 1)[0] for line in _USERS.splitlines()]
    return {
        "passwd": (_USERS, 0o644),
        "group": ("".join(f"{name}:x:{gid}:\n" for name, gid in _GROUPS), 0o644),
        "shadow": ("".join(f"{n}:*:19700:0:99999:7:::\n" for n in names), 0o640),
        "gshadow": ("".join(f"{name}:*::\n" for name, _ in _GROUPS), 0o640),
        "hostname": ("sandbox\n", 0o644),
        "hosts": ("127.0.0.1\tlocalhost\n127.0.1.1\tsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n", 0o644),
        "fstab": ("# <file system> <mount point> <type> <options> <dump> <pass>\n", 0o644),
    }


# Pid 1 inside: reads requests on fd 0 and starts the shell and the scripts; fds 3 (shell stdin), 4 (shell output),
# 5 (script output), 6 (status lines to the host). Words are %b-escaped by the host (no spaces, no globs), each
# prefixed with "x" so that an empty argument survives word splitting.
_SUPERVISOR = r"""
set -f +m
exec 1>/dev/null 2>&1 7<&-
printf 'ready %s\n' "$$" >&6
while IFS=' ' read -r -a w; do
  case ${w[0]} in
  shell)
    while read -r -t 0.01 _ <&3; do :; done  # what a dead shell left unread is not for the new one
    ( echo 500 >/proc/self/oom_score_adj; cd /root || cd /
      exec env --default-signal=INT,QUIT setsid bash --noprofile --norc --noediting -i
    ) 0<&3 1>&4 2>&4 63>&6 3>&- 4>&- 5>&- 6>&- &
    printf 'shell %s %s\n' "${w[1]}" "$!" >&6 ;;
  script)
    printf -v s %b "${w[2]:1}"; a=()
    for x in "${w[@]:3}"; do printf -v y %b "${x:1}"; a+=("$y"); done
    ( ( echo 500 >/proc/self/oom_score_adj; cd /root || cd /
        exec env --default-signal=INT,QUIT setsid bash --noprofile --norc -c "$s" sandbox-script "${a[@]}"
      ) 0</dev/null 1>&5 2>&5 3>&- 4>&- 5>&- 6>&- &
      p=$!; printf 'run %s %s\n' "${w[1]}" "$p" >&6; wait "$p"; printf 'done %s %s\n' "${w[1]}" "$?" >&6
    ) 0</dev/null 3>&- 4>&- &
    ;;
  esac
done
"""

# The persistent shell's first line: no prompts, no history, and the end-of-command report on fd 63.
_SHELL_INIT = (
    "set +H +o history; unset HISTFILE MAIL MAILPATH; PS1=; PS2=; PS0=; PS4='+ '; __at_seq=0; "
    "PROMPT_COMMAND='builtin printf \"p %s %s\\n\" \"${__at_seq-}\" \"$?\" >&63'; readonly PROMPT_COMMAND\n"
)

_SAFE_ANSI = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _-+=.,:/@%^~()[]{}<>;|&*?#\"`$")
_ANSI = [chr(b) if b in _SAFE_ANSI else f"\\x{b:02x}" for b in range(256)]
_SAFE_WORD = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.,:/@=+")
_WORD = [chr(b) if b in _SAFE_WORD else f"\\x{b:02x}" for b in range(256)]


def _ansi_c(data: bytes) -> str:
    """``data`` as one bash ``$'...'`` word (NUL bytes dropped: bash strings cannot hold them)."""
    return "$'" + "".join(_ANSI[b] for b in data if b) + "'"


def _word(text: str) -> str:
    """``text`` as one space-free word for the supervisor's ``printf %b``, prefixed with ``x``."""
    return "x" + "".join(_WORD[b] for b in text.encode("utf-8", "replace") if b)


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 10.0  # per command
    cpu_s: int = 30  # RLIMIT_CPU per process
    memory_mb: int = 512  # cgroup v1 memory limit for the whole sandbox
    pids: int = 128  # cgroup v1 pids limit for the whole sandbox
    work_mb: int = 64  # size cap of the private writable work dir / tmpfs
    output_chars: int = 800  # AgentBench cuts output at 800 characters
    file_size_mb: int = 32  # RLIMIT_FSIZE


@dataclass(frozen=True)
class CommandResult:
    output: str  # stdout+stderr interleaved, cut to output_chars (say so when cut), valid UTF-8 (replace)
    exit_code: int | None
    timed_out: bool
    truncated: bool


class SandboxError(RuntimeError):
    """The sandbox cannot be started here (the message says why)."""


def unavailable_reason() -> str | None:
    """Why sandboxes cannot run on this machine, or None when they can."""
    if shutil.which(BWRAP) is None:
        return "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    for tool in ("setpriv", "setsid", "env", "bash"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.path.isdir(STAGE):
        return f"{STAGE} does not exist (the launcher mounts the sandbox's tmpfs there, privately)"
    return cgroups.cgroups_unavailable_reason()


class _Spawner:
    """Starts processes from one thread that lives as long as this process: ``--die-with-parent`` (a parent-death
    signal) fires when the *thread* that forked bubblewrap exits, and worker threads come and go."""

    def __init__(self) -> None:
        self._queue: SimpleQueue = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _loop(self) -> None:
        while True:
            future, args, kwargs = self._queue.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(subprocess.Popen(*args, **kwargs))
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    future.set_exception(e)

    def popen(self, *args, **kwargs) -> subprocess.Popen:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="sandbox-spawner", daemon=True)
                self._thread.start()
        future: Future = Future()
        self._queue.put((future, args, kwargs))
        return future.result()


_SPAWNER = _Spawner()
_LIVE: weakref.WeakSet[Sandbox] = weakref.WeakSet()
_SWEPT = False


@atexit.register
def _close_all() -> None:
    for box in list(_LIVE):
        with contextlib.suppress(Exception):
            box.close()


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, pgid, sid) of a host pid, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[2]), int(fields[3])


def _status_field(pid: int, name: str) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _ignores_sigint(pid: int) -> bool:
    mask = _status_field(pid, "SigIgn")
    return mask is not None and bool(int(mask, 16) & (1 << (signal.SIGINT - 1)))


def _alive_fd(pidfd: int) -> bool:
    """Whether the process behind a pidfd still runs (a pidfd polls readable once it has exited)."""
    if pidfd < 0:
        return False
    return not select.select([pidfd], [], [], 0)[0]


def _set_nonblocking(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


# What interactive bash prints (on its stderr, a pipe here) after a foreground job dies of a signal: the shell's
# noise, not the command's output.
_NOISE = re.compile(rb"bash: \[\d+: \d+ \(\d+\)\] tcsetattr: Inappropriate ioctl for device\n")


class _Capture:
    """The first bytes of a stream (enough for ``chars`` characters) and the count of all of them."""

    def __init__(self, chars: int) -> None:
        self.chars = chars
        self.keep = chars * 4 + 4
        self.buf = bytearray()
        self.total = 0

    def feed(self, data: memoryview | bytes) -> None:
        self.total += len(data)
        room = self.keep - len(self.buf)
        if room > 0:
            self.buf += data[:room]

    def text(self) -> tuple[str, bool]:
        text = _NOISE.sub(b"", self.buf).decode("utf-8", "replace")
        if len(text) <= self.chars and self.total <= len(self.buf):
            return text, False
        keep = max(0, self.chars - len(TRUNCATED))
        return text[:keep] + TRUNCATED, True


class _Live:
    """One running sandbox: its processes, pipes and cgroups."""

    def __init__(self, limits: SandboxLimits, name: str) -> None:
        self.limits = limits
        self.cg = SandboxCgroups(name, memory_bytes=limits.memory_mb << 20, pids_max=limits.pids)
        self.proc: subprocess.Popen | None = None
        self.proc_fd = -1
        self.host_init = 0  # host pid of the sandbox's pid 1
        self.shell = 0  # host pid of the persistent shell
        self.shell_fd = -1  # its pidfd
        self.seq = 0
        self.status = bytearray()
        self.lines: list[list[str]] = []
        self.status_eof = False
        self.oom_kills = 0
        self.pid_hits = 0
        self.contained = False  # the last check killed a fork bomb
        self.fds: dict[str, int] = {}
        self.log = bytearray()

    # -- pipes ---------------------------------------------------------------------------------------------
    def read_status(self) -> None:
        while True:
            try:
                data = os.read(self.fds["status"], 65536)
            except BlockingIOError:
                return
            if not data:
                self.status_eof = True
                return
            self.status += data
            while (i := self.status.find(b"\n")) >= 0:
                self.lines.append(self.status[:i].decode("ascii", "replace").split())
                del self.status[: i + 1]

    def take(self, kind: str, seq: int) -> list[str] | None:
        """The first status line ``kind seq ...`` (stale lines of earlier requests are dropped)."""
        for i, words in enumerate(self.lines):
            if len(words) >= 2 and words[0] == kind and words[1] == str(seq):
                del self.lines[: i + 1]
                return words
        return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def host_pid(self, ns_pid: int, tries: int = 50) -> int:
        """The host pid of the sandbox's pid ``ns_pid``."""
        for _ in range(tries):
            for pid in self.cg.procs():
                ids = (_status_field(pid, "NSpid") or "").split()
                if len(ids) >= 2 and ids[-1] == str(ns_pid):
                    return int(ids[0])
            time.sleep(0.002)
        return 0

    def descendants(self, root: int) -> list[int]:
        children: dict[int, list[int]] = {}
        for pid in self.cg.procs():
            st = _stat(pid)
            if st:
                children.setdefault(st[0], []).append(pid)
        out, todo = [], [root]
        while todo:
            for child in children.get(todo.pop(), []):
                out.append(child)
                todo.append(child)
        return out

    def send(self, key: str, data: bytes) -> bool:
        """Write a whole request; False when the reader is gone or not reading."""
        view, deadline = memoryview(data), time.monotonic() + 2.0
        while view:
            try:
                n = os.write(self.fds[key], view)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.001)
                continue
            except (BrokenPipeError, OSError):
                return False
            view = view[n:]
        return True


class Sandbox:
    """A bubblewrap sandbox with a persistent bash shell (see the module's docstring).

    ``start()`` builds a fresh sandbox (a no-op while one runs; after ``close()``, a new one). ``run()`` runs a
    command in the persistent shell, ``run_script()`` a one-off script in the same sandbox (same files), leaving the
    shell's state alone. ``interrupt()`` (any thread) stops the running command; ``close()`` kills everything and
    removes the cgroups (safe twice). Calls other than ``interrupt()`` and ``close()`` are serialized.
    """

    def __init__(self, limits: SandboxLimits = SandboxLimits()) -> None:
        self.limits = limits
        self._lock = threading.RLock()
        self._live: _Live | None = None
        self._busy = False
        self._interrupted = False
        self._wake_r, self._wake_w = os.pipe()
        _set_nonblocking(self._wake_r)
        _set_nonblocking(self._wake_w)
        self.restarts = 0  # fresh sandboxes started because the previous one had died

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._live is not None and self._live.alive():
                return
            if self._live is not None:
                self._teardown(self._live)
            self._live = self._launch()
            _LIVE.add(self)

    def close(self) -> None:
        live = self._live
        if live is None:
            return
        if live.host_init:  # kill the pid namespace first, so that a running call returns at once
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(live.host_init, signal.SIGKILL)
        self.interrupt()
        with self._lock:
            if self._live is live:
                self._teardown(live)
                self._live = None

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
        for fd in (getattr(self, "_wake_r", -1), getattr(self, "_wake_w", -1)):
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def host_pids(self) -> list[int]:
        """Host pids of every process of the running sandbox (for tests and diagnostics)."""
        return self._live.cg.procs() if self._live else []

    @property
    def cgroup_name(self) -> str | None:
        return self._live.cg.name if self._live else None

    def interrupt(self) -> None:
        """Stop the running command (from any thread); nothing happens when none runs."""
        if self._busy:
            self._interrupted = True
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"!")

    # -- commands -----------------------------------------------------------------------------------------
    def run(self, command: str, *, timeout_s: float | None = None) -> CommandResult:
        """Run ``command`` in the persistent shell (its cwd, variables and jobs carry over between calls)."""
        with self._lock:
            live, notes = self._ready()
            data = command.encode("utf-8", "replace")
            if len(data) > MAX_COMMAND_BYTES:
                return CommandResult(
                    f"[the command is too long: {len(data)} bytes; at most {MAX_COMMAND_BYTES}]", None, False, False
                )
            capture = _Capture(self.limits.output_chars)
            # what background jobs printed meanwhile, as a terminal shows it; not when they were just killed
            self._drain(live, "shell_out", None if live.contained else capture, STALE_READ_CAP)
            live.seq += 1
            seq = live.seq
            line = f"__at_seq={seq}; \\eval {_ansi_c(data)} </dev/null 63>&-\n".encode()
            return self._wait(live, seq, capture, notes, timeout_s, shell_line=line)

    def run_script(
        self, script: str, *args: str, timeout_s: float | None = None, output_chars: int | None = None
    ) -> CommandResult:
        """Run a one-off bash script (``bash -c script sandbox-script args...``) in the same sandbox, in a fresh
        session with a clean environment, cwd ``/root`` and stdin from ``/dev/null``; the persistent shell is not
        touched. Background processes it starts keep running (their output goes to the scripts' pipe, so what they
        print while a later script runs is mixed into that script's output). ``output_chars`` overrides the
        limit's cut (a grader may need more of a reference solution's output than an observation shows)."""
        with self._lock:
            live, notes = self._ready()
            capture = _Capture(self.limits.output_chars if output_chars is None else output_chars)
            self._drain(live, "script_out", None, STALE_READ_CAP)
            live.seq += 1
            seq = live.seq
            sizes = [len(x.encode("utf-8", "replace")) for x in (script, *args)]
            if max(sizes) > MAX_SCRIPT_BYTES:
                return CommandResult(
                    f"[the script or an argument is too long: {max(sizes)} bytes; at most {MAX_SCRIPT_BYTES}]",
                    None, False, False,
                )  # fmt: skip
            words = " ".join(["script", str(seq), _word(script), *(_word(a) for a in args)])
            if not live.send("control", words.encode() + b"\n"):
                return self._dead(live, notes, capture)
            return self._wait(live, seq, capture, notes, timeout_s, shell_line=None)

    # -- internals ----------------------------------------------------------------------------------------
    def _ready(self) -> tuple[_Live, list[str]]:
        notes: list[str] = []
        live = self._live
        if live is None:
            raise RuntimeError("the sandbox is not started: call start() first")
        if not live.alive():
            self._teardown(live)
            self._live = live = self._launch()
            self.restarts += 1
            notes.append(
                "[the sandbox had stopped; a fresh one was started: files, processes and shell state are lost]"
            )
        self._contain(live, notes)
        return live, notes

    def _launch(self) -> _Live:
        global _SWEPT
        reason = unavailable_reason()
        if reason:
            raise SandboxError(reason)
        if not _SWEPT:
            _SWEPT = True
            cgroups.sweep_stale()
        name = f"{cgroups.PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        live = _Live(self.limits, name)
        try:
            self._spawn(live)
            self._start_shell(live)
        except BaseException:
            self._teardown(live)
            raise
        return live

    def _bwrap_argv(self) -> list[str]:
        argv = [shutil.which(BWRAP) or BWRAP]
        argv += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup"]
        argv += ["--die-with-parent", "--new-session", "--as-pid-1", "--hostname", "sandbox"]
        argv += ["--bind", STAGE, "/", "--ro-bind", "/usr", "/usr"]
        for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            host = f"/{top}"
            if os.path.islink(host):
                argv += ["--symlink", os.readlink(host), host]
            elif os.path.isdir(host):
                argv += ["--ro-bind", host, host]
        argv += ["--proc", "/proc", "--dev", "/dev", "--bind", f"{STAGE}/run/shm", "/dev/shm", "--remount-ro", "/dev"]
        argv += ["--clearenv"]
        for key, value in _ENV.items():
            argv += ["--setenv", key, value]
        argv += ["--chdir", "/root", "--cap-drop", "ALL"]
        for cap in CAPABILITIES:
            argv += ["--cap-add", f"CAP_{cap.upper()}"]
        bounding = ",".join(["-all", *(f"+{c}" for c in CAPABILITIES)])
        argv += ["--ro-bind-data", "7", INIT_PATH]  # the launcher writes _SUPERVISOR into a pipe at fd 7
        argv += ["--", shutil.which("setpriv") or "setpriv", f"--bounding-set={bounding}", "--"]
        argv += [shutil.which("bash") or "bash", "--noprofile", "--norc", INIT_PATH]
        return argv

    def _spawn(self, live: _Live) -> None:
        lim = self.limits
        ctl_r, ctl_w = os.pipe()
        sin_r, sin_w = os.pipe()
        sout_r, sout_w = os.pipe()
        cout_r, cout_w = os.pipe()
        st_r, st_w = os.pipe()
        log_r, log_w = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(sin_w, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)  # a whole command line fits
        live.fds = {"control": ctl_w, "shell_in": sin_w, "shell_out": sout_r, "script_out": cout_r,
                    "status": st_r, "log": log_r}  # fmt: skip
        for fd in live.fds.values():
            _set_nonblocking(fd)
        cpu = max(1, int(lim.cpu_s))
        fsize = max(1, int(lim.file_size_mb)) << 20
        config = {
            "cgroup_procs": live.cg.join_files,
            "id_base": ID_BASE,
            "id_count": ID_COUNT,
            "stage": STAGE,
            "work_bytes": max(1, int(lim.work_mb)) << 20,
            "work_inodes": max(4096, int(lim.work_mb) * 1024),
            "dirs": _DIRS,
            "etc_copy": list(_ETC_COPY),
            "etc_files": _etc_files(),
            "etc_symlinks": {"mtab": "../proc/self/mounts"},
            "rlimits": {"RLIMIT_CPU": [cpu, cpu + 1], "RLIMIT_FSIZE": [fsize, fsize], "RLIMIT_CORE": [0, 0]},
            "fds": {"3": sin_r, "4": sout_w, "5": cout_w, "6": st_w},
            "init_script": _SUPERVISOR,
            "bwrap": self._bwrap_argv(),
        }
        launcher = str(Path(__file__).with_name("_launch.py"))
        try:
            live.proc = _SPAWNER.popen(
                [sys.executable, "-I", "-S", launcher, json.dumps(config)],
                stdin=ctl_r, stdout=subprocess.DEVNULL, stderr=log_w,
                pass_fds=(sin_r, sout_w, cout_w, st_w), close_fds=True, cwd="/",
            )  # fmt: skip
        finally:
            for fd in (ctl_r, sin_r, sout_w, cout_w, st_w, log_w):
                os.close(fd)
        live.proc_fd = os.pidfd_open(live.proc.pid)
        deadline = time.monotonic() + START_TIMEOUT_S
        poller = select.poll()
        poller.register(live.fds["status"], select.POLLIN)
        poller.register(live.fds["log"], select.POLLIN)
        poller.register(live.proc_fd, select.POLLIN)
        while True:
            live.read_status()
            self._read_log(live)
            ready = next((w for w in live.lines if w[:1] == ["ready"]), None)
            if ready:
                live.lines.remove(ready)
                break
            if live.proc.poll() is not None or live.status_eof or time.monotonic() > deadline:
                self._read_log(live)
                why = live.log.decode("utf-8", "replace").strip() or f"exit status {live.proc.poll()}"
                raise SandboxError(f"the sandbox did not start: {why}")
            poller.poll(50)
        live.host_init = live.host_pid(int(ready[1]))
        live.oom_kills = live.cg.oom_kills()
        live.pid_hits = live.cg.pid_limit_hits()

    @staticmethod
    def _read_log(live: _Live) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while len(live.log) < 65536 and (data := os.read(live.fds["log"], 65536)):
                live.log += data

    def _start_shell(self, live: _Live) -> None:
        if live.shell_fd >= 0:
            os.close(live.shell_fd)
            live.shell_fd = -1
        live.shell = 0
        live.seq += 1
        seq = live.seq
        if not live.send("control", f"shell {seq}\n".encode()):
            raise SandboxError("the sandbox's supervisor is gone")
        words = self._await(live, "shell", seq)
        ns_pid = int(words[2]) if words and len(words) > 2 else 0
        live.shell = live.host_pid(ns_pid) if ns_pid else 0
        if not live.shell:
            raise SandboxError("the sandbox's shell did not start")
        live.shell_fd = os.pidfd_open(live.shell)
        if not live.send("shell_in", _SHELL_INIT.encode()) or not self._await(live, "p", 0):
            raise SandboxError("the sandbox's shell did not start")
        self._drain(live, "shell_out", None, STALE_READ_CAP)  # bash's "no job control" greeting

    def _await(self, live: _Live, kind: str, seq: int, timeout_s: float = START_TIMEOUT_S) -> list[str] | None:
        deadline = time.monotonic() + timeout_s
        poller = select.poll()
        poller.register(live.fds["status"], select.POLLIN)
        poller.register(live.proc_fd, select.POLLIN)
        while True:
            live.read_status()
            if (words := live.take(kind, seq)) is not None:
                return words
            if live.status_eof or not live.alive() or time.monotonic() > deadline:
                return None
            poller.poll(50)

    def _drain(self, live: _Live, key: str, capture: _Capture | None, budget: int) -> int:
        """Read what is waiting on a pipe now (at most ``budget`` bytes) without blocking."""
        scratch = bytearray(65536)
        got = 0
        while got < budget:
            try:
                n = os.readv(live.fds[key], [scratch])
            except BlockingIOError:
                break
            except OSError:
                break
            if n == 0:
                break
            got += n
            if capture is not None:
                capture.feed(memoryview(scratch)[:n])
        return got

    def _contain(self, live: _Live, notes: list[str]) -> None:
        """After a fork bomb (forks refused at the process limit): kill every process but the shell and the
        plumbing; report OOM kills."""
        hits = live.cg.pid_limit_hits()
        live.contained = hits > live.pid_hits
        if live.contained:
            keep = {live.proc.pid if live.proc else 0, live.host_init, live.shell}
            live.cg.kill_all(keep=keep, timeout_s=2.0)
            live.pid_hits = live.cg.pid_limit_hits()
            notes.append(
                f"[the sandbox reached its limit of {self.limits.pids} processes: all its processes but the shell "
                "were killed]"
            )
        oom = live.cg.oom_kills()
        if oom > live.oom_kills:
            live.oom_kills = oom
            notes.append(
                f"[out of memory: the sandbox's limit is {self.limits.memory_mb} MB and the kernel killed a process]"
            )

    def _dead(self, live: _Live, notes: list[str], capture: _Capture) -> CommandResult:
        notes.append("[the sandbox stopped; the next command starts a fresh one]")
        text, truncated = capture.text()
        return CommandResult(_join(text, notes), None, False, truncated)

    def _signal_foreground(self, live: _Live, stage: int, script_pid: int) -> None:
        """Stage 1: SIGINT to the shell's process group (Ctrl-C). Stage 2: SIGKILL to the command's processes
        (a script's whole session; the shell's descendants that are not background jobs, which ignore SIGINT).
        Stage 3: SIGKILL to the shell and everything under it."""
        if script_pid:
            sid_members = [p for p in live.cg.procs() if (st := _stat(p)) and st[2] == script_pid]
            live.cg.kill({script_pid, *sid_members, *live.descendants(script_pid)})
            return
        if not live.shell:
            return
        if stage == 1:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(live.shell, signal.SIGINT)
        elif stage == 2:
            live.cg.kill(p for p in live.descendants(live.shell) if not _ignores_sigint(p))
        else:
            live.cg.kill([live.shell, *live.descendants(live.shell)])

    def _wait(
        self,
        live: _Live,
        seq: int,
        capture: _Capture,
        notes: list[str],
        timeout_s: float | None,
        *,
        shell_line: bytes | None,
    ) -> CommandResult:
        """Wait for request ``seq`` to end, reading its output; stop it on timeout, interrupt or flood."""
        is_shell = shell_line is not None
        out_key = "shell_out" if is_shell else "script_out"
        out_fd = live.fds[out_key]
        limit = self.limits.wall_s if timeout_s is None else float(timeout_s)
        self._interrupted = False
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 4096):
                pass
        self._busy = True
        try:
            if is_shell and not _alive_fd(live.shell_fd):  # died since the last command (a background kill)
                self._restart_shell(live, notes, "[the shell had exited; a new shell was started: working directory "
                                    "and variables are reset]")  # fmt: skip
            if is_shell and not live.send("shell_in", shell_line):
                self._restart_shell(live, notes, "[the shell stopped reading commands; a new shell was started]")
                text, truncated = capture.text()
                return CommandResult(_join(text, notes), None, False, truncated)
            poller = select.poll()
            for fd in (out_fd, live.fds["status"], self._wake_r, live.proc_fd):
                poller.register(fd, select.POLLIN)
            if is_shell:
                poller.register(live.shell_fd, select.POLLIN)
                # what the background processes of earlier scripts print: never shown, but read, so that they do
                # not block on a full pipe
                poller.register(live.fds["script_out"], select.POLLIN)
            scratch = bytearray(65536)
            deadline = time.monotonic() + limit
            reason: str | None = None
            stage, stage_at = 0, 0.0
            exit_code: int | None = None
            script_ns_pid = 0
            finished = shell_gone = sandbox_gone = False
            reading = True
            while not finished:
                now = time.monotonic()
                if reason is None:
                    if self._interrupted:
                        reason = "interrupt"
                    elif now >= deadline:
                        reason = "timeout"
                if reason is not None and (stage == 0 or now - stage_at >= GRACE_S):
                    if stage >= 3 or (not is_shell and stage >= 2):
                        break
                    stage += 1
                    stage_at = now
                    script_pid = live.host_pid(script_ns_pid, tries=1) if not is_shell and script_ns_pid else 0
                    if is_shell or script_pid:
                        self._signal_foreground(live, stage, script_pid)
                wait = (stage_at + GRACE_S - now) if reason is not None else (deadline - now)
                for fd, _ev in poller.poll(max(1, min(int(wait * 1000) + 1, 1000))):
                    if fd == out_fd:
                        try:
                            n = os.readv(out_fd, [scratch])
                        except BlockingIOError:
                            continue
                        if n and reading:
                            capture.feed(memoryview(scratch)[:n])
                            if capture.total > OUTPUT_READ_CAP:
                                reading = False
                                reason = reason or "output"
                        elif not n:
                            poller.unregister(out_fd)
                    elif is_shell and fd == live.fds["script_out"]:
                        if not self._drain(live, "script_out", None, 1 << 20):
                            poller.unregister(fd)  # closed (or a spurious wake-up: it waits for the next command)
                    elif fd == self._wake_r:
                        with contextlib.suppress(OSError):
                            while os.read(self._wake_r, 4096):
                                pass
                    elif fd == live.fds["status"]:
                        live.read_status()
                        if not is_shell and script_ns_pid == 0 and (words := live.take("run", seq)):
                            script_ns_pid = int(words[2])
                        words = live.take("p" if is_shell else "done", seq)
                        if words:
                            exit_code = int(words[2]) if len(words) > 2 and words[2].lstrip("-").isdigit() else None
                            finished = True
                        elif live.status_eof:
                            poller.unregister(fd)
                    elif is_shell and fd == live.shell_fd:
                        shell_gone = finished = True
                    elif fd == live.proc_fd:
                        sandbox_gone = finished = True
            self._drain(live, out_key, capture if reading else None, OUTPUT_READ_CAP)
        finally:
            self._busy = False
            self._interrupted = False
        if sandbox_gone or not live.alive():
            return self._dead(live, notes, capture)
        self._contain(live, notes)
        if exit_code == 128 + signal.SIGXCPU:
            notes.append(f"[CPU time limit exceeded: a process may use {self.limits.cpu_s} s of CPU]")
        if reason == "timeout":
            notes.append(f"[the command timed out after {limit:g} s and was stopped]")
        elif reason == "interrupt":
            notes.append("[the command was interrupted]")
        elif reason == "output":
            notes.append(f"[the command printed more than {OUTPUT_READ_CAP >> 20} MiB and was stopped]")
        if is_shell and (shell_gone or not finished):
            if shell_gone and stage < 3:
                why = "[the shell exited; a new shell was started: working directory and variables are reset]"
            else:
                why = (
                    "[the shell did not stop and was restarted: working directory, variables and background jobs "
                    "are lost]"
                )
            self._restart_shell(live, notes, why)
        elif not is_shell and not finished:
            notes.append("[the script did not stop; its processes were killed]")
        text, truncated = capture.text()
        return CommandResult(_join(text, notes), exit_code, reason == "timeout", truncated)

    def _restart_shell(self, live: _Live, notes: list[str], why: str) -> None:
        if live.shell:
            live.cg.kill([live.shell, *live.descendants(live.shell)])
        notes.append(why)
        try:
            self._start_shell(live)
        except SandboxError:
            notes.append("[a new shell could not be started; the next command starts a fresh sandbox]")
            if live.host_init:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(live.host_init, signal.SIGKILL)

    def _teardown(self, live: _Live) -> None:
        if live.host_init:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(live.host_init, signal.SIGKILL)
        if live.proc is not None:  # bubblewrap reaps the sandbox's pid 1 and exits: let it, or pid 1 is left a
            try:  # zombie under the host's init
                live.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        live.cg.kill_all(keep=(), timeout_s=3.0)
        if live.proc is not None:
            try:
                live.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                live.proc.kill()
                live.proc.wait(timeout=5)
        for fd in [*live.fds.values(), live.proc_fd, live.shell_fd]:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        live.fds, live.proc_fd, live.shell_fd = {}, -1, -1
        live.cg.remove()


def _join(text: str, notes: list[str]) -> str:
    if not notes:
        return text
    sep = "" if not text or text.endswith("\n") else "\n"
    return text + sep + "\n".join(notes)

