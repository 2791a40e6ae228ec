"""Server-side facts about a database: sessions opened, sessions open, and ending them.

What a worker says about its connections proves nothing; what the server counted does.
Each class takes the URL of a server (any database on it) and works through one admin
connection of its own, opened once and kept, that is never connected to the scratch
database it reports on, so it never counts itself:

- :class:`PostgresStats`: ``pg_stat_database.sessions`` (PostgreSQL 14 and later) and
  ``pg_stat_activity``; the admin connection goes to another database (``postgres``).
- :class:`MysqlStats`: MySQL/MariaDB, the ``Connections`` status counter and
  ``information_schema.PROCESSLIST``. ``Connections`` is server-wide: any other client that
  connects meanwhile is counted too.

Drivers are imported when a class first connects: psycopg2; MySQLdb (mysqlclient) or PyMySQL.
"""
from __future__ import absolute_import

import time
import uuid

from .demo.cdf_demo import dburl

__all__ = ('PostgresStats', 'MysqlStats', 'for_url', 'scratch_name', 'ServiceUnavailable')


class ServiceUnavailable(Exception):
    """The database server (or its driver) cannot be reached."""


def scratch_name(prefix='cdf'):
    """A database name no other run uses at the same time."""
    return '{0}_{1}'.format(prefix, uuid.uuid4().hex[:12])


def for_url(url, **kwargs):
    """The stats class for the server of a database URL."""
    kind = dburl.vendor(url)
    if kind == 'postgresql':
        return PostgresStats(url, **kwargs)
    if kind == 'mysql':
        return MysqlStats(url, **kwargs)
    raise ValueError('no server-side statistics for {0} databases'.format(kind))


class _Stats(object):
    """What both servers share; subclasses provide the SQL."""

    vendor = None

    def __init__(self, url, admin_database=None):
        self.server_url = url
        self.admin_url = dburl.with_database(url, admin_database or self.admin_database)
        self._conn = None

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _query(self, sql, params=None):
        if self._conn is None:
            self.connect()
        cursor = self._conn.cursor()
        try:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else []
        finally:
            cursor.close()

    def url(self, name):
        """The URL of database ``name`` on this server, for ``CDF_DATABASE_URL``."""
        return dburl.with_database(self.server_url, name)

    def create_database(self, name=None, prefix='cdf'):
        """Create an empty database (a new unique name unless given) and return its name."""
        name = name or scratch_name(prefix)
        self._query('CREATE DATABASE ' + self.quote(name) + self.create_suffix)
        return name

    def drop_database(self, name, timeout=10.0):
        """End the database's sessions and drop it; missing is fine."""
        deadline = time.time() + timeout
        while True:
            self.terminate(name)
            try:
                self._query('DROP DATABASE IF EXISTS ' + self.quote(name))
                return
            except Exception:  # noqa: B902 -- a session may still be on its way out
                if time.time() > deadline:
                    raise
                time.sleep(0.2)

    def settled_sessions(self, name, timeout=15.0, interval=0.25, application_name=None):
        """:meth:`sessions` once no session is left on the database and the count is stable.

        Use it after the worker has stopped: a server may count a session a moment after
        the session began or ended (PostgreSQL 15 flushes a backend's counters at exit).
        Gives the last value read if that does not happen within ``timeout``. On a database
        other clients use, ``application_name`` (PostgreSQL) waits only for the sessions that
        set that name.
        """
        deadline = time.time() + timeout
        previous = None
        while True:
            value = self.sessions(name)
            if value == previous and not self._backends_named(name, application_name):
                return value
            if time.time() > deadline:
                return value
            previous = value
            time.sleep(interval)

    def wait_for_no_backends(self, name, timeout=10.0):
        """True once the database has no session left (False after ``timeout``)."""
        deadline = time.time() + timeout
        while self.backends(name):
            if time.time() > deadline:
                return False
            time.sleep(0.05)
        return True

    def wait_for_backends(self, name, count, timeout=10.0):
        """The sessions open on the database once there are exactly ``count`` of them, or
        those open after ``timeout``: a worker closes a connection at the end of a task a
        moment after the task's result is stored, so what a worker keeps is read this way."""
        deadline = time.time() + timeout
        while True:
            backends = self.backends(name)
            if len(backends) == count or time.time() > deadline:
                return backends
            time.sleep(0.05)

    def _backends_named(self, name, application_name):
        if application_name is None:
            return self.backends(name)
        return self.backends(name, application_name=application_name)


class PostgresStats(_Stats):
    """PostgreSQL: needs 14 or later for the session counter."""

    vendor = 'postgresql'
    admin_database = 'postgres'
    create_suffix = ''
    _version = None

    def connect(self):
        try:
            import psycopg2
        except ImportError as exc:
            raise ServiceUnavailable('psycopg2 is not installed: {0}'.format(exc))
        try:
            self._conn = psycopg2.connect(self.admin_url, connect_timeout=5)
        except psycopg2.OperationalError as exc:
            raise ServiceUnavailable('PostgreSQL at {0}: {1}'.format(
                self.admin_url, str(exc).strip()))
        self._conn.autocommit = True
        return self

    @staticmethod
    def quote(name):
        return '"{0}"'.format(name.replace('"', '""'))

    def server_version(self):
        if self._version is None:
            self._version = int(self._query('SHOW server_version_num')[0][0])
        return self._version

    def sessions(self, name):
        """Sessions ever opened on database ``name`` (``pg_stat_database.sessions``)."""
        if self.server_version() < 140000:
            raise RuntimeError('pg_stat_database.sessions needs PostgreSQL 14 or later')
        # Statistics read in a transaction are a snapshot; start from fresh numbers.
        self._query('SELECT pg_stat_clear_snapshot()')
        rows = self._query('SELECT sessions FROM pg_stat_database WHERE datname = %s', [name])
        return int(rows[0][0] or 0) if rows else 0

    def backends(self, name, application_name=None):
        """Server pids of the sessions open on database ``name`` (only those whose
        ``application_name`` is the one given, if given)."""
        if application_name is not None:
            return [row[0] for row in self._query(
                'SELECT pid FROM pg_stat_activity WHERE datname = %s AND '
                'application_name = %s AND pid <> pg_backend_pid() ORDER BY pid',
                [name, application_name])]
        return [row[0] for row in self._query(
            'SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() '
            'ORDER BY pid', [name])]

    def terminate(self, name, pids=None):
        """End the sessions on ``name`` (only ``pids`` if given) as an administrator would
        (``pg_terminate_backend``); returns the pids that were ended."""
        pids = self.backends(name) if pids is None else list(pids)
        ended = []
        for pid in pids:
            if self._query('SELECT pg_terminate_backend(%s)', [pid])[0][0]:
                ended.append(pid)
        return ended


class MysqlStats(_Stats):
    """MySQL and MariaDB. :meth:`sessions` counts the whole server's connections."""

    vendor = 'mysql'
    admin_database = ''
    create_suffix = ' CHARACTER SET utf8mb4'

    def connect(self):
        settings = dburl.parse(self.admin_url)
        kwargs = dict(host=settings['HOST'] or '127.0.0.1', user=settings['USER'] or 'root',
                      port=int(settings['PORT'] or 3306), connect_timeout=5)
        try:
            try:
                import MySQLdb as driver
                kwargs['passwd'] = settings['PASSWORD']
            except ImportError:
                import pymysql as driver
                kwargs['password'] = settings['PASSWORD']
        except ImportError as exc:
            raise ServiceUnavailable('neither mysqlclient nor PyMySQL is installed: {0}'
                                     .format(exc))
        try:
            self._conn = driver.connect(**kwargs)
        except driver.OperationalError as exc:
            raise ServiceUnavailable('MySQL at {0}:{1}: {2}'.format(
                kwargs['host'], kwargs['port'], exc))
        self._conn.autocommit(True)
        return self

    @staticmethod
    def quote(name):
        return '`{0}`'.format(name.replace('`', '``'))

    def sessions(self, name=None):
        """Connections the server accepted since it started (all databases: MySQL keeps no
        per-database count without ``userstat`` or the performance schema)."""
        return int(self._query("SHOW GLOBAL STATUS LIKE 'Connections'")[0][1])

    def backends(self, name):
        """Connection ids of the sessions whose current database is ``name``."""
        return [int(row[0]) for row in self._query(
            'SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND '
            'ID <> CONNECTION_ID() ORDER BY ID', [name])]

    def terminate(self, name, pids=None):
        """``KILL`` the sessions on ``name`` (only ``pids`` if given); returns those ended."""
        pids = self.backends(name) if pids is None else list(pids)
        ended = []
        for pid in pids:
            try:
                self._query('KILL {0:d}'.format(int(pid)))
                ended.append(pid)
            except Exception:  # noqa: B902 -- it ended on its own meanwhile
                pass
        return ended
