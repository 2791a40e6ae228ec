"""``CDF_MODE=unsafe``: Celery's worker fix-up with plain connection reuse and no safety.

Every close is Django's ``close_if_unusable_or_obsolete()``, at task boundaries and at worker
start; a prefork child closes the inherited sockets and then drops the connections, as Celery
4.4.4 does. No check before reuse and no close after a failed task: the cheapest possible
reuse, the upper bound a benchmark compares the safe fix-up with. Never use this for real.
"""
from __future__ import absolute_import

from celery.fixups import django as upstream


class UnsafeWorkerFixup(upstream.DjangoWorkerFixup):

    def _close_database(self, force=False):
        for conn in self._db.connections.all():
            try:
                conn.close_if_unusable_or_obsolete()
            except self.interface_errors:
                pass

    def on_worker_process_init(self, **kwargs):
        for conn in self._db.connections.all():
            if conn.connection is not None:
                self._maybe_close_db_fd(conn.connection)
        for conn in self._db.connections.all():
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
