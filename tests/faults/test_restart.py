"""Scenario 3: the database server restarts while the worker runs.

On a throwaway PostgreSQL server of the test's own (``PgCluster``; the shared server is never
restarted), one worker goes through:

1. a clean restart (``fast``: sessions are ended, the server shuts down and comes back) and a
   crash (``immediate``: recovery at start) between two tasks of a stream;
2. an outage: the server is down while tasks keep arriving (those fail on every fix-up: no
   query can run on a server that is not there), then it comes back.

Once the server is back, no task may fail, and the worker must carry on with the same
processes (nobody restarts it). A task that reports a session of the server before the
restart ran on a dead connection.

Stock Celery: 4.2-4.3 and 4.4.4+ hand the dead connection to the next task on each process
that held one; 4.0-4.1 and 4.4.0-4.4.3 keep nothing between tasks.

Each batch around a restart begins and ends with a task on every pool process
(``Worker.run_batch``): every process holds a connection when the server goes, and its next
task is the one that meets the dead connection.
"""
from __future__ import absolute_import

import time

import pytest

from celery_django_fixup.harness import dbstats, run
from celery_django_fixup.harness.run import summarize

pytestmark = pytest.mark.faults

BATCH = 10
DOWN_TASKS = 4
CONCURRENCY = 2
RESTARTS = ('fast', 'immediate')


@pytest.fixture(scope='module')
def cluster(missing):
    """A PostgreSQL server of this module's own, that its tests restart at will."""
    from celery_django_fixup.harness.pgcluster import PgCluster
    reason = PgCluster.why_unavailable()
    if reason:
        missing(reason)
    with PgCluster() as pg:
        yield pg


@pytest.fixture
def cluster_db(cluster):
    """A new database with the demo table on the private server, and its name."""
    name = dbstats.scratch_name('cdf_restart')
    cluster.create_database(name)
    url = cluster.url(name)
    run.prepare_database(url)
    return name, url


def open_sessions(cluster, name):
    # A short connection to another database each time: it survives restarts and is never
    # counted on the worker's database.
    return [row[0] for row in cluster.fetchall(
        'SELECT pid FROM pg_stat_activity WHERE datname = %s ORDER BY pid', (name,))]


def kept_sessions(cluster, name, count, timeout=10.0):
    """The sessions open on ``name`` once there are ``count`` of them (or after ``timeout``):
    the closes at the end of the worker's last tasks show on the server a moment later."""
    deadline = time.time() + timeout
    while True:
        sessions = open_sessions(cluster, name)
        if len(sessions) == count or time.time() > deadline:
            return sessions
        time.sleep(0.05)


def test_server_restart(variant, cluster, cluster_db, start_worker, line, record, explain):
    name, url = cluster_db
    worker = start_worker(variant, url=url, concurrency=CONCURRENCY, conn_max_age=600,
                          fair=True)
    keeps = variant == 'patched' or line.reuses
    processes = worker.processes()
    first = worker.run_batch('probe', BATCH, timeout=60, stall=10)
    assert summarize(first)['ok'] == BATCH, (first[:3], worker.log_tail())

    # 1. Restarts between two tasks of the stream.
    after, firsts, reused_dead, dead, held = [], [], set(), set(), []
    seconds = {}
    for mode in RESTARTS:
        # What the worker keeps: a connection per process, or none once its closes show.
        kept = kept_sessions(cluster, name, CONCURRENCY if keeps else 0)
        started = time.time()
        cluster.restart(mode)
        seconds[mode] = round(time.time() - started, 3)
        dead.update(kept)
        held.append(len(kept))
        batch = worker.run_batch('probe', BATCH, timeout=60, stall=10)
        after.extend(batch)
        # The first task of every process after the restart.
        firsts.extend(batch[:CONCURRENCY])
        reused_dead.update(dead & set(outcome.backend for outcome in batch if outcome.ok))

    # 2. An outage with tasks arriving, then the server back.
    cluster.stop('fast')
    try:
        down = worker.run('touch', count=DOWN_TASKS, timeout=30, stall=10)
    finally:
        cluster.start()
    back = worker.run('touch', count=BATCH, timeout=30, stall=10)
    still = worker.processes()
    stopped = worker.stop(timeout=10)

    summary = summarize(after)
    down_summary = summarize(down)
    back_summary = summarize(back)
    # Sessions are the distinct server ids the tasks reported: a crash resets the counters.
    reported = set(outcome.backend for outcome in first + after + back if outcome.ok)
    facts = record('restart', variant, database='postgresql', restarts=len(RESTARTS),
                   restart_seconds=seconds, ok=summary['ok'] + back_summary['ok'],
                   failed=summary['failed'] + back_summary['failed'],
                   timeout=summary['timeout'] + back_summary['timeout'],
                   failed_while_down=down_summary['failed'], sessions=len(reported),
                   worker_restarted=still != processes, hung=stopped == 'hung')
    context = explain(facts, after + back, worker)

    # Every fix-up: tasks run while the server is down fail (and do not hang), and the worker
    # goes on with the processes it had.
    assert down_summary['failed'] == DOWN_TASKS, context
    assert still == processes, context
    assert stopped == 'stopped', context
    assert summary['timeout'] == 0 and back_summary['timeout'] == 0, context

    # Each batch began with a task on every process.
    for index in range(0, len(firsts), CONCURRENCY):
        pids = set(outcome.pid for outcome in firsts[index:index + CONCURRENCY])
        assert len(pids) == CONCURRENCY and None not in pids, context
    if keeps:
        # Every process held a connection when the server went.
        assert held == [CONCURRENCY] * len(RESTARTS), (held, context)
    else:
        assert held == [0] * len(RESTARTS), (held, context)
    if variant == 'patched':
        assert summary['ok'] == BATCH * len(RESTARTS), context
        assert back_summary['ok'] == BATCH, context
        assert not reused_dead, context
    elif line.reuses:
        # The dead connection goes to the next task on each process: that task fails, and
        # the next one reconnects.
        assert all(not outcome.ok for outcome in firsts), context
        assert summary['failed'] == CONCURRENCY * len(RESTARTS), context
    else:
        assert summary['ok'] == BATCH * len(RESTARTS), context
        assert back_summary['ok'] == BATCH, context
