"""Model-written code is contained (issue 17 §3): wrong, crashing and hostile HumanEval completions graded by the
real path.

Each attack is a real completion run by ``grade_code_many`` in the real sandbox (bubblewrap, and the unshare
fallback); each must fail its own sample only, leave the evaluator, its environment and the filesystem untouched,
and end within its time limit.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from ranktuner_verl.eval import sandbox
from ranktuner_verl.eval.benchmarks import load_benchmark
from ranktuner_verl.eval.code import grade_code, grade_code_many

TIMEOUT = 3.0
WRONG = "def has_close_elements(numbers, threshold):\n    return False\n"
EXITED = "failed: exited before its tests finished"
MARKER = "987.654321"  # a grandchild's sleep argument, to find it among the machine's processes


@pytest.fixture
def victim_dir():
    """A folder outside /tmp (the sandbox hides the host's /tmp behind its own, so a file there proves nothing)."""
    folder = Path(tempfile.mkdtemp(prefix="ranktuner_victim_", dir="/var/tmp"))
    yield folder
    shutil.rmtree(folder)


@pytest.fixture(scope="module")
def problem():
    return load_benchmark("humaneval", limit=1)[0]  # HumanEval/0, has_close_elements


def fenced(code: str) -> str:
    return f"My solution:\n```python\n{code}\n```"


class LoopbackServer:
    """A TCP server on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.sock.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while self.running:
            try:
                self.sock.accept()[0].close()
                self.accepted += 1
            except OSError:
                pass

    def close(self):
        self.running = False
        self.thread.join()
        self.sock.close()


def attacks(problem, victim: str, secret: str, port: int) -> dict[str, tuple[str, str | None]]:
    """name -> (completion, its expected outcome; None: any failure)."""
    right = problem.extra["prompt"] + problem.answer
    evaluator = os.getpid()
    return {
        "correct": (fenced(right), "passed"),
        "correct, with threads": (fenced("from concurrent.futures import ThreadPoolExecutor\n" + right +
                                         "\nassert list(ThreadPoolExecutor(4).map(abs, [-1, -2])) == [1, 2]"),
                                  "passed"),
        "wrong": (fenced(WRONG), "failed: AssertionError"),
        "segfault": (fenced("import ctypes\ndef has_close_elements(numbers, threshold):\n"
                            "    return ctypes.string_at(0)"), "failed: killed by signal 11"),
        "8 GiB": (fenced("def has_close_elements(numbers, threshold):\n    block = bytearray(8 * 2**30)\n"
                         "    return True"), "failed: MemoryError"),
        "sys.exit(0)": (fenced(WRONG + "import sys\nsys.exit(0)"), EXITED),
        "os._exit(0)": (fenced(WRONG + "import os\nos._exit(0)"), EXITED),
        "atexit exit": (fenced(WRONG + "import atexit, os\natexit.register(os._exit, 0)"), EXITED),
        "unittest.main()": (fenced(WRONG + "import unittest\nif __name__ == '__main__':\n    unittest.main()"),
                            None),
        "kills its parent": (fenced(WRONG + "import os, posix, signal\nposix.kill(os.getppid(), signal.SIGKILL)"),
                             None),  # bwrap: its init ignores it; unshare: it is init, its parent pid is 0
        "signals the evaluator": (fenced(WRONG + "import posix, signal\n"
                                         f"for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):\n"
                                         f"    posix.kill({evaluator}, sig)"),
                                  "failed: ProcessLookupError: [Errno 3] No such process"),
        "kills every process it can": (fenced(WRONG + "import posix, signal\nposix.kill(-1, signal.SIGKILL)"), None),
        "posix.system": (fenced(right + f"\nimport posix\nassert posix.system('touch {victim}.system') == 0"),
                         "failed: AssertionError"),
        "writes and truncates files": (fenced(right + f"\nopen({victim!r}, 'w').write('overwritten')"),
                                       f"failed: OSError: [Errno 30] Read-only file system: {victim!r}"),
        "removes files": (fenced(right + f"\nimport posix\nposix.unlink({victim!r})"),
                          f"failed: OSError: [Errno 30] Read-only file system: {victim!r}"),
        "reads environments": (fenced(
            "import glob, os\nfound = [k for k, v in os.environ.items() if v == " + repr(secret) + "]\n"
            "for path in glob.glob('/proc/*/environ') + ['/proc/%d/environ' % os.getppid(), "
            f"'/proc/{evaluator}/environ']:\n"
            "    try:\n        found += [path] if " + repr(secret.encode()) + " in open(path, 'rb').read() else []\n"
            "    except OSError:\n        pass\n"
            "raise RuntimeError('found %r' % found)"), "failed: RuntimeError: found []"),
        "network": (fenced(right + f"\nimport socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)"),
                    None),
        "setsid grandchild": (fenced(
            "import os, posix, time\nif posix.fork() == 0:\n    os.setsid()\n    if posix.fork() == 0:\n"
            f"        posix.execv('/bin/sleep', ['sleep', '{MARKER}'])\n    os._exit(0)\n"
            "while True:\n    time.sleep(1)"), "failed: BlockingIOError: [Errno 11] Resource temporarily unavailable"),
        "fork bomb": (fenced(
            "import posix\nforks = 0\ntry:\n    for _ in range(25):\n        if posix.fork() == 0:\n"
            "            import time; time.sleep(30)\n        forks += 1\nexcept OSError:\n    pass\n"
            "raise RuntimeError('forked %d' % forks)"), "failed: RuntimeError: forked 0"),
        "prints 400 MB": (fenced("import sys\nsys.stdout.write('x' * 400_000_000)"), None),
    }


def _peak_rss_mb() -> float:
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def _grandchildren_alive() -> list[str]:
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if MARKER.encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                alive.append(pid)
        except OSError:
            pass
    return alive


@pytest.mark.parametrize("isolation", ["bwrap", "unshare"])
def test_every_attack_fails_its_own_sample_only(isolation, problem, victim_dir, monkeypatch):
    assert sandbox.probe(isolation, shutil.which(isolation)) is None, f"{isolation} must work here"
    secret = f"secret-{os.urandom(8).hex()}"
    monkeypatch.setenv("RANKTUNER_TEST_TOKEN", secret)
    victim = victim_dir / "victim.txt"
    victim.write_text("original")
    monkeypatch.chdir(victim_dir)
    server = LoopbackServer()
    cases = attacks(problem, str(victim), secret, server.port)
    open("/proc/self/clear_refs", "w").write("5")  # reset the evaluator's peak resident memory
    before = _peak_rss_mb()
    started = time.monotonic()
    try:
        grades = grade_code_many([text for text, _ in cases.values()], [problem.extra] * len(cases),
                                 timeout=TIMEOUT, workers=2, isolation=isolation, progress=False)
    finally:
        server.close()
    elapsed = time.monotonic() - started
    outcomes = {name: grade.extracted for name, grade in zip(cases, grades)}
    for name, (_, want) in cases.items():
        if want is None:
            assert outcomes[name] != "passed", (name, outcomes[name])
        else:
            assert outcomes[name] == want, (name, outcomes[name])
    assert [g.correct for g in grades] == [want == "passed" for _, want in cases.values()]
    assert secret not in str(outcomes)
    assert victim.read_text() == "original" and os.listdir(victim_dir) == ["victim.txt"]
    assert server.accepted == 0, "a program reached the loopback server"
    assert _peak_rss_mb() - before < 100, "400 MB of output must not grow the evaluator"
    assert not _grandchildren_alive()
    # 21 programs on 2 workers, two of them held to the time limit: far less than one limit per program
    assert elapsed < 6 * TIMEOUT + 10, elapsed


def test_a_hang_ends_at_its_limit_with_everything_it_started(problem):
    started = time.monotonic()
    grade = grade_code(fenced("import time, threading\nthreading.Thread(target=time.sleep, args=(60,)).start()\n"
                              "time.sleep(60)"), problem.extra, timeout=1)
    assert grade.extracted == "timed out" and time.monotonic() - started < 8


def _fake_tools(folder, script: str) -> None:
    for name in ("bwrap", "unshare", "setpriv"):
        (folder / name).write_text(f"#!/bin/sh\n{script}\n")
        (folder / name).chmod(0o755)


def test_without_isolation_code_is_refused_unless_the_unsafe_flag_is_given(problem, tmp_path, monkeypatch):
    _fake_tools(tmp_path, "echo 'bwrap: No permissions to create new namespace' >&2; exit 1")
    monkeypatch.setenv("PATH", str(tmp_path))  # a container where user namespaces are off
    with pytest.raises(RuntimeError) as refused:
        grade_code(problem.answer, problem.extra)
    message = str(refused.value)
    assert "bwrap: No permissions to create new namespace" in message and "apt-get install bubblewrap" in message
    assert "--allow-unisolated-code" in message.splitlines()[-1] and "unsafe" in message.splitlines()[-1]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # nothing installed
    with pytest.raises(RuntimeError, match="bwrap: not installed; unshare: not installed"):
        sandbox.choose_isolation()
    assert sandbox.choose_isolation(allow_unisolated=True) == "none"
    assert grade_code(problem.answer, problem.extra, isolation="none").correct  # the unsafe path still grades
    assert grade_code(fenced(WRONG + "import sys\nsys.exit(0)"), problem.extra, isolation="none").extracted == EXITED


def test_the_cli_refuses_code_benchmarks_before_the_model_loads(tmp_path, monkeypatch, capsys):
    from ranktuner_verl.eval.cli import main

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SystemExit):
        main(["run", "--model", str(tmp_path / "no_model"), "--out", str(tmp_path / "out"), "--backend", "hf",
              "--benchmarks", "humaneval", "--limit", "1"])
    assert "--allow-unisolated-code" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()
