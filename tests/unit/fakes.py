"""A stand-in for a Django connection wrapper that records what was done to it."""
from __future__ import absolute_import


class FakeConnection(object):
    """Has the attributes and methods of ``BaseDatabaseWrapper`` the fix-up relies on."""

    def __init__(self, alias='default', connected=True, usable=True, autocommit=True,
                 close_raises=None):
        self.alias = alias
        self.settings_dict = {'AUTOCOMMIT': True, 'CONN_MAX_AGE': 600}
        self.connection = FakeDbapiConnection() if connected else None
        self.autocommit = autocommit
        self.in_atomic_block = False
        self.closed_in_transaction = False
        self.needs_rollback = False
        self.errors_occurred = False
        self.savepoint_ids = []
        self.commit_on_exit = True
        self.usable = usable
        self.close_raises = close_raises
        self.calls = []

    def close(self):
        # Django's close(), reduced to what the fix-up depends on.
        self.calls.append('close')
        if self.closed_in_transaction or self.connection is None:
            return
        try:
            if self.close_raises is not None:
                raise self.close_raises
        finally:
            if self.in_atomic_block:
                self.closed_in_transaction = True
                self.needs_rollback = True
            else:
                self.connection = None

    def close_if_unusable_or_obsolete(self):
        self.calls.append('close_if_unusable_or_obsolete')
        if self.close_raises is not None:
            raise self.close_raises

    def is_usable(self):
        self.calls.append('is_usable')
        return self.usable

    def ensure_connection(self):
        self.calls.append('ensure_connection')
        if self.connection is None:
            self.connection = FakeDbapiConnection()


class FakeDbapiConnection(object):
    fd = 1000
    closed = 0

    def fileno(self):
        return self.fd

    def close(self):
        self.closed = 1


class FakeConnectionHandler(object):
    def __init__(self, *conns):
        self.conns = list(conns)

    def all(self, initialized_only=False):
        return list(self.conns)


class FakeThreadLocalHandler(object):
    """Django's ``connections``: each thread has connections of its own (``make()`` builds
    them the first time a thread asks)."""

    def __init__(self, make):
        import threading
        self.make = make
        self.local = threading.local()

    def all(self):
        if not hasattr(self.local, 'conns'):
            self.local.conns = list(self.make())
        return list(self.local.conns)


def _pymysql_connection_class():
    try:
        from pymysql.connections import Connection
    except ImportError:
        return object
    return Connection


class FakePyMySQL(_pymysql_connection_class()):
    """A PyMySQL connection, as far as the fix-up can tell (its class, no ``fileno()``, the
    socket in ``_sock`` read through the buffered ``_rfile``), that never touches a server.

    ``broken``: the server ended the session (or the socket holds packets of an interrupted
    reply). ``ping()`` then does what PyMySQL's does: raise with ``reconnect=False``, and with
    the default ``reconnect=True`` open a new session in place, without Django knowing.
    """

    def __init__(self, broken=False, unread=b''):
        import io
        import socket
        self._sock, self._peer = socket.socketpair()
        if unread:
            self._peer.sendall(unread)
        self._rfile = io.BufferedReader(io.FileIO(self._sock.fileno(), 'rb', closefd=False))
        self.broken = broken
        self.reconnects = 0
        self.pings = []
        self.closed_by_client = False

    @property
    def open(self):
        return self._sock is not None

    def ping(self, reconnect=True):
        self.pings.append(reconnect)
        if self.broken:
            if not reconnect:
                import pymysql
                raise pymysql.err.OperationalError(2013, 'Lost connection to MySQL server')
            self.reconnects += 1
            self.broken = False

    def kill(self):
        """The server ends the session: its end of the socket closes (the socket turns
        readable, at end of file), and the next ping fails."""
        self.broken = True
        if self._peer is not None:
            self._peer.close()
            self._peer = None

    def close(self):
        self.closed_by_client = True
        for sock in (self._sock, self._peer):
            if sock is not None:
                sock.close()
        self._sock = self._peer = None

    def __del__(self):
        pass


FakePyMySQL.__module__ = 'pymysql.connections'


class FakeMysqlConnection(FakeConnection):
    """A Django MySQL wrapper on PyMySQL: ``is_usable()`` is Django 1.11-3.2's
    (``connection.ping()``, driver errors mean unusable)."""

    vendor = 'mysql'

    def __init__(self, alias='default', **kwargs):
        dbapi = kwargs.pop('dbapi', None)
        super(FakeMysqlConnection, self).__init__(alias, **kwargs)
        self.connection = dbapi if dbapi is not None else FakePyMySQL()
        self.created = 0

    def is_usable(self):
        import pymysql
        self.calls.append('is_usable')
        try:
            self.connection.ping()
        except pymysql.err.Error:
            return False
        return True

    def close(self):
        dbapi = self.connection
        super(FakeMysqlConnection, self).close()
        if self.connection is None and dbapi is not None:
            dbapi.close()

    def ensure_connection(self):
        # Django's connect(): a new DB-API connection, and connection_created.
        self.calls.append('ensure_connection')
        if self.connection is None:
            self.connection = FakePyMySQL()
            self.created += 1


def make_fixup(app, *conns, **conf):
    """The patched worker fix-up of ``app``, on these fake connections and a mocked cache."""
    from celery_django_fixup.worker import DjangoWorkerFixup
    try:
        from unittest import mock
    except ImportError:  # Python 2
        import mock
    app.conf.update(conf)
    fixup = DjangoWorkerFixup(app)
    fixup._db = mock.Mock(name='django.db')
    fixup._db.connections = FakeConnectionHandler(*conns)
    fixup._cache = mock.Mock(name='django.core.cache')
    return fixup
