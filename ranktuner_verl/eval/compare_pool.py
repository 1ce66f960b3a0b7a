"""Answer comparisons under a time limit that can interrupt anything: persistent worker processes, killed and
replaced when one overruns.

An alarm (SIGALRM) cannot interrupt sympy inside C code or a big-integer operation: ``(10^{10^{10}})!`` ran 29-51 s
past a 5 s alarm. Here each comparison runs in a worker process; the caller waits on the answer with the limit and,
past it, kills the worker (SIGKILL always lands) and starts a new one at once. Workers persist between comparisons,
so thousands of comparisons pay the start-up (a fresh Python importing sympy and math-verify, about a second) once
per worker, and only a timeout pays it again.

``ComparisonPool(function, size).run(tasks, timeout)`` yields ``(index, correct, error)`` per task as they finish;
``error`` is ``"timeout after Ns"`` for an overrun, or the exception a comparison raised.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection, wait

READY = "ready"
START_LIMIT_S = 300.0  # a worker that does not start in this time is a broken environment, not a slow answer


def _serve(reader: Connection, writer: Connection) -> None:
    """Worker loop: the first message names the function and its warm-up tasks; then answer ``function(*task)`` as
    ``(correct, error)`` for each task until the pipe closes."""
    reference, warm_up = reader.recv()
    module, name = reference.split(":")
    function = getattr(importlib.import_module(module), name)
    for task in warm_up:  # imports and caches outside any time limit
        function(*task)
    reply = READY
    while True:
        try:
            writer.send(reply)
            task = reader.recv()
        except (EOFError, OSError):  # the evaluator is gone (or dropped this pool)
            return
        try:
            reply = (bool(function(*task)), None)
        except Exception as error:  # noqa: BLE001 - a failed comparison is an outcome, reported to the caller
            reply = (False, f"{type(error).__name__}: {error}"[:500])


# A worker's program. It registers the top package without running its __init__ (which imports torch for the
# training side: seconds and ~200 MB per worker that a comparison never uses), then serves on stdin/stdout; anything
# a comparison prints goes to stderr.
_WORKER_MAIN = f"""
import importlib.util, os, sys, types
package = types.ModuleType("ranktuner_verl")
package.__path__ = importlib.util.find_spec("ranktuner_verl").submodule_search_locations
sys.modules["ranktuner_verl"] = package
from multiprocessing.connection import Connection
from {__name__} import _serve
reader, writer = Connection(os.dup(0), writable=False), Connection(os.dup(1), readable=False)
os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
os.dup2(2, 1)
_serve(reader, writer)
"""


class _Worker:
    """One worker process (``_WORKER_MAIN``), spoken to over its stdin and stdout."""

    def __init__(self, function: Callable, warm_up: Sequence[tuple]):
        self.process = subprocess.Popen([sys.executable, "-c", _WORKER_MAIN], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE)
        # the connections own their descriptors (closed with them, never twice); the Popen file objects are done
        self.writer = Connection(os.dup(self.process.stdin.fileno()), readable=False)
        self.conn = Connection(os.dup(self.process.stdout.fileno()), writable=False)
        self.process.stdin.close()
        self.process.stdout.close()
        self.writer.send((f"{function.__module__}:{function.__qualname__}", tuple(warm_up)))
        self.started = time.monotonic()
        self.ready = False
        self.task: tuple[int, float] | None = None  # (task index, deadline)

    def send(self, task: tuple) -> None:
        self.writer.send(task)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.writer.close()
        self.conn.close()


class ComparisonPool:
    """``size`` worker processes running ``function`` (a module-level function), restarted when killed or dead."""

    def __init__(self, function: Callable, size: int = 1, warm_up: Sequence[tuple] = ()):
        self.function, self.warm_up = function, tuple(warm_up)
        self.workers: list[_Worker] = []
        self.lock = threading.Lock()
        self.resize(size)

    def resize(self, size: int) -> None:
        """Have at least ``size`` workers (started now, in the background)."""
        while len(self.workers) < size:
            self.workers.append(_Worker(self.function, self.warm_up))

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self.workers[self.workers.index(worker)] = _Worker(self.function, self.warm_up)

    def run(self, tasks: Sequence[tuple], timeout: float | None) -> Iterator[tuple[int, bool, str | None]]:
        """``(index, correct, error)`` for each task, in the order they finish (see the module doc)."""
        with self.lock:
            try:
                yield from self._run(tasks, timeout)
            finally:  # a caller that stopped early leaves no comparison running into the next call
                for worker in list(self.workers):
                    if worker.task is not None:
                        self._replace(worker)

    def _run(self, tasks, timeout):
        pending = deque(enumerate(tasks))
        while pending or any(w.task for w in self.workers):
            now = time.monotonic()
            for worker in self.workers:
                if worker.ready and worker.task is None and pending:
                    index, task = pending.popleft()
                    worker.send(task)
                    worker.task = (index, now + timeout if timeout else float("inf"))
            waits = [w.task[1] - now if w.task else w.started + START_LIMIT_S - now
                     for w in self.workers if w.task or not w.ready]
            soonest = max(0.0, min(waits))
            for conn in wait([w.conn for w in self.workers if w.task or not w.ready],
                             None if soonest == float("inf") else soonest):
                worker = next(w for w in self.workers if w.conn is conn)
                try:
                    message = conn.recv()
                except (EOFError, OSError):  # the worker died (killed by the OS, out of memory...)
                    if worker.task is None:
                        raise RuntimeError("a grading worker process died while starting; run "
                                           "`python -c 'import math_verify'` to see why") from None
                    index = worker.task[0]
                    self._replace(worker)
                    yield index, False, "the grading worker process died"
                    continue
                if message == READY:
                    worker.ready = True
                else:
                    index, worker.task = worker.task[0], None
                    yield index, message[0], message[1]
            now = time.monotonic()
            for worker in list(self.workers):
                if worker.task and now >= worker.task[1]:
                    index = worker.task[0]
                    self._replace(worker)
                    yield index, False, f"timeout after {timeout:g}s"
                elif not worker.ready and now >= worker.started + START_LIMIT_S:
                    raise RuntimeError(f"a grading worker process did not start within {START_LIMIT_S:g} s")

