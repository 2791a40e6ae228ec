"""How connections are closed, dropped, reset and checked: the mechanics, with no policy.

When to do any of this is decided in :mod:`celery_django_fixup.policy` and the worker fix-up.
"""
from __future__ import absolute_import

import os
import select

from celery.utils.log import get_logger

from . import versions

__all__ = ('for_each', 'discard', 'reset', 'drop_inherited', 'drop_inherited_pool', 'close_quietly',
           'close_pool', 'socket_fd', 'socket_is_quiet', 'is_usable', 'check',
           'LazyHealthCheck')

logger = get_logger(__name__)

#: DB-API connections dropped without being closed (see :func:`drop_inherited`). Kept
#: referenced for the life of the process: a driver closes its socket when the object is
#: freed, and that socket's number may belong to another file by then.
_orphans = []


def orphan(dbapi):
    """Keep ``dbapi`` referenced, never closed, for the life of the process."""
    _orphans.append(dbapi)


def for_each(connections, action, what):
    """Call ``action(conn)`` for every alias of ``connections``.

    An alias whose action raises is logged under its name and does not keep the others from
    being handled: since Celery 4.0 signal handlers' errors are only logged, so an exception
    here would silently leave the remaining aliases open.
    """
    for conn in versions.initialized_connections(connections):
        try:
            action(conn)
        except Exception as exc:  # noqa: B902 -- any driver error, logged with its alias
            logger.warning('celery-django-fixup: could not %s database connection %r: %r',
                           what, conn.alias, exc, exc_info=True)


def reset(conn):
    """Put the wrapper back in the state ``connect()`` starts from, without touching the
    DB-API connection: ``atomic()`` looks at these before it connects."""
    conn.connection = None
    conn.in_atomic_block = False
    conn.closed_in_transaction = False
    conn.needs_rollback = False
    conn.savepoint_ids = []
    conn.commit_on_exit = True
    if hasattr(conn, 'atomic_blocks'):
        conn.atomic_blocks = []


def discard(conn):
    """Close ``conn`` whatever its state and reset the wrapper, so its next use reconnects.

    Django's ``close()`` leaves a wrapper that is inside an atomic block holding the closed
    DB-API connection (``closed_in_transaction``), waiting for the block to exit. After a task
    has returned no block will exit, so the wrapper's transaction state is reset here too:
    the next task then opens a fresh connection instead of failing on a closed one.

    With a Django connection pool (Django 5.1+), ``close()`` hands the connection back to the
    pool for the next task to take: the connection is closed first, so that the pool drops it
    and opens a new one in its place.
    """
    try:
        if conn.connection is not None and versions.existing_pool(conn) is not None:
            conn.connection.close()
        conn.close()
    finally:
        reset(conn)


def pool_check(dbapi):
    """``check`` of a Django connection pool (psycopg_pool calls it on every ``getconn()``):
    a connection whose idle socket is quiet is handed out as it is; any other gets
    psycopg_pool's own check (one round trip), which raises if the server ended the session,
    and the pool then drops it and hands out another."""
    if socket_is_quiet(dbapi):
        return
    from psycopg_pool import ConnectionPool
    ConnectionPool.check_connection(dbapi)


def check_pooled(conn):
    """Make the Django connection pool of ``conn``'s alias check connections before handing
    them out, unless it has a check already. Django gives the pool a check only with
    ``CONN_HEALTH_CHECKS``, and its own per-request check is a no-op with a pool; between tasks
    connections wait in the pool, where the server may end them."""
    pool = versions.existing_pool(conn)
    if pool is not None and getattr(pool, '_check', False) is None:
        pool._check = pool_check


def close_pool(conn):
    """Close the Django connection pool of ``conn``'s alias in this process, if there is one
    (Django's ``close_pool()``, without creating a pool to close)."""
    if versions.existing_pool(conn) is not None:
        conn.close_pool()


def drop_inherited(conn, owns_socket=True):
    """Forget a connection this process inherited from its parent, with no network IO.

    The server session is the parent's: nothing may be written to it. With ``owns_socket``
    (right after a fork, the process has its own copy of the socket's file descriptor) the
    descriptor is pointed at ``/dev/null`` first, so whatever the driver sends when it closes
    (a Terminate message, MySQL's COM_QUIT, a TLS close_notify) goes nowhere, and the driver
    then releases the number itself. Without it (embedded beat has already closed every
    inherited descriptor, and the numbers may belong to its own files by now), or when the
    driver does not expose its socket, the DB-API connection is never closed nor freed.
    """
    dbapi = conn.connection
    if dbapi is not None and not (owns_socket and close_quietly(dbapi)):
        _orphans.append(dbapi)
    reset(conn)


def close_quietly(dbapi):
    """Close a DB-API connection whose socket this process has a copy of, sending nothing to
    the server; False (and nothing done) if its socket cannot be found."""
    fd = socket_fd(dbapi)
    if fd is None or not _point_at_devnull(fd):
        return False
    try:
        dbapi.close()
    except Exception as exc:  # noqa: B902 -- nothing it says can matter now
        logger.debug('celery-django-fixup: closing an inherited connection: %r', exc)
    return True


def drop_inherited_pool(conn, owns_sockets=True):
    """Forget the Django connection pool this process inherited for ``conn``'s alias, with no
    network IO: its idle connections' sockets are pointed at ``/dev/null`` and closed (with
    ``owns_sockets``, as in :func:`drop_inherited`), and the pool itself, whose worker threads
    did not survive the fork, is never closed (that would talk to the parent's sessions) nor
    freed. The next use creates a pool of this process."""
    pool = versions.forget_pool(conn)
    if pool is None:
        return
    _orphans.append(pool)
    if not owns_sockets:
        return
    # psycopg_pool keeps its idle connections in ``_pool``; it has no public way to list them.
    for dbapi in list(getattr(pool, '_pool', None) or ()):
        close_quietly(dbapi)


def _point_at_devnull(fd):
    try:
        null = os.open(os.devnull, os.O_RDWR)
    except OSError:
        return False
    try:
        os.dup2(null, fd)
        return True
    except OSError:
        return False
    finally:
        os.close(null)


def socket_fd(dbapi_conn):
    """The file descriptor of a DB-API connection's socket, or None if it has none or the
    driver does not say: ``fileno()`` (psycopg2, psycopg 3), PyMySQL's ``_sock``."""
    if dbapi_conn is None or getattr(dbapi_conn, 'closed', 0):
        return None
    fileno = getattr(dbapi_conn, 'fileno', None)
    if fileno is None:
        sock = getattr(dbapi_conn, '_sock', None)  # PyMySQL: None once closed
        fileno = getattr(sock, 'fileno', None)
    if fileno is None:
        return None
    try:
        fd = fileno()
    except Exception:  # noqa: B902 -- psycopg2 and psycopg raise their own when closed
        return None
    if not isinstance(fd, int) or isinstance(fd, bool) or fd < 0:
        return None
    return fd


def socket_is_quiet(dbapi_conn):
    """Whether the socket of an idle DB-API connection has nothing to read, asked without
    waiting (a zero-timeout ``poll()``, about 2 microseconds).

    An idle client is sent nothing by its server unless the server is ending the session:
    ``pg_terminate_backend``, a shutdown or restart, ``idle_session_timeout`` and MySQL's
    ``wait_timeout`` all send an error and/or close the socket, which makes it readable; so
    does the late answer to a query a task was interrupted in. A quiet socket needs no round
    trip; anything else (readable, an error, a closed connection, or a driver that does not
    expose its socket, such as SQLite) is answered ``False`` and the caller falls back to
    :func:`is_usable`. A readable socket can also be a harmless ``NOTICE`` or TLS message:
    ``False`` then costs the round trip and no more.
    """
    fd = socket_fd(dbapi_conn)
    if fd is None:
        return False
    try:
        if hasattr(select, 'poll'):
            poller = select.poll()
            poller.register(fd, select.POLLIN | select.POLLPRI)
            return not poller.poll(0)
        readable, _, broken = select.select([fd], [], [fd], 0)
        return not readable and not broken
    except Exception:  # noqa: B902 -- any doubt means the full check
        return False


def _is_pymysql(dbapi_conn):
    return type(dbapi_conn).__module__.startswith('pymysql')


def is_usable(conn):
    """Django's ``is_usable()``, except that the driver is never let reconnect by itself.

    Django's MySQL backend pings, and PyMySQL's ``ping()`` reconnects in place by default:
    the session would then be one Django never set up (no ``init_connection_state``, so no
    isolation level; no ``connection_created``; no new ``close_at``). A broken connection must
    be replaced through Django's ``connect()``.
    """
    dbapi = conn.connection
    if dbapi is not None and _is_pymysql(dbapi):
        try:
            dbapi.ping(reconnect=False)
        except Exception:  # noqa: B902 -- pymysql.err.Error and socket errors alike
            return False
        return True
    return conn.is_usable()


def check(conn):
    """Discard ``conn`` if the server ended its session; True if it was discarded.

    Never inside an atomic block (the caller's transaction is the caller's): a broken
    connection there fails the block, as it would without the check.
    """
    if conn.connection is None or conn.in_atomic_block:
        return False
    if socket_is_quiet(conn.connection) or is_usable(conn):
        versions.mark_health_check_done(conn)
        return False
    logger.info('celery-django-fixup: database connection %r was broken while idle; '
                'reconnecting', conn.alias)
    try:
        discard(conn)
    except Exception as exc:  # noqa: B902 -- the wrapper is reset all the same
        logger.debug('celery-django-fixup: closing broken connection %r: %r', conn.alias, exc)
    return True


class LazyHealthCheck(object):
    """Check a kept connection before it is used: once, the first time the next task uses it
    (``arm(conn)``), or before every use (``arm(conn, once=False)``), for processes where no
    task boundary comes to do it (the worker's main process, embedded beat).

    Django 4.1 added the per-request form of this as ``CONN_HEALTH_CHECKS``. Arming shadows
    the wrapper's ``ensure_connection`` with an instance attribute, which every path to the
    database (cursors, ``atomic()``, autocommit changes) goes through first: a task that never
    touches the database costs nothing, and a connection that broke while idle (server
    restart, ``pg_terminate_backend``, idle timeout) is replaced before it is used. The check
    is :func:`socket_is_quiet`, then, unless the socket was quiet, :func:`is_usable` (one
    round trip).
    """

    attribute = 'ensure_connection'

    def arm(self, conn, once=True):
        if self.is_armed(conn) or (once and conn.connection is None):
            return
        original = conn.ensure_connection

        def ensure_connection():
            if once:
                self.disarm(conn)
            check(conn)
            return original()

        ensure_connection.once = once
        setattr(conn, self.attribute, ensure_connection)
        # Django 4.1+'s own check (CONN_HEALTH_CHECKS) would run first, with a round trip.
        versions.mark_health_check_done(conn)

    def disarm(self, conn, once_only=False):
        armed = vars(conn).get(self.attribute)
        if armed is not None and (not once_only or getattr(armed, 'once', True)):
            del vars(conn)[self.attribute]

    def is_armed(self, conn):
        return self.attribute in vars(conn)
