"""The mechanics, on real Django connection wrappers (SQLite in memory)."""
from __future__ import absolute_import

import socket

import pytest

from django.db import connections, transaction

from celery_django_fixup.connections import (
    LazyHealthCheck, discard, for_each, socket_is_quiet)

try:
    from unittest import mock
except ImportError:  # Python 2
    import mock
from fakes import FakeConnection, FakeConnectionHandler


@pytest.fixture
def conn():
    conn = connections['default']
    conn.ensure_connection()
    yield conn
    conn.close()


def test_discard_resets_a_wrapper_left_inside_an_atomic_block(conn):
    block = transaction.atomic()
    block.__enter__()  # a task that never left its atomic block
    assert conn.in_atomic_block
    discard(conn)
    assert conn.connection is None and not conn.in_atomic_block and not conn.needs_rollback
    # The next task can use the alias again, in and out of atomic blocks.
    with transaction.atomic():
        conn.cursor().execute('SELECT 1')
    assert conn.get_autocommit()


def test_plain_close_would_leave_it_broken(conn):
    # What discard() guards against: Django keeps the closed DB-API connection until the block
    # exits, which after a task never happens.
    block = transaction.atomic()
    block.__enter__()
    conn.close()
    assert conn.connection is not None and conn.closed_in_transaction
    discard(conn)
    assert conn.connection is None and not conn.closed_in_transaction


def test_discard_closed_connection_is_a_no_op(conn):
    conn.close()
    discard(conn)
    assert conn.connection is None


def test_health_check_armed_once_and_removed_on_use(conn):
    check = LazyHealthCheck()
    check.arm(conn)
    check.arm(conn)
    assert check.is_armed(conn)
    with mock.patch.object(conn, 'is_usable', return_value=True) as is_usable:
        conn.cursor().execute('SELECT 1')
        conn.cursor().execute('SELECT 1')
    assert is_usable.call_count == 1
    assert not check.is_armed(conn)


def test_health_check_reconnects_a_broken_connection(conn):
    check = LazyHealthCheck()
    old = conn.connection
    check.arm(conn)
    with mock.patch.object(conn, 'is_usable', return_value=False):
        conn.cursor().execute('SELECT 1')
    assert conn.connection is not None and conn.connection is not old


def test_health_check_runs_before_atomic_touches_the_connection(conn):
    # atomic() asks for autocommit first: the check must happen then, outside the block.
    check = LazyHealthCheck()
    check.arm(conn)
    with mock.patch.object(conn, 'is_usable', return_value=False) as is_usable:
        with transaction.atomic():
            assert is_usable.call_count == 1
            conn.cursor().execute('SELECT 1')


class SocketConnection(object):
    """A DB-API connection that exposes its socket as psycopg2's does (``fileno``, ``closed``)."""

    def __init__(self, sock):
        self.sock = sock
        self.closed = 0

    def fileno(self):
        return self.sock.fileno()


@pytest.fixture
def sockets():
    ours, server = socket.socketpair()
    yield SocketConnection(ours), server
    ours.close()
    server.close()


def test_idle_socket_with_nothing_to_read_is_quiet(sockets):
    dbapi, _ = sockets
    assert socket_is_quiet(dbapi)


@pytest.mark.parametrize('server_does', ['sends', 'closes', 'resets'])
def test_a_server_that_ends_the_session_is_noticed(sockets, server_does):
    # pg_terminate_backend, a shutdown, an idle timeout: an error message, then the socket closed.
    dbapi, server = sockets
    if server_does == 'sends':
        server.sendall(b'E')
    elif server_does == 'closes':
        server.close()
    else:
        server.shutdown(socket.SHUT_RDWR)
    assert not socket_is_quiet(dbapi)


def test_anything_unknown_means_the_full_check(sockets):
    dbapi, _ = sockets
    dbapi.closed = 2
    assert not socket_is_quiet(dbapi)
    assert not socket_is_quiet(object())  # no fileno (SQLite, PyMySQL)
    assert not socket_is_quiet(mock.Mock())  # fileno() not an int
    closed = socket.socket()
    stale = SocketConnection(closed)
    closed.close()
    assert not socket_is_quiet(stale)  # fileno() raises / -1


def test_health_check_skips_the_round_trip_on_a_quiet_socket(conn, sockets):
    dbapi, server = sockets
    check = LazyHealthCheck()
    for server_does, round_trips in [('nothing', 0), ('sends', 1)]:
        if server_does == 'sends':
            server.sendall(b'E')
        check.arm(conn)
        with mock.patch('celery_django_fixup.connections.socket_is_quiet',
                        side_effect=lambda _: socket_is_quiet(dbapi)):
            with mock.patch.object(conn, 'is_usable', return_value=True) as is_usable:
                conn.cursor().execute('SELECT 1')
        assert is_usable.call_count == round_trips, server_does


def test_disarm(conn):
    check = LazyHealthCheck()
    check.arm(conn)
    check.disarm(conn)
    with mock.patch.object(conn, 'is_usable') as is_usable:
        conn.cursor().execute('SELECT 1')
    is_usable.assert_not_called()


def test_for_each_logs_the_alias_and_goes_on(caplog):
    seen = []

    def action(c):
        seen.append(c.alias)
        if c.alias == 'a':
            raise ValueError('cannot')

    for_each(FakeConnectionHandler(FakeConnection('a'), FakeConnection('b')), action, 'close')
    assert seen == ['a', 'b']
    assert "could not close database connection 'a'" in caplog.text
