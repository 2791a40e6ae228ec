"""Scenario 8: soak. 10,000 tasks on a prefork ``-c 2`` worker (``CONN_MAX_AGE=600``), with
every session of the worker ended by ``pg_terminate_backend`` after each 500 of them.

Patched: no task lost or failed; the server counts at most ``concurrency x (kills + 1)`` sessions
(plus a small constant); the worker's memory (all its processes) grows by less than 5% between
the end of the warm-up (the first 1,000 tasks) and the end. Stock Celery, as its line behaves:
the lines that reuse hand the dead connection to the next task of each process (one failed task
per process and kill), the lines that close open a session per task (and hold none to kill).

Long (about a minute per variant): marked ``soak`` as well as ``faults``; ``-m "not soak"``
leaves it out. ``CDF_SOAK_TASKS`` runs fewer tasks for a quick look (the assertions still hold).
"""
from __future__ import absolute_import

import os
import time

import pytest

from celery_django_fixup.harness import run

pytestmark = [pytest.mark.faults, pytest.mark.soak]

TASKS = int(os.environ.get('CDF_SOAK_TASKS') or 10000)
KILL_EVERY = 500
WARMUP = 1000
CONCURRENCY = 2
#: Sessions the patched worker may open beyond one per process and kill.
SLACK = 3
MAX_RSS_GROWTH = 0.05


def test_soak_with_backend_kills(pg_db, start_worker, variant, line, record):
    before = pg_db.sessions()
    worker = start_worker(variant, concurrency=CONCURRENCY, conn_max_age=600, fair=True)
    keeps = variant == 'patched' or line.reuses
    started = time.time()
    outcomes = []
    kills = 0
    rss_warm = None
    while len(outcomes) < TASKS:
        count = max(min(KILL_EVERY, TASKS - len(outcomes)), 2 * CONCURRENCY)
        # Each batch begins and ends with a task on every process: each holds a connection
        # when the sessions are ended, and its next task is the one that meets the ended one.
        batch = worker.run_batch('probe', count, timeout=120, stall=30)
        outcomes.extend(batch)
        assert all(outcome.state != run.TIMEOUT for outcome in batch), (
            'tasks lost or stuck', run.summarize(batch), worker.log_tail())
        if rss_warm is None and len(outcomes) >= min(WARMUP, TASKS):
            rss_warm = worker.rss_kb()
        if len(outcomes) < TASKS:
            # Between batches the worker is idle: every session it holds dies while unused
            # (read once the closes at the end of the last tasks have shown on the server).
            kept = pg_db.wait_for_backends(CONCURRENCY if keeps else 0)
            if kept and pg_db.terminate(kept):
                kills += 1
                # pg_terminate_backend only signals the sessions: the batch that follows must
                # find them ended, not ending (as in test_killed).
                assert pg_db.wait_for_no_backends(), pg_db.backends()
    seconds = time.time() - started
    rss_end = worker.rss_kb()
    stopped = worker.stop(timeout=10)
    opened = pg_db.settled_sessions() - before
    summary = run.summarize(outcomes)
    growth = (rss_end - rss_warm) / float(rss_warm)
    record('soak', variant, tasks=TASKS, failed=summary['failed'], timeout=summary['timeout'],
           sessions=opened, kills=kills, rss_warm_kb=rss_warm, rss_end_kb=rss_end,
           rss_growth=round(growth, 4), seconds=round(seconds, 1), hung=stopped == 'hung')

    assert stopped == 'stopped', (worker.stop_seconds, worker.log_tail())
    assert summary['timeout'] == 0, summary
    # Lines that close every connection after every task leave nothing to kill.
    assert kills == ((TASKS - 1) // KILL_EVERY if keeps else 0), kills
    if variant == 'patched':
        failures = [outcome for outcome in outcomes if not outcome.ok]
        assert summary['failed'] == 0, (summary, failures[:5])
        assert opened <= CONCURRENCY * (kills + 1) + SLACK, (opened, kills)
        assert growth < MAX_RSS_GROWTH, (rss_warm, rss_end)
    elif line.reuses:
        # Each kill fails the next task of each process.
        assert summary['failed'] == CONCURRENCY * kills, (summary, kills)
    else:
        assert summary['failed'] == 0, summary
        assert opened >= TASKS, opened
