"""``CDF_MODE=unsafe``: Celery's worker fix-up with plain connection reuse and no safety.

Every close is Django's ``close_if_unusable_or_obsolete()``, at task boundaries and at worker
start; with a Django connection pool (Django 5.1+, ``CONN_MAX_AGE = 0``) that hands the
connection back to the pool, which is never closed. A prefork child closes the inherited
sockets and then drops the connections (and a pool it inherited), as Celery 4.4.4 does. No
check before reuse and no close after a failed task: the cheapest possible reuse, the upper
bound a benchmark compares the safe fix-up with. Never use this for real.

Works with the worker fix-up of every Celery from 4.0 to 5.7 (5.6.1's ``__init__`` aside,
which recurses for any subclass): the hooks below take the arguments of all of them.
"""
from __future__ import absolute_import

import os

from celery.fixups import django as upstream

#: What a prefork child inherited and must never close nor free (closing would talk to the
#: parent's sessions, freeing would close a file descriptor number that is no longer theirs).
_ORPHANS = []


def _close_fd(dbapi):
    """Close the socket of an inherited DB-API connection without any network IO."""
    try:
        fd = dbapi.fileno()
    except Exception:  # noqa: B902 -- each driver has its own error for a closed connection
        return
    try:
        os.close(fd)
    except (OSError, TypeError):
        pass


class UnsafeWorkerFixup(upstream.DjangoWorkerFixup):

    def _close_database(self, force=False):
        # Celery 4.4.4-5.5 pass force; 5.6+ call it with no argument.
        for conn in self._db.connections.all():
            try:
                conn.close_if_unusable_or_obsolete()
            except self.interface_errors:
                pass

    def on_worker_process_init(self, **kwargs):
        conns = self._db.connections.all()
        for conn in conns:
            # A Django connection pool (5.1+) is per process: one inherited from the parent has
            # no worker threads here, and its idle connections are the parent's sessions.
            pools = getattr(type(conn), '_connection_pools', None)
            pool = pools.pop(conn.alias, None) if pools else None
            if pool is not None:
                _ORPHANS.append(pool)
                for dbapi in list(getattr(pool, '_pool', None) or ()):
                    _close_fd(dbapi)
        for conn in conns:
            if conn.connection is not None:
                _close_fd(conn.connection)
        for conn in conns:
            # (Not ``conn.pool``: reading it creates a pool.)
            if (conn.settings_dict.get('OPTIONS') or {}).get('pool'):
                # close() would hand the parent's session to this process's pool.
                if conn.connection is not None:
                    _ORPHANS.append(conn.connection)
                conn.connection = None
                continue
            try:
                conn.close()
            except self.interface_errors:
                pass
            except self.DatabaseError as exc:
                # What Celery 4.4.4 tolerates from closing a connection whose socket is gone.
                if 'closed' not in str(exc) and 'not connected' not in str(exc):
                    raise
        self.close_cache()


def install():
    """Make apps whose worker has not started yet use :class:`UnsafeWorkerFixup`."""
    upstream.DjangoWorkerFixup = UnsafeWorkerFixup
