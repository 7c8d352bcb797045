"""The sandbox's launcher: a separate process (``python -I _launch.py CONFIG_JSON``) that the host starts as root and
that ends by exec'ing bubblewrap as an unprivileged host uid.

Steps, in order (each one's failure is printed to stderr and exits 111):

1. enter the sandbox's cgroups (memory, pids, freezer) while still host root; everything started later inherits them;
2. ``oom_score_adj`` -1000 for itself where the host allows it (so for bubblewrap and the sandbox's pid 1); the
   supervisor sets 500 for every shell and script it starts, so that the kernel picks the memory hog, not the
   sandbox's plumbing;
3. a new user namespace and mount namespace; a forked helper (still host root, outside) writes the id maps:
   sandbox ids ``0..count-1`` are host ids ``base..base+count-1``, none of which is a host user, so the sandbox's
   root is unprivileged on the host while ``chown``, ``useradd`` and ``su`` work inside;
4. switch to the sandbox's uid/gid 0 (host ``base``) with no supplementary groups: from here on host files are
   reached with "other" permissions only;
5. a private size-capped tmpfs (``size=`` bytes, ``nr_inodes=`` files) mounted on the stage directory in the new
   mount namespace (no one else sees it; it vanishes with the namespace) and populated as the sandbox's root:
   directories, a curated ``/etc`` (generated files, plus copies of non-secret host files that the unprivileged uid
   can read);
6. no more user namespaces from inside: ``user.max_user_namespaces`` 0 in the new namespace, the limit that
   bubblewrap's ``--disable-userns`` uses (the sandbox's root has no ``CAP_SYS_RESOURCE`` to raise it);
7. resource limits (CPU seconds, file size, no core files);
8. the pipes moved to the numbers the supervisor expects (and its script on a pipe at fd 7, which bubblewrap copies
   to a read-only file), then ``exec`` bubblewrap.

This file imports only the standard library, all of it before step 4 (the interpreter may live where the sandbox's
uid cannot read, such as ``/root/.pyenv``), and runs no code on import.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import resource
import shutil
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REC = 0x4000
MS_PRIVATE = 0x40000


def _fail(step: str, err: BaseException | str) -> None:
    sys.stderr.write(f"sandbox launcher: {step}: {err}\n")
    sys.stderr.flush()
    os._exit(111)


def _check(libc: ctypes.CDLL, rc: int, step: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        _fail(step, OSError(e, os.strerror(e)))


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _map_ids(base: int, count: int) -> None:
    """Unshare user+mount namespaces; a helper forked beforehand (still host root in the initial namespace) writes
    the id maps of this process."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the helper
        os.close(w)
        try:
            if os.read(r, 1) != b"1":
                os._exit(2)
            parent = os.getppid()
            _write(f"/proc/{parent}/uid_map", f"0 {base} {count}\n")
            _write(f"/proc/{parent}/gid_map", f"0 {base} {count}\n")
        except BaseException as e:  # noqa: BLE001 - report anything, exit non-zero
            sys.stderr.write(f"sandbox launcher: id maps: {e}\n")
            os._exit(3)
        os._exit(0)
    os.close(r)
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.unshare(CLONE_NEWUSER | CLONE_NEWNS)
    os.write(w, b"1" if rc == 0 else b"0")
    os.close(w)
    _, status = os.waitpid(pid, 0)
    _check(libc, rc, "unshare(user, mount)")
    if status != 0:
        _fail("id maps", f"helper exited with status {status}")


def _populate(root: str, cfg: dict) -> None:
    for rel, mode in cfg["dirs"]:
        path = os.path.join(root, rel)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, mode)
    etc = os.path.join(root, "etc")
    for name in cfg["etc_copy"]:  # non-secret host files; anything the unprivileged uid cannot read is skipped
        src, dst = os.path.join("/etc", name), os.path.join(etc, name)
        try:
            if os.path.islink(src):
                os.symlink(os.readlink(src), dst)
            elif os.path.isdir(src):
                shutil.copytree(src, dst, symlinks=True)
            elif os.path.isfile(src):
                shutil.copy2(src, dst)
        except (OSError, shutil.Error):
            pass
    for name, (text, mode) in cfg["etc_files"].items():
        path = os.path.join(etc, name)
        if os.path.lexists(path):
            os.unlink(path)
        _write(path, text)
        os.chmod(path, mode)
    for name, target in cfg["etc_symlinks"].items():
        path = os.path.join(etc, name)
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink(target, path)


def _place_fds(fds: dict[str, int]) -> None:
    """Move inherited descriptors to the numbers the sandbox expects (sources may sit on each other's targets)."""
    staged = {int(target): fcntl.fcntl(source, fcntl.F_DUPFD_CLOEXEC, 100) for target, source in fds.items()}
    for source in set(fds.values()):
        os.close(source)
    for target, fd in staged.items():
        os.dup2(fd, target)
        os.close(fd)


def main(cfg: dict) -> None:
    for procs in cfg["cgroup_procs"]:
        try:
            _write(procs, "0")  # 0: the writing process
        except OSError as e:
            _fail(f"join cgroup {procs}", e)
    try:
        _write("/proc/self/oom_score_adj", "-1000")
    except OSError:
        pass  # needs CAP_SYS_RESOURCE, which some hosts' root lacks; the supervisor raises its children's instead
    _map_ids(cfg["id_base"], cfg["id_count"])
    try:
        os.setgroups([])
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    except OSError as e:
        _fail("switch to the sandbox's root", e)
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc, libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make mounts private")
    stage = cfg["stage"].encode()
    opts = f"size={cfg['work_bytes']},nr_inodes={cfg['work_inodes']},mode=0755".encode()
    _check(libc, libc.mount(b"sandbox", stage, b"tmpfs", MS_NOSUID | MS_NODEV, opts), "mount the work tmpfs")
    try:
        _populate(cfg["stage"], cfg)
    except OSError as e:
        _fail("populate the sandbox's root", e)
    try:
        _write("/proc/sys/user/max_user_namespaces", "0")
    except OSError as e:
        _fail("disable user namespaces", e)
    try:
        for name, (soft, hard) in cfg["rlimits"].items():
            resource.setrlimit(getattr(resource, name), (soft, hard))
    except (OSError, ValueError, AttributeError) as e:
        _fail("resource limits", e)
    init_r, init_w = os.pipe()  # the supervisor's script, for bubblewrap's --ro-bind-data 7
    data = cfg["init_script"].encode()
    if len(data) > 60000 or os.write(init_w, data) != len(data):
        _fail("init script", "too long for a pipe")
    os.close(init_w)
    _place_fds({**cfg["fds"], "7": init_r})
    try:
        os.execv(cfg["bwrap"][0], cfg["bwrap"])
    except OSError as e:
        _fail(f"exec {cfg['bwrap'][0]}", e)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
