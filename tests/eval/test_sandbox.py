"""The sandbox with hostile samples: each fails only itself, within its limits, and leaves nothing behind.

The fork bomb is bounded three ways so it cannot run away on a shared machine: RLIMIT_NPROC (8 processes,
exact in uid mode), a 2 s wall clock after which the whole group / uid is SIGKILLed, and children that sleep
when a fork fails instead of spinning."""

import os
import socket

import pytest

from palate.eval.sandbox import Limits, run_many, run_python
from palate.eval.sandbox import _user_procs

FAST = Limits(cpu_s=1, wall_s=5, memory_mb=256, max_procs=8)


def test_a_good_sample_passes_with_its_stdout_and_a_bad_one_fails():
    ok = run_python("import collections, json\nprint(json.dumps(sorted(collections.Counter('abca'))))", FAST)
    assert ok.status == "passed" and ok.stdout == '["a", "b", "c"]\n' and ok.returncode == 0
    bad = run_python("assert 1 + 1 == 3, 'arithmetic'", FAST)
    assert bad.status == "failed" and "AssertionError: arithmetic" in bad.stderr


def test_early_exit_zero_is_not_a_pass():
    r = run_python("import sys\nsys.exit(0)\nassert False", FAST)
    assert r.returncode == 0 and r.status == "failed"


def test_infinite_loop_hits_the_cpu_limit_not_the_wall():
    r = run_python("while True:\n    pass", FAST)
    assert r.status == "cpu_limit" and r.wall_s < 4.5


def test_sleeping_forever_hits_the_wall_clock():
    r = run_python("import time\ntime.sleep(60)", Limits(wall_s=1))
    assert r.status == "timeout" and 1 <= r.wall_s < 5


def test_memory_bomb_fails_with_memory_error():
    r = run_python("x = bytearray(1 << 30)", FAST)  # 1 GiB against a 256 MiB address space
    assert r.status == "memory" and "MemoryError" in r.stderr


def test_process_limit_holds():
    src = ("import os, time\nok = bad = 0\nfor _ in range(20):\n    try:\n        pid = os.fork()\n"
           "    except OSError:\n        bad += 1\n        continue\n    if pid == 0:\n        time.sleep(3)\n"
           "        os._exit(0)\n    ok += 1\nprint(ok, bad)\n")
    r = run_python(src, FAST)
    assert r.status == "passed", r.stderr
    ok, bad = map(int, r.stdout.split())
    if r.enforced["nproc"] == "per-sample uid":
        assert ok == 7 and bad == 13  # 8 processes of this uid at most: the sample and 7 children
    else:
        assert ok + bad == 20 and bad > 0
    if r.enforced["uid"] is not None and r.enforced["uid_isolated"]:
        assert _user_procs(r.enforced["uid"]) == 0  # the sleeping children were killed at the end


def test_fork_bomb_is_killed_and_the_next_sample_still_runs():
    bomb = ("import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
            "        time.sleep(0.05)\n")
    r = run_python(bomb, Limits(cpu_s=2, wall_s=2, max_procs=8))
    assert r.status == "timeout"
    if r.enforced["uid_isolated"]:
        assert _user_procs(r.enforced["uid"]) == 0
    assert run_python("print(2 + 2)", FAST).stdout == "4\n"


def test_write_outside_its_dir_fails_and_inside_works():
    import shutil
    import tempfile
    from pathlib import Path

    open_dir = Path(tempfile.mkdtemp(dir="/tmp"))
    os.chmod(open_dir, 0o777)  # writable by anyone: only the sandbox can stop the write
    target = open_dir / "outside.txt"
    try:
        r = run_python(f"open({str(target)!r}, 'w').write('x')", FAST)
        assert r.status in ("failed", "escaped") and not target.exists()
        if r.enforced["fs_readonly"]:
            assert r.status == "failed" and "Read-only file system" in r.stderr
    finally:
        shutil.rmtree(open_dir)
    inside = run_python("open('here.txt', 'w').write('x')\nimport os\nprint(os.listdir('.'))", FAST)
    assert inside.status == "passed" and "here.txt" in inside.stdout


def test_write_to_tmp_is_detected_when_the_filesystem_is_left_writable():
    r = run_python("import os\nopen('/tmp/palate-escape-test-%d' % os.getpid(), 'w').write('x')",
                   Limits(readonly_fs=False))
    if not r.enforced["uid_isolated"]:
        pytest.skip("detection needs uid mode (root)")
    assert r.status == "escaped" and len(r.escaped_paths) == 1
    assert not os.path.exists(r.escaped_paths[0])  # removed after the run


def test_network_to_localhost_is_refused():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(0.5)
    port = srv.getsockname()[1]
    try:
        r = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)", FAST)
        assert r.status == "failed"
        with pytest.raises(socket.timeout):
            srv.accept()  # nothing got through
    finally:
        srv.close()
    if r.enforced["network"] == "namespace":
        assert "Network is unreachable" in r.stderr
    else:
        assert "network access is disabled" in r.stderr


def test_one_hostile_sample_fails_only_itself_in_a_batch():
    rs = run_many(["print(1)", "while True: pass", "x = bytearray(1 << 30)", "print(4)"], FAST, workers=2)
    assert [r.status for r in rs] == ["passed", "cpu_limit", "memory", "passed"]
    assert [rs[0].stdout, rs[3].stdout] == ["1\n", "4\n"]
