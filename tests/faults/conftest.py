"""Fixtures of the fault suite: each scenario runs on the stock and on the patched fix-up.

Every scenario reports what it measured with ``record(scenario, variant, **facts)``. With
``CDF_RESULTS_DIR`` set, each record is appended as one JSON line to
``$CDF_RESULTS_DIR/<celery version>-<python>.jsonl``; ``scripts/reliability_table.py`` turns
those files into the README's Reliability table. Records are facts measured on the servers and
processes (failed tasks, sessions opened, whether the worker hung), never the package's own
counters.
"""
from __future__ import absolute_import

import json
import os
import platform

import pytest

from celery_django_fixup import versions

#: The fix-ups each scenario runs on: Celery's own, and ours.
VARIANTS = ('stock', 'patched')


@pytest.fixture(params=VARIANTS)
def variant(request):
    return request.param


def mode_of(variant):
    """The demo worker's mode for a variant."""
    return 'stock' if variant == 'stock' else 'fixups'


@pytest.fixture
def line():
    found = versions.line_for()
    assert found is not None, 'the fault suite needs a supported Celery'
    return found


@pytest.fixture(scope='session')
def record():
    folder = os.environ.get('CDF_RESULTS_DIR')
    celery_version = '.'.join(str(part) for part in versions.celery_version())
    path = None
    if folder:
        if not os.path.isdir(folder):
            os.makedirs(folder)
        path = os.path.join(folder, 'celery-{0}-py{1}.jsonl'.format(
            celery_version, '.'.join(platform.python_version_tuple()[:2])))

    def write(scenario, variant, **facts):
        facts.update(scenario=scenario, variant=variant, celery=celery_version,
                     python=platform.python_version())
        if path is not None:
            with open(path, 'a') as fh:
                fh.write(json.dumps(facts, sort_keys=True) + '\n')
        return facts

    return write


# -- workers -------------------------------------------------------------------------------------

#: The worker fix-up class each variant must really run (checked on every worker started).
FIXUP_CLASS = {
    'stock': 'celery.fixups.django.DjangoWorkerFixup',
    'patched': 'celery_django_fixup.worker.DjangoWorkerFixup',
}


@pytest.fixture
def start_worker(request, broker):
    """``start_worker(variant, url=None, **Worker kwargs)``: a started demo worker.

    ``url`` defaults to the scratch PostgreSQL database (``pg_db``). The worker is checked to
    run the fix-up class of its variant, so that a stock run cannot pass on the patched class
    or the other way round; every worker is stopped and removed at the end of the test.
    """
    from celery_django_fixup.harness import run
    workers = []

    def start(variant, url=None, **kwargs):
        if url is None:
            url = request.getfixturevalue('pg_db').url
        kwargs.setdefault('broker', broker)
        worker = run.Worker(url, mode=mode_of(variant), **kwargs)
        workers.append(worker)
        worker.start(timeout=60)
        assert worker.info['worker_fixup'] == FIXUP_CLASS[variant], worker.info
        return worker

    yield start
    for worker in workers:
        worker.close()


# -- MariaDB / MySQL -----------------------------------------------------------------------------

MYSQL_URL = os.environ.get('CDF_TEST_MYSQL_URL', 'mysql://root@127.0.0.1:3306/')


class MysqlScratch(object):
    """A database of its own on the MySQL/MariaDB server (``dbstats.MysqlStats``)."""

    def __init__(self, stats, name):
        self.stats = stats
        self.name = name
        self.url = stats.url(name)

    def backends(self):
        """Connection ids of the sessions whose current database is this one."""
        return self.stats.backends(self.name)

    def terminate(self, pids=None):
        return self.stats.terminate(self.name, pids)

    def wait_for_no_backends(self, timeout=10.0):
        return self.stats.wait_for_no_backends(self.name, timeout)

    def wait_for_backends(self, count, timeout=10.0):
        return self.stats.wait_for_backends(self.name, count, timeout)


@pytest.fixture(scope='session')
def mariadb(missing):
    """Server-side facts of the MariaDB/MySQL server (``CDF_TEST_MYSQL_URL``), once its Django
    driver (mysqlclient, or PyMySQL standing in for it) is known to import."""
    try:
        import MySQLdb  # noqa: F401
    except ImportError:
        try:
            import pymysql  # noqa: F401
        except ImportError:
            missing('neither mysqlclient nor PyMySQL is installed')
    from celery_django_fixup.harness import dbstats
    stats = dbstats.MysqlStats(MYSQL_URL)
    try:
        stats.connect()
    except dbstats.ServiceUnavailable as exc:
        missing(str(exc))
    yield stats
    stats.close()


@pytest.fixture(scope='session')
def mariadb_scratch(mariadb):
    """``mariadb_scratch()``: a new database with the demo table, as a :class:`MysqlScratch`
    (every one dropped at the end of the session)."""
    from celery_django_fixup.harness import run
    created = []

    def create():
        scratch = MysqlScratch(mariadb, mariadb.create_database(prefix='cdf_test'))
        created.append(scratch)
        run.prepare_database(scratch.url)
        return scratch

    yield create
    for scratch in created:
        mariadb.drop_database(scratch.name)


@pytest.fixture(scope='session')
def mariadb_db(mariadb_scratch):
    """A scratch MariaDB database with the demo table."""
    return mariadb_scratch()


# -- failure messages ----------------------------------------------------------------------------

@pytest.fixture(scope='session')
def explain():
    """``explain(facts, outcomes, worker)``: the message of a failed scenario assertion, as one
    string (pytest shortens the repr of anything else): the facts, the first errors of the
    tasks, and the end of the worker's log."""

    def explain(facts, outcomes=(), worker=None, lines=40):
        errors = [outcome.error for outcome in outcomes if outcome.error][:3]
        parts = ['facts: ' + json.dumps(facts, sort_keys=True, default=repr)]
        parts.extend('task error: ' + error.strip() for error in errors)
        if worker is not None:
            parts.append('worker log (last {0} lines):\n{1}'.format(lines, worker.log_tail(lines)))
        return '\n'.join(parts)

    return explain
