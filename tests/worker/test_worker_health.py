"""A connection that the server ended while the worker was idle is replaced transparently."""
from __future__ import absolute_import

import pytest

from celery_django_fixup.harness.run import summarize

pytestmark = pytest.mark.worker

BATCH = 20


def kill_between_batches(pg_db, start_worker, **kwargs):
    """Run a batch of ``touch``, end every session left on the server, run another batch.

    Returns the sessions that were ended, the second batch's summary and its outcomes on the
    processes whose connection was ended (the only ones that can show anything).
    """
    worker = start_worker(concurrency=2, conn_max_age=600, **kwargs)
    first = worker.run('touch', count=BATCH, timeout=30)
    assert summarize(first)['ok'] == BATCH, (first[:5], worker.log_tail())
    kept = pg_db.backends()
    ended = pg_db.terminate()
    assert sorted(ended) == sorted(kept)
    assert pg_db.wait_for_no_backends(), pg_db.backends()
    pids_ended = set(outcome.pid for outcome in first if outcome.backend in ended)

    second = worker.run('touch', count=BATCH, timeout=30)
    assert worker.stop(timeout=10) == 'stopped', worker.log_tail()
    affected = [outcome for outcome in second
                if outcome.pid in pids_ended or (not outcome.ok and outcome.state != 'TIMEOUT')]
    if ended:
        # Otherwise nothing was tested: no task ran where a connection had been ended.
        assert affected, (pids_ended, second)
    return set(ended), summarize(second), affected


def test_ended_connection_is_replaced_before_the_task_sees_it(pg_db, start_worker):
    ended, summary, affected = kill_between_batches(pg_db, start_worker, mode='fixups')
    assert ended, 'the worker kept no connection after the first batch'
    assert summary['ok'] == BATCH, (summary, [outcome.error for outcome in affected])
    assert not ended & set(outcome.backend for outcome in affected)


def test_without_health_checks_the_next_task_fails(pg_db, start_worker):
    # Shows that the check is what saves the tasks above.
    ended, summary, affected = kill_between_batches(
        pg_db, start_worker, mode='fixups', settings={'CELERY_DB_HEALTH_CHECKS': False})
    assert ended, 'the worker kept no connection after the first batch'
    assert summary['failed'] >= 1, summary
    assert summary['timeout'] == 0, summary


def test_stock_worker_does_what_its_line_does(pg_db, start_worker, line):
    ended, summary, affected = kill_between_batches(pg_db, start_worker, mode='stock')
    if line.reuses:
        # 4.2-4.3 and 4.4.4+ hand the dead connection to the next task.
        assert ended, 'the worker kept no connection after the first batch'
        assert summary['failed'] >= 1, (line, summary)
    else:
        # Celery that closes after every task keeps nothing that could be ended.
        assert not ended, (line, ended)
        assert summary['ok'] == BATCH, (line, summary)
