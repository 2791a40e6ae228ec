"""Scenario 4: the server ends sessions that stay idle longer than the gap between tasks.

The worker's sessions get a 1 s idle timeout of their own, set per session so that nothing
changes for other users of the shared servers: PostgreSQL's ``idle_session_timeout`` through
libpq's ``options``, MariaDB's ``wait_timeout`` through an ``init_command``. Between batches
of tasks the worker stays idle for longer than that, and the server is seen to have ended
every session the worker kept. No task may fail after such a gap.

Stock Celery: 4.2-4.3 and 4.4.4+ hand the timed-out connection to the next task on each
process that held one; 4.0-4.1 and 4.4.0-4.4.3 open a session per task, which no timeout
can catch idle.

Each batch begins and ends with a task on every pool process (``Worker.run_batch``): every
process holds a connection through each gap, and its next task is the one that meets it.
"""
from __future__ import absolute_import

import time

import pytest

from celery_django_fixup.harness.run import summarize

try:
    from urllib.parse import quote
except ImportError:  # Python 2
    from urllib import quote

pytestmark = pytest.mark.faults

BATCH = 10
GAPS = 2
CONCURRENCY = 2
#: The servers' idle timeout, in seconds, and the gap between batches: longer than it. The
#: sessions a worker keeps are read before they time out, right after the batch: 2 s leave
#: room for a loaded machine.
IDLE_TIMEOUT = 2
GAP = IDLE_TIMEOUT + 0.5

#: The per-session setting, as a query parameter of the database URL (see cdf_demo.dburl).
SESSION_TIMEOUT = {
    'postgresql': 'options=' + quote('-c idle_session_timeout={0}'.format(IDLE_TIMEOUT * 1000)),
    'mysql': 'init_command=' + quote('SET SESSION wait_timeout={0}'.format(IDLE_TIMEOUT)),
}


@pytest.fixture(params=['postgresql', 'mysql'])
def database(request):
    return request.param, request.getfixturevalue(
        'pg_db' if request.param == 'postgresql' else 'mariadb_db')


def test_idle_timeout_between_tasks(variant, database, start_worker, line, record, explain):
    vendor, db = database
    before = db.sessions() if vendor == 'postgresql' else None
    worker = start_worker(variant, url=db.url + '?' + SESSION_TIMEOUT[vendor],
                          concurrency=CONCURRENCY, conn_max_age=600, fair=True)
    keeps = variant == 'patched' or line.reuses
    first = worker.run_batch('probe', BATCH, timeout=60, stall=10)
    assert summarize(first)['ok'] == BATCH, (first[:3], worker.log_tail())

    timed_out, after, firsts, reused_dead = [], [], [], set()
    for _ in range(GAPS):
        started = time.time()
        # What the worker keeps: a connection per process, or none once its closes show.
        kept = db.wait_for_backends(CONCURRENCY if keeps else 0)
        time.sleep(max(0.0, GAP - (time.time() - started)))
        # The server, not the test, ended them: the setting works, the worker was idle.
        assert db.wait_for_no_backends(timeout=5), (kept, db.backends())
        timed_out.extend(kept)
        batch = worker.run_batch('probe', BATCH, timeout=60, stall=10)
        after.extend(batch)
        # The first task of every process after the gap.
        firsts.extend(batch[:CONCURRENCY])
        reused_dead.update(set(timed_out) & set(outcome.backend for outcome in batch
                                                if outcome.ok))
    stopped = worker.stop(timeout=10)

    summary = summarize(after)
    reported = set(outcome.backend for outcome in first + after if outcome.ok)
    sessions = db.settled_sessions() - before if vendor == 'postgresql' else len(reported)
    facts = record('idle_timeout', variant, database=vendor, gaps=GAPS, gap_seconds=GAP,
                   idle_timeout=IDLE_TIMEOUT, timed_out=len(timed_out), ok=summary['ok'],
                   failed=summary['failed'], timeout=summary['timeout'], sessions=sessions,
                   hung=stopped == 'hung')
    context = explain(facts, after, worker)
    assert stopped == 'stopped', context
    assert summary['timeout'] == 0, context
    # Each batch began with a task on every process.
    for index in range(0, len(firsts), CONCURRENCY):
        pids = set(outcome.pid for outcome in firsts[index:index + CONCURRENCY])
        assert len(pids) == CONCURRENCY and None not in pids, context

    if keeps:
        # Every process kept its session across each gap, and the server timed it out.
        assert len(timed_out) == CONCURRENCY * GAPS, context
    else:
        assert timed_out == [], context
    if variant == 'patched':
        assert summary['ok'] == BATCH * GAPS, context
        assert not reused_dead, context
        assert sessions <= CONCURRENCY * (GAPS + 1), context
    elif line.reuses:
        # The timed-out connection goes to the next task on each process.
        assert all(not outcome.ok for outcome in firsts), context
        assert summary['failed'] == CONCURRENCY * GAPS, context
    else:
        assert summary['ok'] == BATCH * GAPS, context
        assert sessions >= BATCH * (GAPS + 1), context
