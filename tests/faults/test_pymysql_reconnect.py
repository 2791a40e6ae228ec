"""Scenario 9: MariaDB ends the worker's session while it is idle, and the worker's driver is
PyMySQL.

Django's MySQL ``is_usable()`` is ``connection.ping()``, and PyMySQL's ``ping()`` reconnects in
place by default: a check that goes through it revives the session inside the driver, and
Django's ``connect()`` never runs: no ``init_connection_state`` (the transaction isolation level
Django 2.0+ sets, here ``OPTIONS['isolation_level'] = 'read committed'``), no
``connection_created``, no new ``CONN_MAX_AGE`` deadline.

One process (``-c 1``), ``CONN_MAX_AGE=600``; ``KILL`` of the worker's session between tasks,
twice, each followed by a few ``token`` tasks (each selects a value of its own, the session's
id and ``@@tx_isolation``). Patched: no task fails, every session the tasks report was opened
by Django (``connection_created``, counted in the worker), each runs at ``READ-COMMITTED`` on
Django 2.0+, and the worker logs the reconnect.
"""
from __future__ import absolute_import

import time

import pytest

from policyhelpers import (connections_created, failed, mysql_databases, not_set_up,
                           send_tokens, set_up_by_django, stale, timed_out, case_name,
                           not_set_up_count)

pytestmark = pytest.mark.faults

KILLS = 2
AFTER_KILL = 3
RECONNECT_LINE = 'was broken while idle; reconnecting'


def test_session_killed_while_idle_is_set_up_by_django(mariadb_db, start_worker, variant, line,
                                                       record, explain, tmpdir):
    created_file = str(tmpdir.join('connections'))
    worker = start_worker(variant, url=mariadb_db.url, concurrency=1, conn_max_age=600,
                          databases=mysql_databases(),
                          env={'CDF_CONNECTIONS_FILE': created_file})
    first = send_tokens(worker, 2)
    assert all(outcome.ok for _, outcome in first), (first, worker.log_tail())
    after, killed, reused_dead = [], [], set()
    for _ in range(KILLS):
        time.sleep(0.2)  # the last task's postrun is over by then
        ended = mariadb_db.terminate()
        assert mariadb_db.wait_for_no_backends(), mariadb_db.backends()
        killed.extend(ended)
        batch = send_tokens(worker, AFTER_KILL)
        after.extend(batch)
        # No task reports a session ended before it was sent.
        reused_dead.update(set(killed) & set(outcome.backend for _, outcome in batch))
    stopped = worker.stop(timeout=10)

    everything = first + after
    reported = set(outcome.backend for _, outcome in everything if outcome.ok)
    created = connections_created(created_file, 'mysql', worker)
    facts = record('pymysql_reconnect', variant, case=case_name('mysql'),
                   kills=len(killed), failed=len(failed(after)), timeout=len(timed_out(after)),
                   stale=len(stale(everything)), sessions=len(reported),
                   not_set_up=not_set_up_count(everything, 'mysql', created, reported),
                   hung=stopped == 'hung')
    context = explain(facts, [outcome for _, outcome in after], worker)
    context += '\ncreated by Django: {0}; reported: {1}; killed: {2}; isolation: {3}'.format(
        created, sorted(reported), killed,
        [outcome.result.get('isolation') for _, outcome in everything if outcome.ok])

    assert stopped == 'stopped', context
    assert not timed_out(after), context
    assert not stale(everything), context
    if variant == 'patched' or line.reuses:
        # There was a kept session to kill each time.
        assert len(killed) >= KILLS, context
    if variant == 'patched':
        assert not failed(after), context
        assert not not_set_up(everything, 'mysql'), context
        # Every session a task used was opened by Django: one at first, one after each kill.
        assert len(reported) == 1 + KILLS, context
        assert set_up_by_django(created, reported, 'mysql'), context
        assert not reused_dead, context
        assert worker.log().count(RECONNECT_LINE) >= KILLS, context
    elif line.reuses:
        # The dead session goes to the first task after each kill.
        assert len(failed(after)) >= 1, context
    else:
        # Nothing kept: a session per task, each opened by Django.
        assert not failed(after), context
        assert len(reported) == len(everything), context
        assert set_up_by_django(created, reported, 'mysql'), context
