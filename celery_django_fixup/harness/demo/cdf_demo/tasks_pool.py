"""Demo tasks for Django's connection pools (Django 5.1+, PostgreSQL with psycopg 3)."""
from __future__ import absolute_import

import os
import threading

from django.db import connections

from cdf_demo.celeryapp import app


@app.task(name='cdf_demo.pool_hold')
def pool_hold(seconds=0.05, alias='default'):
    """One query that holds its connection ``seconds`` (``pg_sleep``), so that the tasks of a
    threads or greenlet pool overlap and really share the pool; reports the session, the
    process and the thread (or greenlet) that ran it."""
    with connections[alias].cursor() as cursor:
        cursor.execute('SELECT pg_backend_pid(), pg_sleep(%s)', [seconds])
        backend = cursor.fetchone()[0]
    return {'pid': os.getpid(), 'alias': alias, 'backend': backend,
            'thread': threading.current_thread().name}
