"""Scenario 6: two database aliases, each closed as its own settings say.

Each alias is on a database of its own, so the server tells their sessions apart: PostgreSQL
counts sessions per database (``pg_stat_database.sessions``); on MariaDB, whose connection
counter is server-wide, the connections used are the distinct ``CONNECTION_ID()`` the tasks
report, and the open ones are ``information_schema.PROCESSLIST`` rows on the database.

- ``default`` has ``CONN_MAX_AGE=600`` and ``zero`` has ``CONN_MAX_AGE=0``: ``default`` is
  kept between tasks (one connection per pool process) and ``zero`` is closed after every
  task, so that none of its sessions is left open once the worker is idle. Stock lines that
  close everything (4.0-4.1, 4.4.0-4.4.3) open a ``default`` connection per task too.
- ``default`` is a backend whose close raises (``cdf_demo.closeraises``) and both aliases have
  ``CONN_MAX_AGE=0``: the patched fix-up still closes ``zero`` after every task. Celery's own
  fix-up stops at the error, on every line: ``zero`` stays open until the next task starts,
  for as long as the worker is idle.
"""
from __future__ import absolute_import

import time

import pytest

from celery_django_fixup.harness import run

pytestmark = pytest.mark.faults

TASKS = 20
CONCURRENCY = 2
ALIASES = ['default', 'zero']
#: Seconds a close at the end of a task may take to show on the server: the result is stored
#: before ``task_postrun`` runs, so the last task's close comes a moment after its result.
#: Polled, so a loaded machine gets all of it.
SETTLE = 10.0


class PostgresDatabase(object):
    vendor = 'postgresql'

    def __init__(self, stats, name):
        self.stats = stats
        self.name = name
        self.url = stats.url(name)

    def backends(self):
        return self.stats.backends(self.name)

    def sessions(self):
        return self.stats.sessions(self.name)

    def settled_sessions(self):
        return self.stats.settled_sessions(self.name)


@pytest.fixture(scope='module')
def pg_pair(postgres, pg_db):
    """The session's scratch database and a second one, both with the demo table."""
    second = PostgresDatabase(postgres, postgres.create_database(prefix='cdf_test'))
    try:
        run.prepare_database(second.url)
        yield PostgresDatabase(postgres, pg_db.name), second
    finally:
        postgres.drop_database(second.name)


@pytest.fixture(scope='module')
def mysql_pair(mariadb_scratch):
    return mariadb_scratch(), mariadb_scratch()


@pytest.fixture(params=['postgresql', 'mysql'])
def databases(request):
    """Two scratch databases on the server of the parameter's vendor."""
    pair = request.getfixturevalue('pg_pair' if request.param == 'postgresql' else 'mysql_pair')
    return request.param, pair


def open_on(db, settle):
    """Sessions open on ``db`` once ``settle`` seconds passed or none is left."""
    deadline = time.time() + settle
    while True:
        backends = db.backends()
        if not backends or time.time() > deadline:
            return backends
        time.sleep(0.1)


def run_tasks(worker):
    outcomes = worker.run('touch_each', count=TASKS, kwargs={'aliases': ALIASES}, timeout=60)
    summary = run.summarize(outcomes)
    assert summary['ok'] == TASKS, (summary, outcomes[:3], worker.log_tail())
    used = dict((alias, set(outcome.result['backends'][alias] for outcome in outcomes))
                for alias in ALIASES)
    return outcomes, summary, used


def sessions_before(pair):
    return [db.sessions() if hasattr(db, 'sessions') else None for db in pair]


def sessions_after(pair, before, used):
    """Per alias: sessions the server counted (PostgreSQL), or the connections used."""
    counted = {}
    for alias, db, start in zip(ALIASES, pair, before):
        if start is None:
            counted[alias] = len(used[alias])
        else:
            counted[alias] = db.settled_sessions() - start
            # Nothing else connected: every session opened is one a task reported.
            assert counted[alias] == len(used[alias]), (alias, counted, used)
    return counted


def test_each_alias_follows_its_own_conn_max_age(databases, start_worker, variant, line,
                                                 record):
    vendor, pair = databases
    first, second = pair
    before = sessions_before(pair)
    worker = start_worker(
        variant, url=first.url, concurrency=CONCURRENCY, conn_max_age=600,
        databases={'zero': {'url': second.url, 'CONN_MAX_AGE': 0}})
    keeps_default = variant == 'patched' or line.reuses
    outcomes, summary, used = run_tasks(worker)
    zero_open = open_on(second, SETTLE)
    # Where ``default`` is closed after every task too, its last close may show a moment
    # after ``zero``'s: it is given the same time to settle.
    default_open = first.backends() if keeps_default else open_on(first, SETTLE)
    stopped = worker.stop(timeout=10)
    sessions = sessions_after(pair, before, used)
    record('aliases', variant, case='CONN_MAX_AGE 600 and 0 ({0})'.format(vendor),
           database=vendor, tasks=TASKS, failed=summary['failed'], timeout=summary['timeout'],
           sessions=sessions, left_open=len(zero_open), hung=stopped == 'hung')

    assert stopped == 'stopped', (worker.stop_seconds, worker.log_tail())
    assert sessions['zero'] == TASKS, sessions
    assert zero_open == [], ('CONN_MAX_AGE=0 connections open while idle', zero_open)
    if keeps_default:
        assert 1 <= sessions['default'] <= CONCURRENCY, sessions
        # Kept while idle, as CONN_MAX_AGE=600 says.
        assert 1 <= len(default_open) <= CONCURRENCY, default_open
    else:
        assert sessions['default'] == TASKS, sessions
        assert default_open == [], default_open


def test_close_that_raises_does_not_skip_the_other_alias(databases, start_worker, variant,
                                                         record):
    vendor, pair = databases
    first, second = pair
    before = sessions_before(pair)
    worker = start_worker(
        variant, url=first.url, concurrency=CONCURRENCY, conn_max_age=0,
        databases={'default': {'ENGINE': 'cdf_demo.closeraises.' + vendor},
                   'zero': {'url': second.url}})
    outcomes, summary, used = run_tasks(worker)
    zero_open = open_on(second, SETTLE if variant == 'patched' else 1.0)
    stopped = worker.stop(timeout=10)
    sessions = sessions_after(pair, before, used)
    record('aliases', variant, case='close of one alias raises ({0})'.format(vendor),
           database=vendor, tasks=TASKS, failed=summary['failed'], timeout=summary['timeout'],
           sessions=sessions, left_open=len(zero_open), hung=stopped == 'hung')

    # The fix-ups go through the aliases in this order: the failing one comes first.
    assert outcomes[0].result['order'][:2] == ALIASES, outcomes[0].result
    assert stopped == 'stopped', (worker.stop_seconds, worker.log_tail())
    assert 'raised on purpose' in worker.log(), worker.log_tail()
    # Every task opened its own connections: each close happened, late or not.
    assert sessions == {'default': TASKS, 'zero': TASKS}, sessions
    if variant == 'patched':
        assert zero_open == [], ('zero left open after its task', zero_open)
    else:
        # Celery stopped at the failing alias: the last task of each process left ``zero``
        # open, and nothing closes it while the worker is idle.
        assert 1 <= len(zero_open) <= CONCURRENCY, zero_open
