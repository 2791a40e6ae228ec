"""Scenario 2: the server ends the worker's sessions between tasks.

An administrator or a failover ends every session on the database between two batches of
tasks (``pg_terminate_backend``; MariaDB ``KILL``), twice. A worker that keeps connections
must notice before a task uses a dead one: after each kill, no task may fail and none may
report a session that was ended.

Runs on PostgreSQL with Redis, on PostgreSQL with RabbitMQ (the broker must not matter), and
on MariaDB. Sessions are counted by the server: ``pg_stat_database.sessions`` on PostgreSQL,
the distinct ``CONNECTION_ID()`` the tasks report on MariaDB (whose counter is server-wide).

Stock Celery: 4.2-4.3 and 4.4.4+ hand the dead connection to the next task on each process
that held one (a failed task per process and kill); 4.0-4.1 and 4.4.0-4.4.3 keep nothing
between tasks, so nothing can be ended, at the price of one session per task.

Which process takes a task is not left to chance: each batch begins and ends with a task on
every pool process (``Worker.run_batch``), so every process holds a connection when the
sessions are ended, and every process's next task is the one that meets the ended session.
"""
from __future__ import absolute_import

import os

import pytest

from celery_django_fixup.harness import run
from celery_django_fixup.harness.run import summarize

pytestmark = pytest.mark.faults

BATCH = 10
KILLS = 2
CONCURRENCY = 2
AMQP_URL = os.environ.get('CDF_TEST_AMQP_URL', run.DEFAULT_AMQP)


@pytest.fixture(scope='session')
def amqp_broker(broker, missing):
    """RabbitMQ as the broker, results where the other tests keep theirs."""
    amqp = run.Broker.amqp(AMQP_URL, result_backend=broker.result_backend)
    try:
        amqp.check()
    except Exception as exc:  # noqa: B902 -- whatever the transport raises
        missing('RabbitMQ {0} unreachable: {1!r}'.format(AMQP_URL, exc))
    return amqp


@pytest.fixture(params=['postgresql-redis', 'postgresql-amqp', 'mysql-redis'])
def target(request):
    """``(vendor, scratch database, broker name, broker)``."""
    vendor, broker_name = request.param.split('-')
    db = request.getfixturevalue('pg_db' if vendor == 'postgresql' else 'mariadb_db')
    broker = request.getfixturevalue('amqp_broker' if broker_name == 'amqp' else 'broker')
    return vendor, db, broker_name, broker


def test_backend_killed_between_tasks(variant, target, start_worker, line, record, explain):
    vendor, db, broker_name, broker = target
    before = db.sessions() if vendor == 'postgresql' else None
    worker = start_worker(variant, url=db.url, concurrency=CONCURRENCY, conn_max_age=600,
                          broker=broker, fair=True)
    keeps = variant == 'patched' or line.reuses
    first = worker.run_batch('probe', BATCH, timeout=60, stall=10)
    assert summarize(first)['ok'] == BATCH, (first[:3], worker.log_tail())

    ended, after, firsts, reused_dead = [], [], [], set()
    for _ in range(KILLS):
        # What the worker keeps between tasks, once the closes at the end of its last tasks
        # have shown on the server: a connection per process, or none.
        kept = db.wait_for_backends(CONCURRENCY if keeps else 0)
        killed = db.terminate()
        assert sorted(killed) == sorted(kept)
        assert db.wait_for_no_backends(), db.backends()
        ended.extend(killed)
        batch = worker.run_batch('probe', BATCH, timeout=60, stall=10)
        after.extend(batch)
        # The first task of every process after the kill.
        firsts.extend(batch[:CONCURRENCY])
        # A task that reports a session ended before it was sent ran on a dead connection.
        reused_dead.update(set(ended) & set(outcome.backend for outcome in batch if outcome.ok))
    stopped = worker.stop(timeout=10)

    summary = summarize(after)
    reported = set(outcome.backend for outcome in first + after if outcome.ok)
    if vendor == 'postgresql':
        sessions = db.settled_sessions() - before
    else:
        sessions = len(reported)
    facts = record('killed', variant, database=vendor, broker=broker_name, kills=KILLS,
                   killed=len(ended), ok=summary['ok'], failed=summary['failed'],
                   timeout=summary['timeout'], sessions=sessions, hung=stopped == 'hung')
    context = explain(facts, after, worker)
    assert stopped == 'stopped', context
    assert summary['timeout'] == 0, context
    # Each batch began with a task on every process.
    for index in range(0, len(firsts), CONCURRENCY):
        pids = set(outcome.pid for outcome in firsts[index:index + CONCURRENCY])
        assert len(pids) == CONCURRENCY and None not in pids, context

    if keeps:
        # The worker kept a connection per process between tasks, and each was ended.
        assert len(ended) == CONCURRENCY * KILLS, context
    else:
        assert ended == [], context
    if variant == 'patched':
        assert summary['ok'] == BATCH * KILLS, context
        assert not reused_dead, context
        # One session per process, and one more per process and kill at most.
        assert sessions <= CONCURRENCY * (KILLS + 1), context
        if vendor == 'postgresql':
            assert sessions == len(reported), context
    elif line.reuses:
        # The dead connection goes to the next task on each process: that task fails, and
        # the next one reconnects.
        assert all(not outcome.ok for outcome in firsts), context
        assert summary['failed'] == CONCURRENCY * KILLS, context
    else:
        # Nothing kept, nothing to kill: a new session for every task instead.
        assert summary['ok'] == BATCH * KILLS, context
        assert sessions >= BATCH * (KILLS + 1), context
