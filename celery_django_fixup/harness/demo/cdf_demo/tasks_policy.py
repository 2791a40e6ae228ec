"""Demo tasks for the fix-up's policy: tasks that end as failures although their body
returned (or without a state at all), tasks that catch an interruption, and tasks that say which
thread ran them.

Each task that uses the database reports the server's id of its session (``backend``) and its
process (``pid``); those that fail put them in their error as ``backend=ID pid=PID``.
"""
from __future__ import absolute_import

import os
import threading
import time

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from django.db import connections

from cdf_demo.celeryapp import app, backend_id
from cdf_demo.tasks import sleep_in_query

#: A value that makes ``cdf_demo.results_policy.InterruptedStoreBackend`` raise
#: ``SoftTimeLimitExceeded`` while it stores the task's success.
INTERRUPT_STORE = 'cdf-interrupt-store'


class DemoPolicyError(Exception):
    """Raised on purpose."""


def _where(alias='default'):
    return 'backend={0} pid={1}'.format(backend_id(connections[alias]), os.getpid())


def _thread_id():
    get_ident = getattr(threading, 'get_ident', None)
    if get_ident is None:  # Python 2
        import thread
        get_ident = thread.get_ident
    return get_ident()


class _OnFailureRaises(Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo):
        raise DemoPolicyError('on_failure raised on purpose after: {0}'.format(exc))


class _OnSuccessRaises(Task):

    def on_success(self, retval, task_id, args, kwargs):
        raise DemoPolicyError('on_success raised on purpose, backend={0} pid={1}'.format(
            retval.get('backend'), retval.get('pid')))


@app.task(name='cdf_demo.on_failure_raises', base=_OnFailureRaises)
def on_failure_raises(alias='default'):
    """A query, then an error whose ``on_failure`` handler raises too: Celery's ``on_error``
    raises, and ``task_postrun`` is sent with ``state=None``."""
    raise DemoPolicyError('failed on purpose, {0}'.format(_where(alias)))


@app.task(name='cdf_demo.on_success_raises', base=_OnSuccessRaises)
def on_success_raises(alias='default'):
    """A query and a normal return, then ``on_success`` raises: ``task_postrun`` says
    ``SUCCESS``, then Celery reports an internal error and the task's failure."""
    return {'pid': os.getpid(), 'alias': alias, 'backend': backend_id(connections[alias])}


@app.task(name='cdf_demo.store_interrupted')
def store_interrupted(alias='default'):
    """A query and a normal return; with ``InterruptedStoreBackend`` as the result backend,
    storing the success raises ``SoftTimeLimitExceeded`` (as a soft time limit firing while a
    database result backend writes does): ``task_postrun`` says ``SUCCESS``, then Celery
    reports an internal error and the task's failure."""
    return {'pid': os.getpid(), 'alias': alias, 'backend': backend_id(connections[alias]),
            'marker': INTERRUPT_STORE}


@app.task(name='cdf_demo.caught_slow_query', soft_time_limit=1)
def caught_slow_query(seconds=3, alias='default'):
    """A query that outlives the soft time limit; the task catches ``SoftTimeLimitExceeded``
    and returns normally (``SUCCESS``). PyMySQL, pure Python, is interrupted in the middle of
    reading the reply (unread packets stay on the socket); psycopg2 blocks in C, so the
    exception comes when the query is over."""
    conn = connections[alias]
    backend = backend_id(conn)
    caught = False
    try:
        sleep_in_query(conn, seconds)
    except SoftTimeLimitExceeded:
        caught = True
    return {'pid': os.getpid(), 'alias': alias, 'backend': backend, 'caught': caught}


@app.task(name='cdf_demo.token')
def token(value, alias='default'):
    """One query that selects ``value`` with the session's id and transaction isolation level:
    ``row`` is what the driver returned, so a caller sees whether it got its own value back
    or something left on the connection by an earlier task."""
    conn = connections[alias]
    with conn.cursor() as cursor:
        if conn.vendor == 'postgresql':
            cursor.execute("SELECT %s, pg_backend_pid(), current_setting('transaction_isolation')",
                           [value])
        elif conn.vendor == 'mysql':
            cursor.execute('SELECT %s, CONNECTION_ID(), @@tx_isolation', [value])
        else:
            cursor.execute('SELECT %s', [value])
        row = [item if not isinstance(item, bytes) or str is bytes else item.decode('utf-8')
               for item in (cursor.fetchone() or ())]
    backend = row[1] if len(row) > 1 and conn.vendor != 'sqlite' else None
    return {'pid': os.getpid(), 'alias': alias, 'row': row, 'backend': backend,
            'isolation': row[2] if len(row) > 2 else None}


@app.task(name='cdf_demo.thread_touch')
def thread_touch(seconds=0.02, alias='default'):
    """One query, then a short sleep (so that every thread of a threads pool gets tasks);
    ``thread`` is the thread that ran it, ``at`` when it started (the worker's clock)."""
    started = time.time()
    backend = backend_id(connections[alias])
    time.sleep(seconds)
    return {'pid': os.getpid(), 'thread': _thread_id(), 'backend': backend, 'at': started}
