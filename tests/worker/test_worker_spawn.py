"""Pool processes spawned rather than forked (``worker_pool_start_method = 'spawn'``).

A spawned pool process is a new interpreter: it unpickles the app, imports the task modules
and is sent ``worker_process_init``, never ``worker_init``. Celery installs its worker fix-up
from ``worker_init`` only, so in such a process no worker fix-up handles the connections at
all: stock keeps every connection whatever happens to its task. The patched fix-up installs
itself there, and the rules are the same as in a forked pool process.
"""
from __future__ import absolute_import

import pytest

from celery_django_fixup import versions

pytestmark = [
    pytest.mark.worker,
    pytest.mark.skipif(not versions.pool_start_method_setting(),
                       reason='worker_pool_start_method is Celery 5.7+'),
]

SPAWN = ['--pool-start-method', 'spawn']
SEQUENCE = ['touch', 'touch', 'fail', 'touch', 'atomic_error', 'touch']


def run_sequence(worker):
    process = worker.run('process', timeout=60)[0]
    assert process.ok and process.result['start_method'] == 'spawn', (process,
                                                                      worker.log_tail())
    steps = []
    for task in SEQUENCE:
        outcome = worker.run(task, timeout=60)[0]
        assert outcome.state != 'TIMEOUT', (task, worker.log_tail())
        steps.append(outcome)
    return steps


def test_spawned_pool_process_reuses_safely(pg_db, start_worker):
    worker = start_worker(mode='fixups', concurrency=1, conn_max_age=600, args=SPAWN)
    steps = run_sequence(worker)
    assert worker.stop(timeout=15) == 'stopped', worker.log_tail()
    touch, again, fail, after_fail, atomic_error, after_atomic = steps
    context = (steps, worker.log_tail())
    assert [step.ok for step in steps] == [True, True, False, True, False, True], context
    assert touch.backend == again.backend == fail.backend, context
    assert after_fail.backend != fail.backend, context
    assert atomic_error.backend == after_fail.backend, context
    assert after_atomic.backend != atomic_error.backend, context


def test_spawned_pool_process_stock(pg_db, start_worker):
    worker = start_worker(mode='stock', concurrency=1, conn_max_age=600, args=SPAWN)
    steps = run_sequence(worker)
    worker.stop(timeout=15)
    touch, again, fail, after_fail = steps[:4]
    context = (steps, worker.log_tail())
    assert touch.backend == again.backend, context
    # No worker fix-up in the pool process: the failed task's connection goes on.
    assert fail.backend == after_fail.backend, context
