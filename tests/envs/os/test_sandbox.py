"""The bubblewrap sandbox of the ``os`` environment: the adversarial suite, run as the agent's commands.

Each attack must be contained, reported in the observation, and followed by a working command (in the same sandbox,
or a fresh one); after ``close()`` nothing of the sandbox is left on the host (processes, checked in ``/proc`` by
pid and start time, and cgroups). Skipped only where bubblewrap is not installed.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agenttuning.envs.os import cgroups
from agenttuning.envs.os.sandbox import ID_BASE, Sandbox, SandboxLimits

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed (apt-get install bubblewrap; .ci/run does)"
)


@pytest.fixture
def box():
    sandbox = Sandbox()
    sandbox.start()
    yield sandbox
    sandbox.close()


def _starts(pids: list[int]) -> dict[int, str]:
    """pid -> start time, for the pids that exist now (a pid and its start time name one process)."""
    out = {}
    for pid in pids:
        try:
            out[pid] = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        except (OSError, IndexError):
            pass
    return out


def _assert_gone(seen: dict[int, str], name: str) -> None:
    left = {p: s for p, s in _starts(list(seen)).items() if seen[p] == s}
    assert not left, f"processes left on the host after close(): {left}"
    assert not list(Path(cgroups.ROOT).glob(f"*/{name}")), "cgroups left after close()"


def _works(box: Sandbox) -> None:
    r = box.run("echo still-$((40+2))")
    assert r.output == "still-42\n" and r.exit_code == 0, r


# -- the shell behaves as a terminal -------------------------------------------------------------------------------


def test_state_persists_between_commands(box):
    assert box.run("cd /tmp && export GREETING=hi; sleep 60 & cd /var").exit_code == 0
    r = box.run("pwd; echo $GREETING; jobs")
    assert r.output.startswith("/var\nhi\n[1]+  Running"), r
    assert box.run("kill %1; wait; jobs; echo done").output.endswith("done\n")
    r = box.run("f() { echo fn-$1; }; alias ll='echo aliased'")
    assert box.run("f 7; ll").output == "fn-7\naliased\n"


def test_command_framing_is_robust(box):
    assert box.run("false").exit_code == 1
    assert box.run("printf 'no newline'").output == "no newline"
    assert box.run("echo 'p 1 0'; echo p $((1+1)) 0 >&2").output == "p 1 0\np 2 0\n"  # status-like text is output
    r = box.run("cat; read x; echo read=[$x]", timeout_s=3)  # stdin is /dev/null: nothing waits for input
    assert r.output == "read=[]\n" and not r.timed_out
    multi_line = "for i in 1 2; do\n  echo $i\ndone\ncat <<'EOF'\nheredoc $HOME\nEOF"
    assert box.run(multi_line).output == "1\n2\nheredoc $HOME\n"
    assert box.run("echo 'nul\x00' '\ud800' é").output == "nul ? é\n"  # never raises on what a model can send
    assert box.run("echo unbalanced '").exit_code == 2
    assert "too long" in box.run("x" * 100_000).output
    r = box.run("seq 1 100000")
    assert r.truncated and len(r.output) <= 800 and r.output.endswith("[truncated because the output is too long]")
    _works(box)


def test_shell_exit_and_set_e_restart_the_shell(box):
    for command in ("exit 3", "set -e; false", "kill -9 $$"):
        r = box.run(command)
        assert "a new shell was started" in r.output, (command, r)
        _works(box)


def test_check_script_gets_answer_and_leaves_the_shell_alone(box):
    box.run("cd /tmp; export SECRET=shell-only; echo from-shell > /root/shared")
    check = 'echo "$#:$1:$2"; pwd; echo "[$SECRET]"; cat /root/shared; echo s > /root/back'
    r = box.run_script(check, "the answer", "")
    assert r.output == "2:the answer:\n/root\n[]\nfrom-shell\n" and r.exit_code == 0, r
    assert box.run_script("exit 4").exit_code == 4
    assert box.run("pwd; echo $SECRET; cat /root/back").output == "/tmp\nshell-only\ns\n"
    # a start script's background process outlives the script (AgentBench's `start`), and the shell sees it
    box.run_script("(while :; do echo tick >> /root/log; sleep 0.05; done) &")
    time.sleep(0.3)
    assert "tick" in box.run("cat /root/log").output
    r = box.run_script("sleep 30", timeout_s=0.5)
    assert r.timed_out and "timed out" in r.output


def test_users_groups_and_ownership_work_inside(box):
    r = box.run("useradd -m -s /bin/bash -G root,sudo user1 && id user1 && "
                "su - user1 -c 'whoami; touch f; stat -c %U f'")
    assert r.output.endswith("user1\nuser1\n") and "27(sudo)" in r.output, r
    assert box.run("chown 4242:4242 /tmp && stat -c %u:%g /tmp").output == "4242:4242\n"


# -- the adversarial suite -----------------------------------------------------------------------------------------


def test_network_is_unreachable(box):
    r = box.run("exec 3<>/dev/tcp/1.1.1.1/80")  # bash's own sockets: no tool needed
    assert "Network is unreachable" in r.output and r.exit_code == 1, r
    r = box.run("command -v curl >/dev/null || exit 7; curl -sS -m 3 http://1.1.1.1/", timeout_s=5)
    assert r.exit_code in (6, 7), r  # could not resolve / connect
    with socket.socket() as server:  # a service on the host's loopback: the sandbox's loopback is its own
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.2)
        port = server.getsockname()[1]
        r = box.run(f"exec 3<>/dev/tcp/127.0.0.1/{port}")
        assert "Connection refused" in r.output, r
        with pytest.raises(TimeoutError):
            server.accept()
    assert box.run("tail -n +3 /proc/net/dev | cut -d: -f1").output.split() == ["lo"]
    _works(box)


def test_writes_outside_the_sandbox_fail_or_stay_inside(box, tmp_path):
    r = box.run("for p in /usr/x /bin/x /lib/x /dev/x /proc/sys/kernel/hostname; do echo hi > $p; done 2>&1")
    assert r.output.count("Read-only file system") == 4 and "Permission denied" in r.output, r
    r = box.run("mount -t tmpfs none /mnt; unshare -U true; unshare -n true", timeout_s=5)
    assert "permission denied" in r.output and "No space left on device" in r.output, r  # no mounts, no userns
    caps = box.run("grep CapBnd /proc/self/status").output.split()[1]
    assert int(caps, 16) & (1 << 21) == 0, caps  # no CAP_SYS_ADMIN, even in the bounding set
    marker = tmp_path / "from-sandbox"
    box.run(f"mkdir -p {tmp_path} && echo x > {marker} && echo y > /x && echo z > /tmp/z")
    assert not marker.exists()  # the sandbox's files are in its own tmpfs
    _works(box)


def test_host_files_are_not_readable(box):
    shadow = box.run("cat /etc/shadow").output
    host_root = next((line for line in Path("/etc/shadow").read_text().splitlines() if line.startswith("root:")), "")
    assert shadow.startswith("root:*:") and host_root not in shadow  # the sandbox's own shadow, not the host's
    assert box.run("ls -A /root /home").output == "/home:\n\n/root:\n"  # not the host's /root or /home
    checkout = Path(__file__).resolve().parents[3]  # the project checkout (/work/main in CI)
    r = box.run(f"ls {checkout} 2>&1; ls /work 2>&1; ls /proc/*/root{checkout} 2>&1; echo end")
    assert r.output.count("No such file or directory") == 3 and r.output.endswith("end\n"), r
    r = box.run("cat /proc/1/cmdline | tr '\\0' ' '; echo; cat /proc/self/uid_map")
    assert "sandbox-init" in r.output and f"0 {ID_BASE} " in " ".join(r.output.split()), r
    _works(box)


def test_fork_bomb_is_contained(box):
    r1 = box.run(":(){ :|:& };:")
    time.sleep(0.5)
    r2 = box.run("echo survived")
    assert "limit of 128 processes" in r1.output + r2.output, (r1, r2)
    assert "survived\n" in r2.output
    assert len(box.host_pids) < 10  # the bomb is gone, the shell stayed
    _works(box)


def test_endless_loop_times_out_and_the_shell_keeps_its_state(box):
    box.run("cd /srv; X=kept")
    start = time.monotonic()
    r = box.run("while true; do :; done", timeout_s=1)
    assert r.timed_out and r.exit_code == 130 and "timed out after 1 s" in r.output, r
    assert time.monotonic() - start < 2.5
    assert box.run("pwd; echo $X").output == "/srv\nkept\n"
    # a loop that ignores SIGINT: the shell itself is restarted, and the observation says so
    r = box.run("trap '' INT; while true; do :; done", timeout_s=0.5)
    assert r.timed_out and "restarted" in r.output, r
    _works(box)


def test_memory_hog_is_killed(box):
    r = box.run("tail /dev/zero; echo tail=$?")  # tail keeps the (endless) last line in memory
    assert "tail=137" in r.output and "out of memory" in r.output and not r.timed_out, r
    _works(box)


def test_cpu_burn_is_stopped_by_its_cpu_limit():
    with Sandbox(SandboxLimits(cpu_s=1)) as box:
        r = box.run("(while :; do :; done)")
        assert r.exit_code == 152 and "CPU time limit exceeded" in r.output and not r.timed_out, r
        _works(box)


def test_filling_the_disk_stops_at_the_cap(box):
    r = box.run("head -c 100M /dev/zero > /root/one; for i in 1 2 3; do head -c 30M /dev/zero > /tmp/f$i; done")
    assert "File too large" in r.output and "No space left on device" in r.output, r  # RLIMIT_FSIZE, then the cap
    assert box.run("df -k / | awk 'NR==2 {print $2}'").output == f"{64 * 1024}\n"
    box.run("rm -f /root/one /tmp/f*")
    _works(box)


def test_a_gigabyte_of_output_is_cut_without_holding_it(box):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    r = box.run("head -c 1000000000 /dev/zero | tr '\\0' a")
    took = time.monotonic() - start
    assert r.truncated and r.output.startswith("a" * 700) and "was stopped" in r.output and len(r.output) < 1000, r
    assert took < 5, took
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB: nothing like 1 GB held
    _works(box)


def test_escaped_processes_are_gone_after_close():
    box = Sandbox()
    box.start()
    box.run("setsid sleep 1000 & nohup sleep 1000 >/dev/null 2>&1 & (setsid sh -c 'sleep 1000 &' &)")
    box.run_script("setsid sleep 1000 &")
    time.sleep(0.2)
    assert int(box.run("ps -e --no-headers | grep -c sleep").output) == 4
    box.run("for i in 1 2 3; do (sleep 0.05 &); done; sleep 0.3")  # orphans: pid 1 reaps them
    assert box.run("ps -eo stat --no-headers | grep -c Z").output == "0\n"
    seen, name = _starts(box.host_pids), box.cgroup_name
    assert len(seen) >= 7 and name
    box.close()
    _assert_gone(seen, name)
    box.close()  # twice is safe
    with pytest.raises(RuntimeError, match="start"):
        box.run("true")
    box.start()  # a fresh sandbox after close
    try:
        assert box.run("ls /root; echo fresh").output == "fresh\n"
    finally:
        box.close()


_HOLDER = """
import json, sys, time
from agenttuning.envs.os.sandbox import Sandbox
box = Sandbox()
box.start()
box.run("setsid sleep 1000 & nohup sleep 1000 >/dev/null 2>&1 &")
print(json.dumps([box.host_pids, box.cgroup_name]), flush=True)
time.sleep(60)
"""


def test_killing_the_owner_kills_the_sandbox():
    """--die-with-parent: a process that dies holding a sandbox (SIGKILL, no cleanup) takes it along; its empty
    cgroups are swept by the next sandbox's start."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER], stdout=subprocess.PIPE, text=True)
    try:
        pids, name = json.loads(holder.stdout.readline())
        seen = _starts(pids)
        assert len(seen) >= 5
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 5
    while {p for p, s in _starts(list(seen)).items() if seen[p] == s} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cgroups.sweep_stale() >= 1
    _assert_gone(seen, name)


def test_a_dead_sandbox_is_replaced_by_a_fresh_one(box):
    box.run("echo x > /root/file")
    os.kill(box._live.host_init, 9)  # from outside: the sandbox's pid 1 (nothing inside can kill it)
    time.sleep(0.1)
    r = box.run("ls /root; echo ok")
    assert "fresh one was started" in r.output and r.output.startswith("ok\n") and box.restarts == 1, r


def test_interrupt_from_another_thread(box):
    box.run("cd /opt")
    timer = threading.Timer(0.3, box.interrupt)
    timer.start()
    start = time.monotonic()
    r = box.run("sleep 30")
    assert time.monotonic() - start < 1.3 and "interrupted" in r.output and not r.timed_out, r
    assert box.run("pwd").output == "/opt\n"
    box.interrupt()  # with nothing running: no effect on the next command
    _works(box)


def test_twenty_sandboxes_leave_nothing_behind_and_timings(capsys):
    seen: dict[int, str] = {}
    names = []
    first, trivial = [], []
    for _ in range(20):
        box = Sandbox(SandboxLimits())
        start = time.monotonic()
        box.start()
        assert box.run("echo ready").output == "ready\n"
        first.append(time.monotonic() - start)
        start = time.monotonic()
        box.run("true")
        trivial.append(time.monotonic() - start)
        box.run("sleep 100 & setsid sleep 100 &")
        seen.update(_starts(box.host_pids))
        names.append(box.cgroup_name)
        box.close()
    for name in names:
        _assert_gone({}, name)
    _assert_gone(seen, "no-such-cgroup")
    first.sort()
    trivial.sort()
    with capsys.disabled():
        print(
            f"\nsandbox: start + first command median {first[10] * 1000:.0f} ms (max {first[-1] * 1000:.0f}); "
            f"trivial command median {trivial[10] * 1000:.2f} ms (max {trivial[-1] * 1000:.2f})"
        )
    assert first[10] < 2.0 and trivial[10] < 0.1
