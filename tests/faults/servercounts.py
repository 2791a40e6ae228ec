"""What the servers count of a worker's sessions that ended without a goodbye: PostgreSQL's
``pg_stat_database.sessions_abandoned``, MariaDB's ``Aborted connection`` warnings."""
from __future__ import absolute_import

import io
import os
import re
import socket
import time


class PgAbandoned(object):
    """``pg_stat_database.sessions_abandoned`` of one database."""

    vendor = 'postgresql'

    def __init__(self, postgres, name):
        self.postgres = postgres
        self.name = name
        self.before = self.value()

    def value(self):
        self.postgres._query('SELECT pg_stat_clear_snapshot()')
        rows = self.postgres._query(
            'SELECT sessions_abandoned FROM pg_stat_database WHERE datname = %s', [self.name])
        return int(rows[0][0] or 0) if rows else 0

    def backends(self):
        return self.postgres.backends(self.name)

    def count(self):
        return self.value() - self.before


class MariaAborted(object):
    """``Aborted connection`` warnings of the server's error log for one database."""

    vendor = 'mysql'

    def __init__(self, stats, name, log_path):
        self.stats = stats
        self.name = name
        self.log_path = log_path
        self.pattern = re.compile(r"Aborted connection (\d+) to db: '{0}'".format(
            re.escape(name)))
        self.offset = os.path.getsize(log_path)
        self.clients_before = self.aborted_clients()

    def aborted_clients(self):
        """The server-wide counter (any client of the server moves it)."""
        return int(self.stats._query("SHOW GLOBAL STATUS LIKE 'Aborted_clients'")[0][1])

    def ids(self):
        with io.open(self.log_path, 'rb') as fh:
            fh.seek(self.offset)
            text = fh.read().decode('utf-8', 'replace')
        return sorted(set(int(found) for found in self.pattern.findall(text)))

    def backends(self):
        return self.stats.backends(self.name)

    def count(self):
        return len(self.ids())


def settled(counter, timeout=20.0, interval=0.25, reads=4, running=False):
    """``counter.count()`` once no session is left on its database (unless the worker is still
    ``running``) and ``reads`` reads in a row agree (servers count a session a moment after it
    ended); the last value read after ``timeout``."""
    deadline = time.time() + timeout
    values = []
    while True:
        values.append(counter.count())
        if (len(values) >= reads and len(set(values[-reads:])) == 1 and
                (running or not counter.backends())):
            return values[-1]
        if time.time() > deadline:
            return values[-1]
        time.sleep(interval)


def mariadb_error_log(mariadb, name, missing):
    """The server's error log, once seen to report a connection to ``name`` dropped without a
    goodbye (as a process that exits with it open does)."""
    rows = mariadb._query("SHOW VARIABLES LIKE 'log_error'")
    path = rows[0][1] if rows else ''
    if not path or not os.path.isabs(path) or not os.access(path, os.R_OK):
        missing('the MariaDB error log ({0!r}) cannot be read here: aborted connections of '
                'the worker cannot be told from other clients\''.format(path))
    counter = MariaAborted(mariadb, name, path)
    import pymysql
    settings = dict(host='127.0.0.1', user='root', port=3306)
    from celery_django_fixup.harness.demo.cdf_demo import dburl
    parsed = dburl.parse(mariadb.url(name))
    settings.update(host=parsed['HOST'] or '127.0.0.1', user=parsed['USER'] or 'root',
                    port=int(parsed['PORT'] or 3306), password=parsed['PASSWORD'])
    probe = pymysql.connect(db=name, connect_timeout=5, **settings)
    cursor = probe.cursor()
    cursor.execute('SELECT CONNECTION_ID()')
    probe_id = cursor.fetchone()[0]
    # No COM_QUIT: the server sees the connection dropped, as when a process exits with it.
    probe._sock.shutdown(socket.SHUT_RDWR)
    probe._sock.close()
    deadline = time.time() + 10
    while probe_id not in counter.ids():
        if time.time() > deadline:
            missing('the MariaDB server does not log aborted connections (log_warnings < 2?): '
                    'the worker\'s cannot be counted')
        time.sleep(0.1)
    return MariaAborted(mariadb, name, path)
