"""Read task results that django-celery-results stored in a database, without Django.

With ``result_backend = 'django-db'`` a worker's processes write each task's state to the table
``django_celery_results_taskresult`` of its own database; the harness' client has no Django
to read them through Celery, so :class:`TaskResults` reads the rows itself::

    reader = TaskResults(url)            # the database the worker writes to
    reader.fetch([task_id, ...])         # [{'status': 'FAILURE', 'result': {...}}, ...]
    reader.close()

Every fetch is one query on one connection of the reader's own, opened when first needed and
opened again if the server ended it (tests end sessions on purpose). A task with no row yet is
``PENDING``. Results are JSON (the worker's default serializer). Query parameters of the URL
that only matter to the worker (``options``, ``init_command``: a session timeout) are dropped;
the others (``sslmode``) are kept.
"""
from __future__ import absolute_import

import json

from .demo.cdf_demo import dburl

__all__ = ('TaskResults', 'TABLE')

TABLE = 'django_celery_results_taskresult'

#: URL options the reader leaves out: they set up the worker's sessions, not the reader's.
WORKER_ONLY_OPTIONS = ('options', 'init_command', 'application_name')


class TaskResults(object):
    """The results a worker stored with django-celery-results in the database ``url``."""

    def __init__(self, url):
        self.url = url
        self.vendor = dburl.vendor(url)
        self._conn = None

    def _connect(self):
        settings = dburl.parse(self.url)
        options = dict((key, value) for key, value in settings['OPTIONS'].items()
                       if key not in WORKER_ONLY_OPTIONS)
        if self.vendor == 'postgresql':
            import psycopg2
            conn = psycopg2.connect(dbname=settings['NAME'], user=settings['USER'] or None,
                                    password=settings['PASSWORD'] or None,
                                    host=settings['HOST'] or None,
                                    port=settings['PORT'] or None, connect_timeout=5,
                                    application_name='cdf-results-reader', **options)
            conn.autocommit = True
        elif self.vendor == 'mysql':
            try:
                import MySQLdb as driver
                password = {'passwd': settings['PASSWORD']}
            except ImportError:
                import pymysql as driver
                password = {'password': settings['PASSWORD']}
            conn = driver.connect(host=settings['HOST'] or '127.0.0.1',
                                  user=settings['USER'] or 'root',
                                  port=int(settings['PORT'] or 3306), db=settings['NAME'],
                                  connect_timeout=5, **password)
            conn.autocommit(True)
        else:
            raise ValueError('no results reader for {0} databases'.format(self.vendor))
        return conn

    def _rows(self, task_ids):
        placeholders = ', '.join(['%s'] * len(task_ids))
        sql = 'SELECT task_id, status, result FROM {0} WHERE task_id IN ({1})'.format(
            TABLE, placeholders)
        for attempt in (1, 2):
            try:
                if self._conn is None:
                    self._conn = self._connect()
                cursor = self._conn.cursor()
                try:
                    cursor.execute(sql, list(task_ids))
                    return cursor.fetchall()
                finally:
                    cursor.close()
            except Exception:  # noqa: B902 -- the server ended the reader's session: once more
                self.close()
                if attempt == 2:
                    raise
        return []

    def fetch(self, task_ids):
        """The state of each task, in order: ``{'status': ..., 'result': ...}``."""
        task_ids = list(task_ids)
        if not task_ids:
            return []
        found = {}
        for task_id, status, result in self._rows(task_ids):
            try:
                value = json.loads(result) if result else None
            except ValueError:
                value = result
            found[task_id] = {'status': status, 'result': value}
        return [found.get(task_id, {'status': 'PENDING'}) for task_id in task_ids]

    def close(self):
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: B902 -- already dead
                pass
