"""Scenario 7: the other pools. ``solo`` reuses its one connection; a greenlet pool (eventlet,
gevent) leaves no connection behind.

- ``solo``: one process runs every task, so with ``CONN_MAX_AGE=600`` the patched worker opens
  one session for all of them, as stock Celery does on the lines that reuse; the lines that
  close everything open one per task.
- ``gevent`` / ``eventlet`` (``-c 4``): Django's connections belong to the greenlet that ran the
  task, and each task runs in a new greenlet, so a connection kept after its task is never used
  again: it stays open on the server until the garbage collector happens to free it. The
  patched worker closes it at the end of every task: once the tasks are done no session is left
  open while the worker idles, and none after it stops. Stock Celery on the lines that reuse
  leaves them open; the lines that close everything close them too.

A greenlet pool whose library is not installed in the environment is reported as such (a
failure under ``CI=true``, a skip naming it otherwise): ``tox.ini`` installs a release of
each that still works with the env's Python and Celery.
"""
from __future__ import absolute_import

import os
import sys
import time

import pytest

from celery_django_fixup.harness import run

pytestmark = pytest.mark.faults

SOLO_TASKS = 30
GREEN_TASKS = 40
GREEN_CONCURRENCY = 4
#: How long the close at the end of the last tasks may take to show on the server (a result is
#: stored before ``task_postrun`` runs): polled, so a loaded machine gets all of it.
SETTLE = 10.0
#: How long a stock worker is left idle before its open sessions are counted.
IDLE = 1.0


def test_solo_reuses_one_connection(pg_db, start_worker, variant, line, record):
    before = pg_db.sessions()
    worker = start_worker(variant, pool='solo', concurrency=1, conn_max_age=600)
    outcomes = worker.run('touch', count=SOLO_TASKS, timeout=60)
    stopped = worker.stop(timeout=10)
    opened = pg_db.settled_sessions() - before
    summary = run.summarize(outcomes)
    used = set(outcome.backend for outcome in outcomes if outcome.ok)
    record('pools', variant, case='solo', tasks=SOLO_TASKS, failed=summary['failed'],
           timeout=summary['timeout'], sessions=opened, hung=stopped == 'hung')

    assert summary['ok'] == SOLO_TASKS, (summary, outcomes[:3], worker.log_tail())
    assert stopped == 'stopped', (worker.stop_seconds, worker.log_tail())
    assert opened == len(used), (opened, used)
    if variant == 'patched' or line.reuses:
        assert opened == 1, opened
    else:
        assert opened == SOLO_TASKS, opened


def preimport_uuid(folder, url):
    """Worker environment that imports ``uuid`` before Celery monkey-patches for gevent.

    Python 2.7's ``uuid`` runs ``ldconfig`` in a subprocess when it is imported; once gevent
    has patched ``subprocess``, gevent 1.2 (the last release the gevent pool of Celery 4.0-4.1
    can import) now and then misses that child's exit and the worker hangs before it is ready,
    stock or patched alike. Importing it first, from a ``sitecustomize`` module, avoids that
    gevent bug; nothing about database connections changes.
    """
    with open(os.path.join(folder, 'sitecustomize.py'), 'w') as fh:
        fh.write('import uuid  # noqa: F401 -- before gevent patches subprocess\n')
    path = run.demo_environ(url)['PYTHONPATH']
    return {'PYTHONPATH': os.pathsep.join([folder, path])}


def open_sessions(db, wait_for_none):
    """Sessions open on ``db``: at once, or once none is left (``SETTLE`` s at most)."""
    if not wait_for_none:
        time.sleep(IDLE)
        return db.backends()
    deadline = time.time() + SETTLE
    while True:
        backends = db.backends()
        if not backends or time.time() > deadline:
            return backends
        time.sleep(0.1)


@pytest.mark.parametrize('pool', ['gevent', 'eventlet'])
def test_green_pool_leaves_no_connection_behind(pool, pg_db, start_worker, variant, line,
                                                missing, record, tmpdir):
    try:
        __import__(pool)
    except ImportError as exc:
        missing('the {0} pool cannot run here: {0} is not installed in this environment '
                '({1})'.format(pool, exc))
    env = None
    if pool == 'gevent' and sys.version_info[0] == 2:
        env = preimport_uuid(str(tmpdir), pg_db.url)
    before = pg_db.sessions()
    worker = start_worker(variant, pool=pool, concurrency=GREEN_CONCURRENCY, conn_max_age=600,
                          env=env)
    assert worker.info['pool'] == 'celery.concurrency.' + pool, worker.info
    outcomes = worker.run('touch', count=GREEN_TASKS, timeout=60)
    expect_none = variant == 'patched' or not line.reuses
    idle_open = open_sessions(pg_db, expect_none)
    stopped = worker.stop(timeout=10)
    after_stop = pg_db.wait_for_no_backends(timeout=10)
    opened = pg_db.settled_sessions() - before
    summary = run.summarize(outcomes)
    record('pools', variant, case=pool, tasks=GREEN_TASKS, failed=summary['failed'],
           timeout=summary['timeout'], sessions=opened, left_open=len(idle_open),
           hung=stopped == 'hung')

    assert summary['ok'] == GREEN_TASKS, (summary, outcomes[:3], worker.log_tail())
    assert stopped == 'stopped', (worker.stop_seconds, worker.log_tail())
    assert after_stop, 'sessions still open after the worker stopped'
    # Every task ran in a greenlet of its own, with a connection of its own.
    assert opened == GREEN_TASKS, opened
    if expect_none:
        assert idle_open == [], ('sessions left open by finished tasks', idle_open)
    else:
        # Kept for greenlets that will never run again: open until garbage-collected.
        assert idle_open, 'a stock worker that reuses was expected to leave sessions open'
