"""A sandbox's own cgroups (v1): a memory limit and a process limit for everything in it, a freezer to stop a fork
bomb in one step, and the counters that tell what happened (OOM kills, forks refused at the limit).

The host's root side creates the groups, the sandbox's launcher moves itself into them before anything else runs
(children inherit them), and :meth:`SandboxCgroups.remove` kills what is left and removes them. Names carry the
creating process's pid, so :func:`sweep_stale` can remove groups that a killed process left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids", "freezer")
PREFIX = "agenttuning-sandbox-"
_NAME = re.compile(rf"^{re.escape(PREFIX)}(\d+)-")


def cgroups_unavailable_reason() -> str | None:
    """Why this machine cannot give a sandbox its own cgroups, or None when it can."""
    if os.geteuid() != 0:
        return "the sandbox needs root on the host: it creates cgroups and maps the sandbox's ids (run as root)"
    for c in CONTROLLERS:
        if not (ROOT / c / "cgroup.procs").is_file():
            return (
                f"no cgroup v1 {c} controller at {ROOT / c}: the sandbox needs cgroup v1 memory, pids and freezer "
                "controllers (cgroup v2 is not supported yet)"
            )
    return None


def _read_counter(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


class SandboxCgroups:
    """One sandbox's memory, pids and freezer groups."""

    def __init__(self, name: str, *, memory_bytes: int, pids_max: int) -> None:
        self.name = name
        self.dirs = {c: ROOT / c / name for c in CONTROLLERS}
        made: list[Path] = []
        try:
            for d in self.dirs.values():
                d.mkdir()
                made.append(d)
            mem = self.dirs["memory"]
            (mem / "memory.limit_in_bytes").write_text(str(memory_bytes))
            memsw = mem / "memory.memsw.limit_in_bytes"
            if memsw.exists():  # swap accounting on: swap counts against the same limit
                memsw.write_text(str(memory_bytes))
            (self.dirs["pids"] / "pids.max").write_text(str(pids_max))
        except OSError:
            for d in reversed(made):
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise

    @property
    def join_files(self) -> list[str]:
        """The ``cgroup.procs`` files a process writes its pid to, to enter all the groups."""
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def procs(self) -> list[int]:
        """Host pids of every process in the sandbox (the pids group's members)."""
        try:
            return [int(x) for x in (self.dirs["pids"] / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def oom_kills(self) -> int:
        """Processes the kernel has killed for exceeding the memory limit, so far."""
        return _read_counter(self.dirs["memory"] / "memory.oom_control", "oom_kill")

    def pid_limit_hits(self) -> int:
        """Forks refused because the process limit was reached, so far."""
        return _read_counter(self.dirs["pids"] / "pids.events", "max")

    def memory_peak(self) -> int:
        try:
            return int((self.dirs["memory"] / "memory.max_usage_in_bytes").read_text())
        except (OSError, ValueError):
            return 0

    @contextlib.contextmanager
    def frozen(self, timeout_s: float = 2.0) -> Iterator[None]:
        """Every process in the sandbox stopped (none can fork) for the duration; signals sent meanwhile are
        delivered on thaw."""
        state = self.dirs["freezer"] / "freezer.state"
        try:
            state.write_text("FROZEN")
            deadline = time.monotonic() + timeout_s
            while state.read_text().strip() != "FROZEN" and time.monotonic() < deadline:
                time.sleep(0.002)
        except OSError:
            pass
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                state.write_text("THAWED")

    def kill(self, pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def kill_all(self, *, keep: Iterable[int] = (), timeout_s: float = 3.0) -> bool:
        """SIGKILL every process in the sandbox but ``keep``, frozen first so that nothing forks meanwhile; True
        once they are gone (or only ``keep`` is left)."""
        spare = set(keep)
        with self.frozen():
            self.kill(p for p in self.procs() if p not in spare)
        deadline = time.monotonic() + timeout_s
        while True:
            left = [p for p in self.procs() if p not in spare]
            if not left:
                return True
            if time.monotonic() > deadline:
                return False
            self.kill(left)
            time.sleep(0.005)

    def remove(self, timeout_s: float = 5.0) -> bool:
        """Kill what is left and remove the groups; True when all are gone."""
        self.kill_all(timeout_s=timeout_s)
        deadline = time.monotonic() + timeout_s
        ok = True
        for d in self.dirs.values():
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        ok = False
                        break
                    time.sleep(0.01)
        return ok


def sweep_stale() -> int:
    """Remove empty sandbox groups whose creating process is gone (left by a process that was killed); returns
    how many were removed."""
    removed = 0
    for c in CONTROLLERS:
        base = ROOT / c
        try:
            entries = list(base.iterdir())
        except OSError:
            continue
        for d in entries:
            m = _NAME.match(d.name)
            if not m or not d.is_dir() or Path(f"/proc/{m.group(1)}").exists():
                continue
            with contextlib.suppress(OSError):
                d.rmdir()  # refuses while processes remain: those are left to their own group
                removed += 1
    return removed
