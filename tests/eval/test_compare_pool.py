"""The comparison workers: a limit that ends any comparison, a dead worker replaced, errors reported (issue 17 §1)."""

from __future__ import annotations

import operator
import os
import time

from ranktuner_verl.eval.compare_pool import ComparisonPool


def results(pool, tasks, timeout=None):
    return sorted(pool.run(tasks, timeout))


def test_answers_errors_and_order():
    pool = ComparisonPool(operator.truediv, size=2)
    assert results(pool, [(1, 1), (0, 2), (1, 0)]) == [
        (0, True, None), (1, False, None), (2, False, "ZeroDivisionError: division by zero")]


def test_an_overrun_is_killed_at_its_limit_and_the_pool_goes_on():
    pool = ComparisonPool(time.sleep, size=1)
    assert results(pool, [(0,)]) == [(0, False, None)]  # started and ready
    started = time.monotonic()
    assert results(pool, [(30,)], timeout=0.5) == [(0, False, "timeout after 0.5s")]
    assert time.monotonic() - started < 2.0
    assert results(pool, [(0,), (0,)], timeout=30) == [(0, False, None), (1, False, None)]


def test_a_worker_that_dies_fails_its_task_only():
    pool = ComparisonPool(os._exit, size=1)
    assert results(pool, [(3,)]) == [(0, False, "the grading worker process died")]
    sleeper = ComparisonPool(time.sleep, size=1)
    first = sleeper.run([(0,), (5,)], timeout=30)
    assert next(first) == (0, False, None)
    first.close()  # a caller that stops early: the running comparison is ended, its late reply never read
    assert results(sleeper, [(0,)], timeout=30) == [(0, False, None)]
