"""Connections are reused across tasks as CONN_MAX_AGE says, counted by the server."""
from __future__ import absolute_import

import pytest

from celery_django_fixup.harness.run import summarize

pytestmark = pytest.mark.worker

TASKS = 100


def run_touches(pg_db, start_worker, **kwargs):
    """Run TASKS ``touch`` tasks on a fresh worker; return (summary, backend ids reported,
    sessions the server counted from the worker's start to its stop)."""
    before = pg_db.sessions()
    worker = start_worker(**kwargs)
    outcomes = worker.run('touch', count=TASKS, timeout=60)
    stopped = worker.stop(timeout=10)
    opened = pg_db.settled_sessions() - before
    summary = summarize(outcomes)
    assert summary['ok'] == TASKS, (summary, outcomes[:5], worker.log_tail())
    assert stopped == 'stopped', worker.log_tail()
    backends = set(outcome.backend for outcome in outcomes)
    # The server and the tasks' own reports must agree, or the count measures something else.
    assert opened == len(backends), (opened, backends)
    return summary, backends, opened


@pytest.mark.parametrize('mode', ['import', 'fixups'])
def test_prefork_keeps_one_connection_per_child(mode, pg_db, start_worker):
    summary, backends, opened = run_touches(pg_db, start_worker, mode=mode, concurrency=2,
                                            conn_max_age=600)
    assert 1 <= opened <= 2, (opened, summary)


def test_conn_max_age_zero_still_closes_after_every_task(pg_db, start_worker):
    summary, backends, opened = run_touches(pg_db, start_worker, mode='fixups', concurrency=2,
                                            conn_max_age=0)
    assert opened >= TASKS, (opened, summary)


def test_solo_pool_keeps_one_connection(pg_db, start_worker):
    summary, backends, opened = run_touches(pg_db, start_worker, mode='fixups', pool='solo',
                                            concurrency=1, conn_max_age=600)
    assert opened == 1, (opened, summary)


def test_stock_worker_does_what_its_line_does(pg_db, start_worker, line):
    summary, backends, opened = run_touches(pg_db, start_worker, mode='stock', concurrency=2,
                                            conn_max_age=600)
    if line.reuses:
        assert 1 <= opened <= 2, (line, opened, summary)
    else:
        # Celery 4.0-4.1 and 4.4.0-4.4.3 ignore CONN_MAX_AGE: one session per task.
        assert opened >= TASKS, (line, opened, summary)
