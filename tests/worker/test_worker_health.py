"""A connection that the server ended while the worker was idle is replaced transparently."""
from __future__ import absolute_import

import pytest

from celery_django_fixup.harness.run import summarize

pytestmark = pytest.mark.worker

BATCH = 20


def kill_between_batches(pg_db, start_worker, keeps=True, **kwargs):
    """Run a batch of tasks, end every session left on the server, run another batch.

    Each batch begins and ends with a task on every pool process (``Worker.run_batch``), so
    every process holds a connection when the sessions are ended (if the worker ``keeps``
    them at all), and its next task is the one that meets the ended session. Returns the
    sessions that were ended, the second batch's summary and the first task of every process
    after the kill.
    """
    worker = start_worker(concurrency=2, conn_max_age=600, fair=True, **kwargs)
    first = worker.run_batch('probe', BATCH, timeout=60)
    assert summarize(first)['ok'] == BATCH, (first[:5], worker.log_tail())
    # Read once the closes at the end of the last tasks have shown on the server.
    kept = pg_db.wait_for_backends(2 if keeps else 0)
    ended = pg_db.terminate()
    assert sorted(ended) == sorted(kept)
    assert pg_db.wait_for_no_backends(), pg_db.backends()

    second = worker.run_batch('probe', BATCH, timeout=60)
    assert worker.stop(timeout=10) == 'stopped', worker.log_tail()
    affected = second[:2]
    assert len(set(outcome.pid for outcome in affected)) == 2, affected
    if keeps:
        # Every process held a connection, and each was ended.
        assert len(ended) == 2, (kept, ended)
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
    # The first task of each process after the kill fails.
    assert all(not outcome.ok for outcome in affected), affected
    assert summary['failed'] >= len(affected), summary
    assert summary['timeout'] == 0, summary


def test_stock_worker_does_what_its_line_does(pg_db, start_worker, line):
    ended, summary, affected = kill_between_batches(pg_db, start_worker, keeps=line.reuses,
                                                    mode='stock')
    if line.reuses:
        # 4.2-4.3 and 4.4.4+ hand the dead connection to the next task of each process.
        assert ended, 'the worker kept no connection after the first batch'
        assert all(not outcome.ok for outcome in affected), (line, affected)
        assert summary['failed'] == len(affected), (line, summary)
    else:
        # Celery that closes after every task keeps nothing that could be ended.
        assert not ended, (line, ended)
        assert summary['ok'] == BATCH, (line, summary)
