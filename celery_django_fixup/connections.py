"""How connections are closed, reset and checked: the mechanics, with no policy.

When to do any of this is decided in :mod:`celery_django_fixup.policy` and the worker fix-up.
"""
from __future__ import absolute_import

import select

from celery.utils.log import get_logger

__all__ = ('for_each', 'discard', 'socket_is_quiet', 'LazyHealthCheck')

logger = get_logger(__name__)


def for_each(connections, action, what):
    """Call ``action(conn)`` for every alias of ``connections``.

    An alias whose action raises is logged under its name and does not keep the others from
    being handled: since Celery 4.0 signal handlers' errors are only logged, so an exception
    here would silently leave the remaining aliases open.
    """
    for conn in connections.all():
        try:
            action(conn)
        except Exception as exc:  # noqa: B902 -- any driver error, logged with its alias
            logger.warning('celery-django-fixup: could not %s database connection %r: %r',
                           what, conn.alias, exc, exc_info=True)


def discard(conn):
    """Close ``conn`` whatever its state and reset the wrapper, so its next use reconnects.

    Django's ``close()`` leaves a wrapper that is inside an atomic block holding the closed
    DB-API connection (``closed_in_transaction``), waiting for the block to exit. After a task
    has returned no block will exit, so the wrapper's transaction state is reset here too:
    the next task then opens a fresh connection instead of failing on a closed one.
    """
    try:
        conn.close()
    finally:
        # What connect() resets, reset now: atomic() looks at these before it connects.
        conn.connection = None
        conn.in_atomic_block = False
        conn.closed_in_transaction = False
        conn.needs_rollback = False
        conn.savepoint_ids = []
        conn.commit_on_exit = True
        if hasattr(conn, 'atomic_blocks'):
            conn.atomic_blocks = []


def socket_is_quiet(dbapi_conn):
    """Whether the socket of an idle DB-API connection has nothing to read, asked without
    waiting (a zero-timeout ``poll()``, about 2 microseconds).

    An idle client is sent nothing by its server unless the server is ending the session:
    ``pg_terminate_backend``, a shutdown or restart, ``idle_session_timeout`` and MySQL's
    ``wait_timeout`` all send an error and/or close the socket, which makes it readable. So a
    quiet socket needs no round trip; anything else (readable, an error, a closed connection,
    or a driver that does not expose its socket, such as SQLite or PyMySQL) is answered
    ``False`` and the caller falls back to ``is_usable()``. A readable socket can also be a
    harmless ``NOTICE`` or TLS message: ``False`` then costs the round trip and no more.
    """
    fileno = getattr(dbapi_conn, 'fileno', None)
    if fileno is None or getattr(dbapi_conn, 'closed', 0):
        return False
    try:
        fd = fileno()
        if not isinstance(fd, int) or fd < 0:
            return False
        if hasattr(select, 'poll'):
            poller = select.poll()
            poller.register(fd, select.POLLIN | select.POLLPRI)
            return not poller.poll(0)
        readable, _, broken = select.select([fd], [], [fd], 0)
        return not readable and not broken
    except Exception:  # noqa: B902 -- any doubt means the full check
        return False


class LazyHealthCheck(object):
    """Check a kept connection once, the first time the next task uses it.

    Django 4.1 added this as ``CONN_HEALTH_CHECKS``; the Django releases this package supports
    do not have it. Arming shadows the wrapper's ``ensure_connection`` with an instance
    attribute, which every path to the database (cursors, ``atomic()``, autocommit changes)
    goes through first: a task that never touches the database costs nothing, and a
    connection that broke while idle (server restart, ``pg_terminate_backend``, idle timeout)
    is replaced before the task sees it. The check is :func:`socket_is_quiet`, then, unless
    the socket was quiet, ``is_usable()`` (one round trip).
    """

    attribute = 'ensure_connection'

    def arm(self, conn):
        if conn.connection is None or self.is_armed(conn):
            return
        original = conn.ensure_connection

        def ensure_connection():
            self.disarm(conn)
            if conn.connection is not None and not conn.in_atomic_block and \
                    not socket_is_quiet(conn.connection) and not conn.is_usable():
                logger.info('celery-django-fixup: database connection %r was broken while '
                            'idle; reconnecting', conn.alias)
                try:
                    discard(conn)
                except Exception as exc:  # noqa: B902 -- the wrapper is reset all the same
                    logger.debug('celery-django-fixup: closing broken connection %r: %r',
                                 conn.alias, exc)
            return original()

        setattr(conn, self.attribute, ensure_connection)

    def disarm(self, conn):
        vars(conn).pop(self.attribute, None)

    def is_armed(self, conn):
        return self.attribute in vars(conn)
