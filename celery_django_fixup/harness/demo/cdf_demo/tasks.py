"""Demo tasks. Those that use the database report the server-side id of the connection they
used (PostgreSQL ``pg_backend_pid()``, MySQL/MariaDB ``CONNECTION_ID()``), so a caller can tell
whether a connection was reused; those that fail put it in their error as ``backend=ID``, and
the pid of the process that ran them as ``pid=PID`` (which pool process the next task on the
same process is, is then known for failed tasks too).
"""
from __future__ import absolute_import

import os
import time

from celery.exceptions import SoftTimeLimitExceeded
from django.db import connections, transaction

from cdf_demo.celeryapp import app, backend_id
from cdf_demo.models import Item


class DemoTaskError(Exception):
    """Raised on purpose by the failing tasks."""


def _report(alias, backend, **extra):
    extra.update(pid=os.getpid(), alias=alias, backend=backend)
    return extra


@app.task(name='cdf_demo.touch')
def touch(alias='default'):
    """One query."""
    return _report(alias, backend_id(connections[alias]))


@app.task(name='cdf_demo.probe')
def probe(alias='default'):
    """``touch``, except that its error says which process failed: ``DemoTaskError`` with
    ``ExcType: message pid=PID``, so the task that follows a failed one on the same pool
    process can be found whether it succeeds or not."""
    try:
        backend = backend_id(connections[alias])
    except Exception as exc:  # noqa: B902 -- reported whatever it is
        raise DemoTaskError('{0}: {1} pid={2}'.format(
            type(exc).__name__, str(exc).strip(), os.getpid()))
    return _report(alias, backend)


@app.task(name='cdf_demo.touch_each')
def touch_each(aliases=('default',)):
    """One query on each alias named, in that order; ``backends`` maps alias to session id and
    ``order`` lists the aliases as ``connections.all()`` (and so every fix-up) goes through
    them."""
    backends = dict((alias, backend_id(connections[alias])) for alias in aliases)
    return {'pid': os.getpid(), 'backends': backends,
            'order': [conn.alias for conn in connections.all()]}


@app.task(name='cdf_demo.process')
def process():
    """No database: how this pool process was started (``start_method``: billiard's
    ``fork`` or ``spawn``) and the worker fix-up class the app uses in it."""
    import billiard
    from cdf_demo.whichfixup import worker_fixup_class
    return {'pid': os.getpid(), 'start_method': billiard.get_start_method(allow_none=True),
            'worker_fixup': worker_fixup_class(app)}


@app.task(name='cdf_demo.noop')
def noop():
    """No database at all; ``at`` is when it ended (the worker's clock, for throughput)."""
    return {'pid': os.getpid(), 'at': time.time()}


@app.task(name='cdf_demo.sleep')
def sleep(seconds=1.0):
    """No database at all."""
    time.sleep(seconds)
    return {'pid': os.getpid()}


@app.task(name='cdf_demo.orm')
def orm(alias='default'):
    """A tiny ORM read and write, with no query beyond them; ``at`` is when it ended (the
    worker's clock: Celery 4.0-4.1 store no ``date_done`` with a result)."""
    items = Item.objects.using(alias)
    item = items.create(name='orm', value=os.getpid())
    exists = items.filter(pk=item.pk).exists()
    return {'pid': os.getpid(), 'alias': alias, 'id': item.pk, 'found': exists,
            'at': time.time()}


@app.task(name='cdf_demo.fail')
def fail(alias='default'):
    """A query, then an error that is not the database's."""
    raise DemoTaskError('failed on purpose, backend={0} pid={1}'.format(
        backend_id(connections[alias]), os.getpid()))


@app.task(name='cdf_demo.atomic_error')
def atomic_error(alias='default'):
    """A query inside ``transaction.atomic()``, then an error that leaves the block."""
    with transaction.atomic(using=alias):
        backend = backend_id(connections[alias])
        raise DemoTaskError('failed inside atomic(), backend={0} pid={1}'.format(
            backend, os.getpid()))


@app.task(name='cdf_demo.autocommit_off')
def autocommit_off(alias='default'):
    """Succeeds, but leaves the connection with autocommit off (inside a transaction)."""
    transaction.set_autocommit(False, using=alias)
    return _report(alias, backend_id(connections[alias]))


def _is_psycopg2(dbapi):
    return type(dbapi).__module__.split('.')[0] == 'psycopg2'


def sleep_in_query(conn, seconds):
    """A query that takes ``seconds`` on the server (SQLite: a sleep in the client)."""
    with conn.cursor() as cursor:
        if conn.vendor == 'postgresql':
            cursor.execute('SELECT pg_sleep(%s)', [seconds])
        elif conn.vendor == 'mysql':
            cursor.execute('SELECT SLEEP(%s)', [seconds])
        else:
            time.sleep(seconds)


@app.task(name='cdf_demo.slow_query', soft_time_limit=1)
def slow_query(seconds=3, alias='default', interruptible=True):
    """A query that outlives the soft time limit (1 s unless the caller sets another).

    With ``interruptible`` (PostgreSQL), psycopg2 waits through a Python callback, so the
    limit's exception is raised in the middle of the query, as it is under gevent or eventlet;
    otherwise the driver blocks in C and the exception comes once the query is over. psycopg 3
    (Django 4.2+ uses it when it is installed) checks for signals while it waits, so its queries
    are interrupted either way: the connection is then left with the query running
    (``another command is already in progress``).
    """
    conn = connections[alias]
    backend = backend_id(conn)
    green = interruptible and conn.vendor == 'postgresql' and _is_psycopg2(conn.connection)
    if green:
        import psycopg2.extensions
        import psycopg2.extras
        psycopg2.extensions.set_wait_callback(psycopg2.extras.wait_select)
    try:
        sleep_in_query(conn, seconds)
    except SoftTimeLimitExceeded:
        raise SoftTimeLimitExceeded('soft time limit in a query, backend={0} pid={1}'.format(
            backend, os.getpid()))
    finally:
        if green:
            psycopg2.extensions.set_wait_callback(None)
    return _report(alias, backend)
