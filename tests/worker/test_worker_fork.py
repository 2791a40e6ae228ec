"""A prefork child never uses the connection its parent held when it forked."""
from __future__ import absolute_import

import collections

import pytest

from celery_django_fixup.harness.run import summarize

pytestmark = pytest.mark.worker

TASKS = 100


def test_children_do_not_share_the_parents_connection(pg_db, start_worker):
    before = pg_db.sessions()
    worker = start_worker(mode='fixups', concurrency=2, conn_max_age=600, parent_query=True)
    outcomes = worker.run('touch', count=TASKS, timeout=60)
    stopped = worker.stop(timeout=10)
    opened = pg_db.settled_sessions() - before
    summary = summarize(outcomes)
    assert summary['ok'] == TASKS, (summary, outcomes[:5], worker.log_tail())
    assert stopped == 'stopped', (worker.stop_seconds, worker.log_tail())
    pids_per_backend = collections.defaultdict(set)
    for outcome in outcomes:
        pids_per_backend[outcome.backend].add(outcome.pid)
    assert all(len(pids) == 1 for pids in pids_per_backend.values()), dict(pids_per_backend)
    # The parent's own session, then one per child at most.
    assert 2 <= opened <= 3, (opened, dict(pids_per_backend))


def test_stock_children_and_the_inherited_connection(pg_db, start_worker, line):
    """Stock Celery, as each line really behaves: 4.2-4.3 break, the others close after fork."""
    worker = start_worker(mode='stock', concurrency=2, conn_max_age=600, parent_query=True)
    # The patched worker needs well under a second for all of them; a hung child takes no
    # more tasks, so 10 s without any finishing (a loaded machine included) means the rest
    # will not come.
    outcomes = worker.run('touch', count=TASKS, timeout=60, stall=10)
    stopped = worker.stop(timeout=10)
    summary = summarize(outcomes)
    if line.after_fork == 'close_if_unusable_or_obsolete':
        assert summary['failed'] or summary['timeout'] or stopped == 'hung', (summary, stopped)
    else:
        # What the line promises: the inherited connection is closed, no task fails on it.
        # (Stock 5.6.1 has been seen to leave one task unanswered and hang at SIGTERM, twice
        # in about ten runs, with no database error: recorded in the log, not this test's point.)
        assert summary['failed'] == 0, (summary, stopped, worker.log_tail())
