"""A connection used by a task that did not succeed, or left in a transaction, is not kept."""
from __future__ import absolute_import

import pytest

pytestmark = pytest.mark.worker

#: Tasks after which the connection must not be handed to the next task.
UNSAFE = ['fail', 'atomic_error', 'autocommit_off', 'slow_query']


def run_sequence(worker, unsafe=UNSAFE):
    """``touch``, then each unsafe task followed by a ``touch``; one task at a time (one pool
    process: the task after an unsafe one is the next task of its process)."""
    steps = []
    for task in ['touch', 'touch'] + [name for task in unsafe for name in (task, 'touch')]:
        outcome = worker.run(task, timeout=30)[0]
        assert outcome.state != 'TIMEOUT', (task, worker.log_tail())
        steps.append(outcome)
    return steps


def test_failed_task_connection_is_replaced(pg_db, start_worker):
    before = pg_db.sessions()
    worker = start_worker(mode='fixups', concurrency=1, conn_max_age=600)
    steps = run_sequence(worker)
    assert worker.stop(timeout=10) == 'stopped', worker.log_tail()
    opened = pg_db.settled_sessions() - before

    first, second = steps[0], steps[1]
    assert first.ok and second.ok, steps
    assert first.backend == second.backend, 'a successful task\'s connection is kept'
    previous = second
    for unsafe, after in zip(steps[2::2], steps[3::2]):
        assert unsafe.backend == previous.backend, (unsafe, previous)
        assert after.ok, (unsafe, after)
        assert after.backend != unsafe.backend, (unsafe, after)
        previous = after
    assert opened == 1 + len(UNSAFE), (opened, steps)


def test_stock_worker_does_what_its_line_does(pg_db, start_worker, line):
    worker = start_worker(mode='stock', concurrency=1, conn_max_age=600)
    # Only what is checked: a stock process that an unsafe task leaves stuck is no concern here.
    steps = run_sequence(worker, unsafe=['fail'])
    worker.stop(timeout=10)
    touch, again, fail, after_fail = steps[:4]
    if line.reuses:
        assert touch.backend == again.backend, steps
        # The bug: the failed task's connection goes on to the next task.
        assert fail.backend == after_fail.backend, steps
    else:
        assert touch.backend != again.backend, steps
        assert fail.backend != after_fail.backend, steps
