"""Fixtures shared by the test suites: the services the worker tests run against.

A missing service skips the tests that need it, except with ``CI=true`` in the environment,
where it fails them: CI must never turn green by skipping what it was meant to run.

``CDF_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``) names
the PostgreSQL server and ``CDF_TEST_BROKER_URL`` (default ``redis://127.0.0.1:6379/15``) the
broker; results go to the broker URL unless ``CDF_TEST_RESULT_BACKEND`` says otherwise.

The harness is imported inside the fixtures only: collecting the unit tests must not need a
database driver, and must not import the package before they do.
"""
from __future__ import absolute_import

import os

import pytest

POSTGRES_URL = os.environ.get('CDF_TEST_POSTGRES_URL',
                              'postgresql://postgres@127.0.0.1:5432/postgres')
BROKER_URL = os.environ.get('CDF_TEST_BROKER_URL', 'redis://127.0.0.1:6379/15')
RESULT_BACKEND = os.environ.get('CDF_TEST_RESULT_BACKEND') or None


def in_ci():
    return os.environ.get('CI', '').strip().lower() in ('true', '1', 'yes')


def unavailable(reason):
    """Skip, or fail under CI, because a service the test needs is not there."""
    if in_ci():
        pytest.fail('{0} (CI=true: a missing service is a failure)'.format(reason),
                    pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope='session')
def missing():
    """``missing(reason)``: :func:`unavailable` for fixtures and tests in other folders, which
    cannot import this module: skips, or fails under ``CI=true``."""
    return unavailable


class ScratchDatabase(object):
    """A database of its own on the PostgreSQL server, for one test session."""

    def __init__(self, stats, name):
        self.stats = stats
        self.name = name
        self.url = stats.url(name)

    def sessions(self):
        return self.stats.sessions(self.name)

    def settled_sessions(self):
        return self.stats.settled_sessions(self.name)

    def backends(self):
        return self.stats.backends(self.name)

    def terminate(self, pids=None):
        return self.stats.terminate(self.name, pids)

    def wait_for_no_backends(self, timeout=10.0):
        return self.stats.wait_for_no_backends(self.name, timeout)

    def wait_for_backends(self, count, timeout=10.0):
        return self.stats.wait_for_backends(self.name, count, timeout)


@pytest.fixture(scope='session')
def postgres():
    """Server-side statistics of the PostgreSQL server (``dbstats.PostgresStats``)."""
    from celery_django_fixup.harness import dbstats
    stats = dbstats.PostgresStats(POSTGRES_URL)
    try:
        stats.connect()
    except dbstats.ServiceUnavailable as exc:
        unavailable(str(exc))
    if stats.server_version() < 140000:
        unavailable('PostgreSQL 14 or later is needed to count sessions')
    yield stats
    stats.close()


@pytest.fixture(scope='session')
def pg_db(postgres):
    """A scratch PostgreSQL database with the demo project's table, dropped at the end."""
    from celery_django_fixup.harness import run
    scratch = ScratchDatabase(postgres, postgres.create_database(prefix='cdf_test'))
    try:
        run.prepare_database(scratch.url)
        yield scratch
    finally:
        postgres.drop_database(scratch.name)


@pytest.fixture(scope='session')
def broker():
    """The broker and result backend workers use (``run.Broker``), checked reachable."""
    from celery_django_fixup.harness import run
    broker = run.Broker(BROKER_URL, RESULT_BACKEND)
    try:
        broker.check()
    except Exception as exc:  # noqa: B902 -- whatever the transport raises
        unavailable('broker {0} unreachable: {1!r}'.format(BROKER_URL, exc))
    return broker
