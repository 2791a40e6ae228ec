"""The patched ``DjangoWorkerFixup``: Celery's own, with the connection handling made safe.

It reads as a diff against upstream (``celery.fixups.django``): only the methods whose
behaviour changes are overridden, with Celery 4.4.4's names and signatures, and each says why.
"""
from __future__ import absolute_import

import os

from celery import signals
from celery.fixups import django as upstream
from celery.utils.log import get_logger

from . import policy, versions
from .connections import LazyHealthCheck, discard, for_each
from .settings import WorkerSettings

__all__ = ('DjangoWorkerFixup', 'MARKER', 'OVERRIDES', 'upstream_class')

logger = get_logger(__name__)

#: Class attribute that marks the patched class (and tells it from the one it replaces).
MARKER = '__celery_django_fixup__'


def upstream_class():
    """Celery's own ``DjangoWorkerFixup``, even when the patched one is bound in its place."""
    cls = upstream.DjangoWorkerFixup
    while MARKER in vars(cls):
        cls = cls.__bases__[0]
    return cls


class DjangoWorkerFixup(upstream_class()):
    """Celery's ``DjangoWorkerFixup`` that reuses connections as ``CONN_MAX_AGE`` says, safely.

    - at task boundaries a connection is closed only when Django would close it at a request
      boundary, and always after a task that did not succeed, or when it was left inside a
      transaction;
    - a connection kept from an earlier task is checked the first time the next task uses it;
    - the worker's main process and each prefork child start with no connection;
    - greenlet pools close at the end of every task, as upstream does.
    """

    __celery_django_fixup__ = True  # MARKER

    def __init__(self, app):
        super(DjangoWorkerFixup, self).__init__(app)
        # Raise a clear error at worker start for a value we cannot use.
        self.settings = WorkerSettings(app, self._settings)
        self.db_reuse_max = self.settings.db_reuse_max
        self.health_check = LazyHealthCheck() if self.settings.health_checks else None
        self.worker = None

    def on_worker_init(self, sender=None, **kwargs):
        # Upstream's DjangoFixup.on_worker_init does not pass the worker on; our own
        # worker_init receiver (see patch.py) does, so the pool is known before any task runs.
        self.worker = sender

    @property
    def is_green_pool(self):
        return policy.is_green_pool(getattr(self.worker, 'pool_cls', None))

    def install(self):
        # Upstream connects beat_embedded_init to close_database (a non-forced close since 4.2),
        # but embedded beat is a process forked from the worker: treat it like a pool child.
        signals.beat_embedded_init.connect(self.on_beat_embedded_init)
        signals.worker_ready.connect(self.on_worker_ready)
        signals.task_prerun.connect(self.on_task_prerun)
        signals.task_postrun.connect(self.on_task_postrun)
        signals.worker_process_init.connect(self.on_worker_process_init)
        # Forced: the main process must hold no connection when it forks the pool (celery#4878).
        self._close_database(force=True)
        self.close_cache()
        return self

    def uninstall(self):
        """Disconnect the signal handlers :meth:`install` connected."""
        signals.beat_embedded_init.disconnect(self.on_beat_embedded_init)
        signals.worker_ready.disconnect(self.on_worker_ready)
        signals.task_prerun.disconnect(self.on_task_prerun)
        signals.task_postrun.disconnect(self.on_task_postrun)
        signals.worker_process_init.disconnect(self.on_worker_process_init)
        return self

    def on_worker_process_init(self, **kwargs):
        # Child process must validate models again if on Windows,
        # or if they were started using execv.
        if os.environ.get('FORKED_BY_MULTIPROCESSING'):
            self.validate_models()
        # Upstream 4.2-4.3 follows the fd close with a non-forced close, a no-op when
        # CONN_MAX_AGE is not 0: the child kept a wrapper around the socket it had just closed
        # (Bad file descriptor, then hung workers: celery#4878, celery#5483).
        self._close_inherited_connections()
        self.close_cache()

    def on_beat_embedded_init(self, **kwargs):
        self._close_inherited_connections()
        self.close_cache()

    def _close_inherited_connections(self):
        """Drop every connection inherited from the parent without touching its socket."""
        # Close the file descriptors first, with no network IO: a close() that talks to the
        # server would end the session the parent (or a sibling) still holds.
        for_each(self._db.connections, self._close_db_fd, 'close the inherited socket of')
        self._close_database(force=True)

    def _close_db_fd(self, conn):
        if conn.connection is not None:
            self._maybe_close_db_fd(versions.fd_owner(conn))

    def _maybe_close_db_fd(self, fd):
        # Upstream catches only Django's InterfaceError, but psycopg2 and psycopg raise their
        # own from fileno() on a connection that is already closed (celery#9310).
        try:
            upstream._maybe_close_fd(fd)
        except Exception as exc:  # noqa: B902 -- nothing to close on a dead connection
            logger.debug('celery-django-fixup: no socket to close: %r', exc)

    def on_task_prerun(self, sender, **kwargs):
        """Called before every task."""
        if not getattr(sender.request, 'is_eager', False):
            self.close_database()
            if self.health_check is not None:
                for conn in self._db.connections.all():
                    self.health_check.arm(conn)

    def on_task_postrun(self, sender, **kwargs):
        # See https://groups.google.com/group/django-users/
        #            browse_thread/thread/78200863d0c07c6d/
        if not getattr(sender.request, 'is_eager', False):
            if self.health_check is not None:
                for conn in self._db.connections.all():
                    self.health_check.disarm(conn)
            if self.is_green_pool or not policy.task_succeeded(kwargs.get('state')):
                # Greenlet pools: connections are per greenlet and die unclosed with it.
                # Failed tasks: see policy.task_succeeded.
                self._close_database(force=True)
            self.close_database()
            self.close_cache()

    def close_database(self, **kwargs):
        if not self.db_reuse_max:
            return self._close_database()
        if self._db_recycles >= self.db_reuse_max * 2:
            self._db_recycles = 0
            # Upstream's periodic close stopped forcing a reconnect in 4.2 (celery#6216).
            self._close_database(force=True)
        else:
            # Between periodic closes upstream keeps connections whatever their age; so do we,
            # unless one is unsafe to hand to the next task.
            for_each(self._db.connections, self._close_if_unsafe, 'close')
        self._db_recycles += 1

    def _close_database(self, force=False):
        for_each(self._db.connections,
                 discard if force else self._close_if_unusable_or_obsolete, 'close')

    def _close_if_unusable_or_obsolete(self, conn):
        # What Django does at the end of a request, and also drop a connection that a task
        # left inside a transaction: Django's check does not look at that.
        if not self._close_if_unsafe(conn):
            conn.close_if_unusable_or_obsolete()

    def _close_if_unsafe(self, conn):
        reason = policy.reason_to_discard(conn)
        if reason is None and conn.connection is not None and conn.errors_occurred:
            # As Django's close_if_unusable_or_obsolete does.
            if conn.is_usable():
                conn.errors_occurred = False
            else:
                reason = 'unusable after an error'
        if reason is not None:
            logger.debug('celery-django-fixup: closing %r: %s', conn.alias, reason)
            discard(conn)
        return reason


#: Each method of Celery's class that the patched one overrides, and why (``celery-django-fixup
#: diff`` prints this; a unit test keeps it in step with the class).
OVERRIDES = {
    '__init__': 'validates the settings and sets up the lazy health check',
    'install': 'forced close in the main process before it forks; embedded beat handled like a '
               'pool child',
    'on_worker_process_init': 'closes inherited sockets, then forces the close (4.2-4.3 did not)',
    '_maybe_close_db_fd': "also ignores the driver's own errors from fileno() (celery#9310)",
    'on_task_prerun': 'arms the health check of connections kept from the previous task',
    'on_task_postrun': 'forced close after a task that did not succeed, and in greenlet pools',
    'close_database': 'the CELERY_DB_REUSE_MAX close is forced; unsafe connections still closed',
    '_close_database': 'drops connections left in a transaction, never skips an alias on error',
}
