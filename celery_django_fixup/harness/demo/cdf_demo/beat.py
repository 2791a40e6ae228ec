"""A beat scheduler that uses the database on every tick, as database-backed schedulers do.

``celery worker -B --scheduler cdf_demo.beat:QueryingScheduler`` runs it as embedded beat: a
process forked from the worker's main process, so it starts with whatever connection the main
process held. Schedulers that keep their schedule in the database (django-celery-beat's
``DatabaseScheduler`` checks for changes on every tick) query through Django's connection in
that process; this one does the same with one query per tick.

Environment:

``CDF_BEAT_LOG``     a file that gets one JSON line per tick: ``{"pid", "backend"}`` (the
                     server's id of the session that answered) or ``{"pid", "error"}``.
                     Queries run only when it is set.
``CDF_BEAT_QUEUE``   where a ``cdf_demo.noop`` task is sent every second, so that the beat
                     process also opens a broker connection, as a real one does; by default
                     the queue the worker consumes (``-Q``), when it consumes exactly one.
``CDF_BEAT_TICK``    seconds between ticks at most (default 0.2).
"""
from __future__ import absolute_import

import json
import os

from celery.beat import PersistentScheduler


def _backend_id(conn):
    # Not cdf_demo.celeryapp's backend_id: the tests import this module outside the worker,
    # where the demo app is not importable.
    with conn.cursor() as cursor:
        if conn.vendor == 'mysql':
            cursor.execute('SELECT CONNECTION_ID()')
        else:
            cursor.execute('SELECT pg_backend_pid()')
        return cursor.fetchone()[0]


class QueryingScheduler(PersistentScheduler):

    def __init__(self, *args, **kwargs):
        kwargs['max_interval'] = float(os.environ.get('CDF_BEAT_TICK') or 0.2)
        super(QueryingScheduler, self).__init__(*args, **kwargs)

    def setup_schedule(self):
        super(QueryingScheduler, self).setup_schedule()
        queue = os.environ.get('CDF_BEAT_QUEUE') or self._worker_queue()
        if queue:
            self.update_from_dict({'cdf-beat-noop': {
                'task': 'cdf_demo.noop', 'schedule': 1.0, 'options': {'queue': queue}}})

    def _worker_queue(self):
        # Embedded beat runs on the worker's app, whose queues -Q has narrowed.
        consumed = list(getattr(self.app.amqp.queues, 'consume_from', None) or ())
        return consumed[0] if len(consumed) == 1 else None

    def tick(self, *args, **kwargs):
        self.query_database()
        return super(QueryingScheduler, self).tick(*args, **kwargs)

    def query_database(self):
        path = os.environ.get('CDF_BEAT_LOG')
        if not path:
            return
        from django.db import connections
        entry = {'pid': os.getpid()}
        try:
            entry['backend'] = _backend_id(connections['default'])
        except Exception as exc:  # noqa: B902 -- a scheduler logs and goes on, as real ones do
            entry['error'] = '{0}: {1}'.format(type(exc).__name__, exc)
        # One short append per tick: a line is never split between two writers.
        with open(path, 'a') as fh:
            fh.write(json.dumps(entry) + '\n')


def read_log(path):
    """The entries a :class:`QueryingScheduler` wrote to ``CDF_BEAT_LOG`` (none if no file)."""
    if not os.path.exists(path):
        return []
    entries = []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line:
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    pass  # the last line of a process killed while writing
    return entries
