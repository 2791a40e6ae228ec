"""Scenario 10: a task catches the soft time limit's exception raised during a query, and
returns normally (``SUCCESS``).

PyMySQL is pure Python: the exception lands while it reads the reply, and the rest of the reply
stays on the socket, to be read by the next query on that connection (stale results, "Packet
sequence number wrong", "Command Out of Sync"), or to make Django's ``is_usable()`` reconnect
inside the driver (see scenario 9). psycopg2 blocks in C: the exception comes once the query is
over. psycopg 3 (Django 4.2+ when installed) waits in Python: the exception leaves the query
running on the session.

One process (``-c 1``), ``CONN_MAX_AGE=600``: a ``token`` task, then ``SLEEP(3)`` /
``pg_sleep(3)`` under a 1 s soft limit, caught by the task, then 50 ``token`` tasks, each of
which selects a value of its own and checks it gets it back. Patched: none fails, none reads
another's value, the interrupted task's session is not reused, and every session the tasks
report was opened by Django (``connection_created``, counted in the worker; on MariaDB with
Django 2.0+ each runs at the isolation level Django sets).
"""
from __future__ import absolute_import

import pytest

from celery_django_fixup.harness.run import TIMEOUT
from policyhelpers import (connections_created, failed, mysql_databases, not_set_up,
                           send_tokens, set_up_by_django, stale, timed_out, case_name,
                           not_set_up_count, postgresql_driver)

pytestmark = pytest.mark.faults

AFTER = 50


@pytest.fixture(params=['mysql', 'postgresql'])
def database(request):
    """``(vendor, scratch database)``."""
    return request.param, request.getfixturevalue(
        'mariadb_db' if request.param == 'mysql' else 'pg_db')


def test_caught_soft_time_limit(database, start_worker, variant, line, record, explain, tmpdir):
    vendor, db = database
    created_file = str(tmpdir.join('connections'))
    worker = start_worker(variant, url=db.url, concurrency=1, conn_max_age=600,
                          databases=mysql_databases() if vendor == 'mysql' else None,
                          env={'CDF_CONNECTIONS_FILE': created_file})
    first = send_tokens(worker, 1)
    assert first[0][1].ok, (first, worker.log_tail())
    caught = worker.run('caught_slow_query', kwargs={'seconds': 3}, timeout=60)[0]
    after = send_tokens(worker, AFTER, timeout=120)
    stopped = worker.stop(timeout=10)

    everything = first + after
    reported = set(outcome.backend for _, outcome in everything if outcome.ok)
    reported.add(caught.backend)
    created = connections_created(created_file, vendor, worker)
    next_one = after[0][1]
    reused = int(next_one.backend == caught.backend)
    facts = record('caught_interrupt', variant, case=case_name(vendor), tasks=len(everything) + 1,
                   failed=len(failed(after)), timeout=len(timed_out(after)),
                   stale=len(stale(after)), reused_interrupted=reused, sessions=len(reported),
                   not_set_up=not_set_up_count(everything, vendor, created, reported),
                   hung=stopped == 'hung')
    context = explain(facts, [outcome for _, outcome in after], worker)
    context += '\ncaught: {0!r}; created by Django: {1}; reported: {2}; stale: {3}'.format(
        caught, created, sorted(reported, key=str), stale(after)[:3])

    assert stopped == 'stopped', context
    assert caught.ok and caught.result['caught'], context
    if variant == 'patched' or line.reuses:
        assert caught.backend == first[0][1].backend, context
    assert not timed_out(after), context
    if variant == 'patched' or not line.reuses:
        assert not failed(after), context
        assert not stale(after), context
        assert not reused, context
        assert not not_set_up(everything, vendor), context
        assert set_up_by_django(created, reported, vendor), context
        if variant == 'patched':
            # One session before the interruption, one after.
            assert len(reported) == 2, context
    elif vendor == 'mysql':
        # Stock Celery that reuses connections hands the interrupted session on: the next task
        # fails on the packets left on it (or reads them); Django's is_usable() then lets
        # PyMySQL reconnect in place (measured on 4.3: 49 of 50 tasks at REPEATABLE-READ).
        assert failed(after) or stale(after), context
    elif postgresql_driver() == 'psycopg2':
        # psycopg2 finished the query before the exception: the session is reused, unharmed.
        assert reused, context
        assert not failed(after) and not stale(after), context
    else:
        # psycopg 3 leaves the interrupted query running on the session it hands on: the next
        # task fails on it ("another command is already in progress").
        assert failed(after), context
