"""Run untrusted Python (benchmark completions, task checkers) one sample per process, with limits.

Every sample gets a fresh ``python -I`` child in its own session (process group) and its own temp dir
as cwd, ``HOME`` and ``TMPDIR``. Before the sample's code runs, a small bootstrap in the child applies:

    limit / isolation      how                                           when it holds
    CPU time               RLIMIT_CPU (SIGXCPU, then SIGKILL 1 s later)   always
    memory                 RLIMIT_AS (address space)                     always
    file size              RLIMIT_FSIZE (stdout/stderr files included)   always
    core dumps             RLIMIT_CORE = 0                               always
    wall clock             the parent kills the process group (and, in    always
                           uid mode, every process of the sample's uid)
    process count          RLIMIT_NPROC                                  uid mode: exact (a fresh uid per
                                                                         sample); otherwise counted against
                                                                         the whole user's processes
    no network             unshare(CLONE_NEWNET): a namespace with only  when the kernel allows it (root or
                           a down loopback, so even 127.0.0.1 fails;      user namespaces); else socket
                           else ``socket.socket`` raises in the child     creation is patched to raise (a
                                                                         sample can undo a Python patch)
    read-only filesystem   unshare(CLONE_NEWNS), every mount remounted   when the kernel allows it; else
                           read-only, the sample dir bind-mounted rw     writes outside are only *detected*
                                                                         (uid mode, see below)

*uid mode* (the parent runs as root): the child drops to a fresh unprivileged uid/gid with no groups,
so it can write nowhere the filesystem's permissions do not allow, RLIMIT_NPROC counts only its own
processes (root ignores RLIMIT_NPROC, so a fork bomb is bounded only in this mode), and cleanup kills
every process of that uid (``kill(-1)`` as that uid), including any that left the process group with
``setsid``. After each sample, files that uid created in the world-writable dirs (``/tmp``,
``/var/tmp``, ``/dev/shm``) are removed and the sample is marked ``escaped``.

Not enforced: without root, a child that calls ``setsid`` and outlives the wall clock is not killed;
there is no seccomp filter (any syscall the uid may make is allowed) and no cgroup; reading files the
uid may read is allowed. What held for each sample is in :attr:`SandboxResult.enforced`.

A sample passes when its code runs to the end (exit 0 and the bootstrap's end-of-run marker, so an early
``sys.exit(0)`` is a failure). The marker stops accidental early exits, not a sample crafted to forge it.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm")
_UID_BASE = 400_000
_counter = itertools.count()
_lock = threading.Lock()


@dataclass(frozen=True)
class Limits:
    cpu_s: float = 5.0
    wall_s: float = 10.0
    memory_mb: int = 512
    max_procs: int = 16
    file_mb: int = 16
    readonly_fs: bool = True
    """False only to exercise the write-outside detection (uid mode) in tests"""


@dataclass
class SandboxResult:
    status: str
    """passed | failed | timeout | cpu_limit | memory | escaped | error"""
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    enforced: dict = field(default_factory=dict)
    escaped_paths: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# The bootstrap runs in the child as ``python -I -c _BOOT CONFIG``; it reads the end marker from stdin,
# isolates and limits itself, reports what held on fd REPORT_FD (then closes it), and runs the sample.
_BOOT = r'''
import ctypes, json, os, resource, sys
cfg = json.loads(sys.argv[1]); box = cfg["dir"]; marker = sys.stdin.readline().strip()
rep = {"errors": {}}
libc = ctypes.CDLL(None, use_errno=True)
def err(): return os.strerror(ctypes.get_errno())
if libc.unshare(0x40000000) == 0: rep["network"] = "namespace"
else: rep["network"] = "socket_patch"; rep["errors"]["network"] = "unshare(CLONE_NEWNET): " + err()
rep["fs_readonly"] = False
if libc.unshare(0x00020000) == 0:
    MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
    ok = libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0
    ok = ok and libc.mount(box.encode(), box.encode(), None, MS_BIND, None) == 0
    bad = []
    if ok and cfg["py_mount"]:
        base, alias = cfg["py_mount"]
        if libc.mount(base.encode(), alias.encode(), None, MS_BIND | MS_REC, None) == 0:
            sys.path[:] = [alias + q[len(base):] if q.startswith(base) else q for q in sys.path]
            for m in list(sys.modules.values()):  # packages imported before the move keep a stale __path__
                mp = getattr(m, "__path__", None)
                if isinstance(mp, list):
                    mp[:] = [alias + q[len(base):] if q.startswith(base) else q for q in mp]
            sys.path_importer_cache.clear(); rep["py_alias"] = alias
        else:
            ok = False; bad.append("bind " + base + ": " + err())
    if ok and cfg["readonly_fs"]:
        points = [l.split()[4] for l in open("/proc/self/mountinfo")]
        for mp in dict.fromkeys(points):
            if mp == box or mp.startswith(("/proc", "/sys")) or mp in ("/dev", "/dev/pts"):
                continue
            if libc.mount(b"none", mp.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY, None) != 0:
                bad.append(mp + ": " + err())
    rep["fs_readonly"] = ok and not bad and cfg["readonly_fs"]
    if not cfg["readonly_fs"]: rep["errors"]["fs"] = "read-only remount turned off (readonly_fs=False)"
    elif not rep["fs_readonly"]: rep["errors"]["fs"] = "; ".join(bad) or "mount: " + err()
else:
    rep["errors"]["fs"] = "unshare(CLONE_NEWNS): " + err()
mb = 1 << 20
cpu = int(cfg["cpu_s"] + 0.999)
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (cfg["memory_mb"] * mb, cfg["memory_mb"] * mb))
resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["file_mb"] * mb, cfg["file_mb"] * mb))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"]))
if cfg["uid"] is not None and cfg["py_mount"] and "py_alias" not in rep:
    cfg["uid"] = None; rep["errors"]["uid"] = "the Python stdlib is not readable by an unprivileged uid"
if cfg["uid"] is not None:
    os.setgroups([]); os.setgid(cfg["uid"]); os.setuid(cfg["uid"])
rep["uid"] = os.getuid()
os.chdir(box)
if rep["network"] != "namespace":
    import socket
    class _NoSocket(socket.socket):
        def __init__(self, *a, **k): raise PermissionError("network access is disabled in the palate sandbox")
    socket.socket = _NoSocket
    socket.create_connection = lambda *a, **k: _NoSocket()
with os.fdopen(cfg["report_fd"], "w") as f: f.write(json.dumps(rep))
src = open(os.path.join(box, "sample.py"), encoding="utf-8").read()
sys.argv = ["sample.py"]; sys.path.insert(0, box)
glb = {"__name__": "__main__", "__file__": os.path.join(box, "sample.py")}
try:
    exec(compile(src, "sample.py", "exec"), glb)
except SystemExit as e:
    raise
except BaseException:
    import traceback; traceback.print_exc(); sys.stderr.flush(); os._exit(1)
del glb
sys.stdout.flush(); sys.stdout.write("\n" + marker + "\n"); sys.stdout.flush()
'''


def _uid_mode() -> bool:
    return os.geteuid() == 0


def _next_uid() -> int:
    with _lock:
        return _UID_BASE + (os.getpid() * 131 + next(_counter)) % 1_000_000


def _user_procs(uid: int) -> int:
    """Live (not zombie) processes of ``uid``; a killed sample's zombies are reaped by init later."""
    n = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid == uid:
                    with open(f"/proc/{d}/stat") as f:
                        n += f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
            except (OSError, IndexError):
                pass
    return n


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid``: ``kill(-1)`` from a helper running as that uid, until none is left."""
    for _ in range(50):
        if _user_procs(uid) == 0:
            return
        subprocess.run(["kill", "-9", "--", "-1"], user=uid, group=uid, extra_groups=[], env={"PATH": "/usr/bin:/bin"},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.02)


def _hidden_prefix() -> str | None:
    """``sys.base_prefix`` when an unprivileged uid cannot reach it (a dir on the way lacks o+x), else None."""
    p = Path(sys.base_prefix).resolve()
    for d in [*reversed(p.parents), p]:
        if not os.stat(d).st_mode & 0o001:
            return str(p)
    return None


def _owned_files(uid: int) -> list[str]:
    """Files or dirs owned by ``uid`` directly in the world-writable dirs (the places it could write to)."""
    found = []
    for root in WORLD_WRITABLE:
        try:
            names = os.listdir(root)
        except OSError:
            continue
        for n in names:
            p = os.path.join(root, n)
            try:
                if os.lstat(p).st_uid == uid:
                    found.append(p)
            except OSError:
                pass
    return found


def _read(path: Path, limit: int = 1 << 16) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", "replace")


def run_python(source: str, limits: Limits = Limits(), *, files: dict[str, str] | None = None) -> SandboxResult:
    """Run ``source`` as a script in a fresh sandboxed child (module docstring); never raises for what the
    sample does. ``files`` are written into the sample's dir first (name → text)."""
    uid = _next_uid() if _uid_mode() else None
    py_mount = None
    work = Path(tempfile.mkdtemp(prefix="palate-sbx-"))  # parent-only: output files
    box = work / "box"
    box.mkdir()
    (box / "sample.py").write_text(source, encoding="utf-8")
    for name, text in (files or {}).items():
        (box / name).write_text(text, encoding="utf-8")
    if uid is not None:
        os.chmod(work, 0o711)
        for p in [box, *box.iterdir()]:
            os.chown(p, uid, uid)
        os.chmod(box, 0o700)
        nproc = limits.max_procs
        hidden = _hidden_prefix()
        if hidden:
            (work / "py").mkdir()
            py_mount = [hidden, str(work / "py")]
    else:
        nproc = _user_procs(os.getuid()) + limits.max_procs
    r_fd, w_fd = os.pipe()
    marker = secrets.token_hex(16)
    cfg = {"dir": str(box), "cpu_s": limits.cpu_s, "memory_mb": limits.memory_mb, "file_mb": limits.file_mb,
           "nproc": nproc, "uid": uid, "report_fd": w_fd, "py_mount": py_mount,
           "readonly_fs": limits.readonly_fs}
    env = {"PATH": "/usr/bin:/bin", "HOME": str(box), "TMPDIR": str(box), "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.monotonic()
    timed_out = False
    try:
        with open(work / "out", "wb") as out, open(work / "err", "wb") as errf:
            proc = subprocess.Popen([sys.executable, "-I", "-c", _BOOT, json.dumps(cfg)], stdin=subprocess.PIPE,
                                    stdout=out, stderr=errf, cwd=box, env=env, pass_fds=(w_fd,),
                                    start_new_session=True)
        os.close(w_fd)
        w_fd = -1
        try:
            proc.stdin.write((marker + "\n").encode())
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the sample's group, whether it finished or not
        except (ProcessLookupError, PermissionError):
            pass
        if uid is not None:
            _kill_uid(uid)
        rc = proc.wait()
        wall = time.monotonic() - t0
        with os.fdopen(r_fd, "r") as f:
            r_fd = -1
            report_text = f.read()
        escaped = []
        if uid is not None:
            escaped = _owned_files(uid)
            for p in escaped:
                shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) and not os.path.islink(p) else _unlink(p)
        stdout, stderr = _read(work / "out"), _read(work / "err")
    finally:
        for fd in (r_fd, w_fd):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(work, ignore_errors=True)
    try:
        rep = json.loads(report_text)
    except ValueError:
        return SandboxResult("error", rc, stdout, stderr or "sandbox setup failed before the sample ran", wall)
    enforced = {"cpu_s": limits.cpu_s, "memory_mb": limits.memory_mb, "file_mb": limits.file_mb,
                "wall_s": limits.wall_s, "network": rep["network"], "fs_readonly": rep["fs_readonly"],
                "uid_isolated": uid is not None and rep.get("uid") == uid,
                "nproc": "per-sample uid" if uid is not None else "whole user", "uid": rep.get("uid"),
                "errors": rep["errors"]}
    finished = stdout.endswith(marker + "\n")
    if finished:
        stdout = stdout[: -len(marker) - 2]
    if escaped:
        status = "escaped"
    elif timed_out:
        status = "timeout"
    elif rc in (-signal.SIGXCPU, -signal.SIGKILL) and not timed_out:
        status = "cpu_limit" if rc == -signal.SIGXCPU or "MemoryError" not in stderr else "memory"
    elif "MemoryError" in stderr:
        status = "memory"
    elif rc == 0 and finished:
        status = "passed"
    else:
        status = "failed"
    return SandboxResult(status, rc, stdout, stderr, round(wall, 3), enforced, escaped)


def _unlink(p: str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def run_many(sources: list[str], limits: Limits = Limits(), *, workers: int = 2) -> list[SandboxResult]:
    """:func:`run_python` over ``sources`` with ``workers`` samples at a time, results in input order."""
    if workers <= 1 or len(sources) <= 1:
        return [run_python(s, limits) for s in sources]
    with ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(lambda s: run_python(s, limits), sources))
