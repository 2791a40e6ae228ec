"""The patched ``DjangoWorkerFixup``: Celery's own, with the connection handling made safe.

It reads as a diff against upstream (``celery.fixups.django``): only the methods whose
behaviour changes are overridden, with Celery 4.4.4's names and signatures, and each says why.
The handlers it adds are named ``on_<signal>``; :data:`OVERRIDES` lists every method with its
reason (``celery-django-fixup diff`` shows them against upstream's source).
"""
from __future__ import absolute_import

import os
import threading

from celery import signals
from celery.fixups import django as upstream
from celery.utils.log import get_logger

from . import policy, processes, versions
from .connections import (LazyHealthCheck, check_pooled, close_pool, discard,
                          drop_inherited, drop_inherited_pool, for_each, is_usable)
from .interruptions import SoftTimeLimitWatch
from .settings import WorkerSettings

__all__ = ('DjangoWorkerFixup', 'MARKER', 'OVERRIDES', 'upstream_class', 'installed')

logger = get_logger(__name__)

#: Class attribute that marks the patched class (and tells it from the one it replaces).
MARKER = '__celery_django_fixup__'

#: What a process of the worker is, for the fix-up: the one that runs ``worker_init`` (and,
#: with the solo and threads pools, the tasks), a prefork pool process, embedded beat.
MAIN, POOL_CHILD, BEAT = 'main', 'pool child', 'beat'

#: The fix-up of this process, for the fork hook (which cannot be unregistered).
_installed = []


def upstream_class():
    """Celery's own ``DjangoWorkerFixup``, even when the patched one is bound in its place."""
    cls = upstream.DjangoWorkerFixup
    while MARKER in vars(cls):
        cls = cls.__bases__[0]
    return cls


def installed():
    """The patched worker fix-ups installed in this process (or in the process it was forked
    from, whose fix-up goes on in a forked pool process)."""
    return list(_installed)


def _after_fork_in_child():
    for fixup in _installed:
        fixup.on_fork_in_child()


def _before_embedded_beat_closes_fds():
    for fixup in _installed[:1]:
        fixup.on_embedded_beat_start()


class DjangoWorkerFixup(upstream_class()):
    """Celery's ``DjangoWorkerFixup`` that reuses connections as ``CONN_MAX_AGE`` says, safely.

    - at task boundaries a connection is closed only when Django would close it at a request
      boundary, and always after a task that did not succeed, was interrupted by its soft
      time limit, or left it inside a transaction;
    - a connection kept from an earlier task is checked the first time the next task uses it;
      one used outside tasks (the main process, embedded beat) before every use;
    - no process starts with, or hands on, a connection it inherited: the main process forks
      the pool with none, and every forked process drops what it inherited with no IO;
    - every process closes its connections when it exits normally;
    - greenlet pools close at the end of every task.
    """

    __celery_django_fixup__ = True  # MARKER

    def __init__(self, app, worker=None):
        # Celery 5.6.1 builds a WorkController when given no worker (celery#10045).
        super(DjangoWorkerFixup, self).__init__(
            app, **versions.upstream_init_kwargs(upstream_class()))
        # Raise a clear error at worker start for a value we cannot use.
        self.settings = WorkerSettings(app, self._settings)
        self.db_reuse_max = self.settings.db_reuse_max
        self.health_check = LazyHealthCheck() if self.settings.health_checks else None
        self.soft_time_limit = SoftTimeLimitWatch()
        self.worker = worker
        self.role = MAIN
        # Per thread (per greenlet under eventlet and gevent): the task running, the last one
        # that ran, and the CELERY_DB_REUSE_MAX count.
        self._local = threading.local()

    def on_worker_init(self, sender=None, **kwargs):
        # Upstream's DjangoFixup.on_worker_init does not pass the worker on; our own
        # worker_init receiver (see patch.py) does, so the pool is known before any task runs.
        self.worker = sender

    @property
    def is_green_pool(self):
        return policy.is_green_pool(getattr(self.worker, 'pool_cls', None))

    def install(self):
        # Upstream connects beat_embedded_init to close_database (a non-forced close since 4.2),
        # but embedded beat is a process forked from the worker: see on_beat_embedded_init.
        signals.beat_embedded_init.connect(self.on_beat_embedded_init)
        if versions.upstream_connects_worker_ready(upstream_class()):
            signals.worker_ready.connect(self.on_worker_ready)
        signals.task_prerun.connect(self.on_task_prerun)
        signals.task_postrun.connect(self.on_task_postrun)
        signals.worker_process_init.connect(self.on_worker_process_init)
        # What upstream does not do at all: late failures, exits, connections outside tasks.
        for signal in versions.task_failure_signals():
            signal.connect(self.on_task_failure)
        signals.worker_process_shutdown.connect(self.on_worker_process_shutdown)
        signals.worker_shutdown.connect(self.on_worker_shutdown)
        self._connection_created().connect(self.on_connection_created)
        if self not in _installed:
            _installed.append(self)
        processes.on_fork_in_child(_after_fork_in_child)
        processes.on_embedded_beat_start(_before_embedded_beat_closes_fds)
        # The process the worker starts in: the solo pool (Celery 4.4+) sends
        # worker_process_init in it too, with no fork.
        self._install_pid = os.getpid()
        # Forced: the main process must hold no connection when it forks the pool (celery#4878).
        # But not inside a live atomic block: the testing worker (start_worker) is built inside
        # the test's transaction, which is the caller's to end.
        for_each(self._db.connections, self._close_unless_in_atomic_block, 'close')
        self.close_cache()
        return self

    def uninstall(self):
        """Disconnect the signal handlers :meth:`install` connected."""
        signals.beat_embedded_init.disconnect(self.on_beat_embedded_init)
        if versions.upstream_connects_worker_ready(upstream_class()):
            signals.worker_ready.disconnect(self.on_worker_ready)
        signals.task_prerun.disconnect(self.on_task_prerun)
        signals.task_postrun.disconnect(self.on_task_postrun)
        signals.worker_process_init.disconnect(self.on_worker_process_init)
        for signal in versions.task_failure_signals():
            signal.disconnect(self.on_task_failure)
        signals.worker_process_shutdown.disconnect(self.on_worker_process_shutdown)
        signals.worker_shutdown.disconnect(self.on_worker_shutdown)
        self._connection_created().disconnect(self.on_connection_created)
        if self in _installed:
            _installed.remove(self)
        return self

    @staticmethod
    def _connection_created():
        from django.db.backends.signals import connection_created
        return connection_created

    def _close_unless_in_atomic_block(self, conn):
        if conn.in_atomic_block:
            logger.debug('celery-django-fixup: leaving %r open: inside an atomic block',
                         conn.alias)
            return
        discard(conn)
        # A Django connection pool (5.1+) would be inherited with its connections by every
        # pool process, and its threads would not be.
        close_pool(conn)

    # -- processes -------------------------------------------------------------------------

    def on_connection_created(self, sender=None, connection=None, **kwargs):
        processes.record(connection)
        if self.health_check is not None:
            # Pooled connections wait in the pool, not in the wrapper, between tasks.
            check_pooled(connection)
        if self.guards_idle_connections and self.health_check is not None:
            # No task boundary comes to check this one: check it before every use.
            self.health_check.arm(connection, once=False)

    @property
    def guards_idle_connections(self):
        """Whether connections here are used outside tasks, with nothing between uses to
        check them: the main process (result writes of killed tasks, worker_init and
        worker_ready code) and embedded beat. With the solo and threads pools the tasks run in
        the main process too, and get the same check."""
        return self.role in (MAIN, BEAT)

    def on_fork_in_child(self):
        # Whatever forked (billiard's pool or beat, a task, a library a task calls), the child
        # must not use its parent's sessions, and must not end them: no IO on them at all.
        for_each(self._db.connections, self._drop_if_inherited, 'drop the inherited')

    def _drop_if_inherited(self, conn, owns_socket=True):
        if self.health_check is not None:
            self.health_check.disarm(conn)
        if processes.inherited(conn):
            drop_inherited(conn, owns_socket=owns_socket)
        drop_inherited_pool(conn, owns_sockets=owns_socket)

    def on_worker_process_init(self, **kwargs):
        # Child process must validate models again if on Windows,
        # or if they were started using execv.
        if os.environ.get('FORKED_BY_MULTIPROCESSING'):
            self.validate_models()
        if os.getpid() == getattr(self, '_install_pid', None):
            # The solo pool, in the worker's own process: nothing was inherited, and the
            # connections there may be in the caller's use (the testing worker in a TestCase).
            return
        self.role = POOL_CHILD
        # Upstream closes the fd, then closes the connection: 4.2-4.3 with a non-forced close,
        # a no-op when CONN_MAX_AGE is not 0 (Bad file descriptor, then hung workers:
        # celery#4878, celery#5483), and a close() that talks to the server with PyMySQL,
        # whose socket upstream cannot see (it ends the parent's session). Python 3.7+ did
        # this already at fork; this covers 2.7 and 3.6.
        for_each(self._db.connections, self._drop_if_inherited, 'drop the inherited')
        self.close_cache()

    def on_embedded_beat_start(self):
        # Before beat._Process.run() closes every inherited number (platforms.close_open_fds):
        # the event-loop pollers beat inherited would close their old numbers when freed,
        # whatever beat opened on them since (processes.close_inherited_pollers).
        closed = processes.close_inherited_pollers()
        if closed:
            logger.debug('celery-django-fixup: embedded beat closed %d inherited event-loop '
                         'poller(s)', closed)

    def on_beat_embedded_init(self, **kwargs):
        # beat._Process.run() has closed every inherited file descriptor before this signal,
        # and the scheduler may have opened files, sockets or its own database connection
        # since: the numbers the inherited sockets had may be theirs now. Forget what was
        # inherited without closing anything; keep what beat opened itself.
        self.role = BEAT
        for_each(self._db.connections,
                 lambda conn: self._drop_if_inherited(conn, owns_socket=False),
                 'drop the inherited')
        if self.health_check is not None:
            for conn in versions.initialized_connections(self._db.connections):
                self.health_check.arm(conn, once=False)
        self.close_cache()
        processes.close_at_beat_exit(kwargs.get('sender'), processes.close_all)

    def on_worker_process_shutdown(self, **kwargs):
        # billiard ends a pool process with os._exit right after this signal: sessions left
        # open are counted abandoned by the server.
        processes.close_all()

    def on_worker_shutdown(self, **kwargs):
        processes.close_all()

    # -- tasks -----------------------------------------------------------------------------

    def on_task_prerun(self, sender, **kwargs):
        """Called before every task."""
        if not getattr(sender.request, 'is_eager', False):
            self._local.task_id = kwargs.get('task_id')
            if self.role == POOL_CHILD:
                self.soft_time_limit.start()
            self.close_database()
            if self.health_check is not None:
                # In a pool process, once per task; where tasks run in the main process (solo,
                # threads), before every use, as everything else there.
                for conn in versions.initialized_connections(self._db.connections):
                    self.health_check.arm(conn, once=not self.guards_idle_connections)

    def on_task_postrun(self, sender, **kwargs):
        # See https://groups.google.com/group/django-users/
        #            browse_thread/thread/78200863d0c07c6d/
        if not getattr(sender.request, 'is_eager', False):
            self._local.task_id = None
            self._local.last_task_id = kwargs.get('task_id')
            if self.health_check is not None:
                for conn in versions.initialized_connections(self._db.connections):
                    self.health_check.disarm(conn, once_only=True)
            reason = policy.reason_to_discard_after_task(
                kwargs.get('state'), exception=versions.exception_in_flight(),
                interrupted=self.soft_time_limit.fired)
            if reason is not None:
                logger.debug('celery-django-fixup: closing every connection: %s', reason)
                self._close_database(force=True)
            elif self.is_green_pool:
                for_each(self._db.connections, self._return_or_discard, 'close')
            self.close_database()
            self.close_cache()

    def _return_or_discard(self, conn):
        reason = policy.reason_to_discard_after_green_task(
            pooled=versions.existing_pool(conn) is not None)
        if reason is not None or conn.connection is None:
            discard(conn)
        elif self._close_if_unsafe(conn) is None:  # an unsafe one it discards itself
            conn.close()  # back to the pool

    def on_task_failure(self, sender=None, task_id=None, **kwargs):
        # Celery sends task_postrun with state SUCCESS when the task body returned, and only
        # then stores the result, runs callbacks and after_return: if one of those raises, the
        # task ends in FAILURE (an internal error) after its postrun kept the connection.
        if task_id is not None and task_id == getattr(self._local, 'last_task_id', None) and \
                getattr(self._local, 'task_id', None) is None:
            logger.debug('celery-django-fixup: closing every connection: task %s failed '
                         'after task_postrun', task_id)
            self._close_database(force=True)

    def close_database(self, **kwargs):
        if not self.db_reuse_max:
            return self._close_database()
        # Counted per thread: each thread has connections of its own.
        recycles = getattr(self._local, 'db_recycles', 0)
        if recycles >= self.db_reuse_max * 2:
            recycles = 0
            # Upstream's periodic close stopped forcing a reconnect in 4.2 (celery#6216).
            self._close_database(force=True)
        else:
            # Between periodic closes upstream keeps connections whatever their age; so do we,
            # unless one is unsafe to hand to the next task.
            for_each(self._db.connections, self._close_if_unsafe, 'close')
        self._local.db_recycles = recycles + 1

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
            # As Django's close_if_unusable_or_obsolete does, with a check that never lets
            # the driver reconnect behind Django's back.
            if is_usable(conn):
                conn.errors_occurred = False
            else:
                reason = 'unusable after an error'
        if reason is not None:
            logger.debug('celery-django-fixup: closing %r: %s', conn.alias, reason)
            discard(conn)
        return reason


#: Each method of the patched class that upstream's class has too (overridden) or does not
#: have (added), and why (``celery-django-fixup diff`` prints this; a unit test keeps it in
#: step with the class).
OVERRIDES = {
    '__init__': 'validates the settings; sets up the health check, the soft time limit watch '
                'and per-thread state',
    'on_worker_init': 'keeps the worker, whose pool decides what a task may keep',
    'install': 'forced close in the main process before it forks, except inside an atomic '
               'block; also handles late failures, exits, forks and new connections',
    'uninstall': 'disconnects what install connected',
    'on_worker_process_init': 'drops inherited connections with no IO at all (4.2-4.3 kept '
                              'them; a PyMySQL close() ended the parent\'s session)',
    'on_beat_embedded_init': 'beat has closed the inherited fds already; forgets '
                             'inherited connections without touching any fd, checks its own',
    'on_fork_in_child': 'every fork drops the inherited connections with no IO',
    'on_embedded_beat_start': 'embedded beat closes the event-loop pollers it inherited '
                              'before Celery closes their numbers under them',
    'on_connection_created': 'records which process opened a connection; outside '
                             'tasks it is checked before every use',
    'on_worker_process_shutdown': 'a pool process closes its connections before '
                                  'billiard\'s os._exit',
    'on_worker_shutdown': 'the main process closes its connections at shutdown',
    'on_task_prerun': 'arms the health check of connections kept from the previous task',
    'on_task_postrun': 'forced close after a task that did not succeed, raised past its '
                       'postrun, was interrupted by its soft time limit, or in greenlet pools',
    'on_task_failure': 'forced close when a task fails after its postrun',
    'close_database': 'the CELERY_DB_REUSE_MAX close is forced and counted per thread; '
                      'unsafe connections still closed',
    '_close_database': 'drops connections left in a transaction, never skips an alias on error',
}
