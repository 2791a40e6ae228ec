"""Which process a connection belongs to, forks, and exits: the mechanics, with no policy.

- Every connection Django opens is recorded with the pid of the process that opened it, so
  that a process can tell the connections it inherited from its own (:func:`inherited`).
- :func:`on_fork_in_child` registers one callback for every fork of this process and of its
  descendants (``os.register_at_fork``, Python 3.7+): billiard's pool and beat processes, and
  any process a task forks. Python 2.7 and 3.6 have no such hook.
- :func:`on_embedded_beat_start` registers one callback for embedded beat's process, run
  before Celery closes every inherited file descriptor there; :func:`close_inherited_pollers`
  is what the fix-up runs then.
- :func:`close_all` closes every connection this process opened, in whichever thread.
"""
from __future__ import absolute_import

import gc
import os
import signal
import threading
import weakref

from celery.utils.log import get_logger

from . import versions
from .connections import close_pool, close_quietly, orphan, reset

__all__ = ('record', 'inherited', 'on_fork_in_child', 'on_embedded_beat_start',
           'close_inherited_pollers', 'close_all', 'close_at_beat_exit', 'FORK_HOOKS')

logger = get_logger(__name__)

#: Whether the interpreter runs callbacks after every fork (Python 3.7+).
FORK_HOOKS = hasattr(os, 'register_at_fork')

#: Attribute set on a Django connection wrapper: the pid that opened its DB-API connection.
OWNER = '_celery_django_fixup_pid'

#: Wrappers that opened a connection in this process (or in its parent, before a fork), with
#: the thread they belong to: Django's wrappers are per thread and refuse to be closed from
#: another one.
_opened = weakref.WeakKeyDictionary()
_fork_callbacks = []


def record(conn):
    """Note that ``conn`` has just opened its DB-API connection in this process and thread."""
    vars(conn)[OWNER] = os.getpid()
    try:
        _opened[conn] = threading.current_thread().ident
    except TypeError:  # an object that takes no weak reference: only the pid is known
        pass


def inherited(conn):
    """True if ``conn`` holds a DB-API connection that another process opened.

    A connection opened before :func:`record` was first called counts as inherited: the
    patched fix-up records from the worker's start, so only a connection from before the
    worker started, which nothing should reuse in another process, is unknown.
    """
    return conn.connection is not None and vars(conn).get(OWNER) != os.getpid()


def on_fork_in_child(callback):
    """Run ``callback()`` in the child after every fork, from now on (once per callback).

    Connections that other threads of the forking process hold are closed in the child with
    no IO too: the interpreter frees those threads' state in the child, and a driver freeing a
    connection says goodbye to the server on the socket the parent still uses. They are held
    from just before the fork, so that the child can close them quietly first.
    """
    if callback in _fork_callbacks:
        return
    _fork_callbacks.append(callback)
    if FORK_HOOKS and len(_fork_callbacks) == 1:
        os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                            after_in_child=_after_fork_in_child)


#: The DB-API connections of this process, held across a fork (see :func:`on_fork_in_child`).
_held_at_fork = []


def _before_fork():
    pid = os.getpid()
    _held_at_fork[:] = [conn.connection for conn in list(_opened)
                        if conn.connection is not None and vars(conn).get(OWNER) == pid]


def _after_fork_in_parent():
    del _held_at_fork[:]


def _after_fork_in_child():
    for callback in list(_fork_callbacks):
        try:
            callback()
        except Exception as exc:  # noqa: B902 -- a fork must never fail because of us
            logger.warning('celery-django-fixup: after fork: %r', exc, exc_info=True)
    held, _held_at_fork[:] = list(_held_at_fork), []
    for dbapi in held:
        if not close_quietly(dbapi):
            orphan(dbapi)


_beat_start_callbacks = []


class _BeatStartHook(object):
    """What billiard's after-fork registry holds (weakly) for :func:`on_embedded_beat_start`."""


_beat_start_hook = _BeatStartHook()


def on_embedded_beat_start(callback):
    """Run ``callback()`` in embedded beat's process (``celery worker -B``) as it starts, from
    now on (once per callback).

    It runs from billiard's after-fork hooks, which every billiard process runs before its
    ``run()``; beat's ``run()`` first closes every inherited file descriptor by its number
    (``platforms.close_open_fds``). So the callback runs while every number an inherited
    object holds is still that object's own: closing through the object then touches nothing
    of beat's. ``beat_embedded_init`` comes too late for that: the scheduler has opened its
    files by then.
    """
    if callback in _beat_start_callbacks:
        return
    _beat_start_callbacks.append(callback)
    if len(_beat_start_callbacks) == 1:
        from billiard.util import register_after_fork
        register_after_fork(_beat_start_hook, _run_beat_start_callbacks)


def _run_beat_start_callbacks(hook):
    if not _in_embedded_beat():
        return
    for callback in list(_beat_start_callbacks):
        try:
            callback()
        except Exception as exc:  # noqa: B902 -- beat must never fail to start because of us
            logger.warning('celery-django-fixup: embedded beat start: %r', exc, exc_info=True)


def _in_embedded_beat():
    from billiard.process import current_process
    from celery import beat
    process_class = getattr(beat, '_Process', None)
    return process_class is not None and isinstance(current_process(), process_class)


def close_inherited_pollers():
    """Close the event-loop pollers of kombu (its ``epoll`` wrappers) that this process holds,
    through their own objects, and return how many were open.

    For embedded beat's process, before Celery closes every inherited number (see
    :func:`on_embedded_beat_start`): the worker's main process forked beat holding them (the
    worker's event loop, the pollers of its Redis transports), and beat never uses them. Left
    to Celery, their numbers are closed under them; beat's files and sockets, its own database
    connection included, take those numbers again; and when the garbage collector frees such
    a poller later (measured: while beat opened its broker connection), it closes its old
    number, whatever holds it by then. Closed here, a poller's number is still its own, and
    freeing it later closes nothing.
    """
    try:
        from kombu.utils import eventio
    except ImportError:
        return 0
    poller_class = getattr(eventio, '_epoll', None)
    if poller_class is None:
        return 0
    closed = 0
    for obj in gc.get_objects():
        if not isinstance(obj, poller_class):
            continue
        epoll = getattr(obj, '_epoll', None)
        if epoll is None or epoll.closed:
            continue
        try:
            epoll.close()
            closed += 1
        except Exception as exc:  # noqa: B902 -- a poller we cannot close is left as it was
            logger.warning('celery-django-fixup: could not close an inherited event-loop '
                           'poller: %r', exc)
    return closed


def close_all():
    """Close every connection this process opened, and the Django connection pools it
    created, so that the server ends each session cleanly instead of counting it abandoned.
    Connections of the calling thread go through Django; those of other threads (the threads
    pool), whose wrappers Django will not close from here, through the driver."""
    me = threading.current_thread().ident
    pid = os.getpid()
    pooled = []
    for conn, thread in list(_opened.items()):
        if vars(conn).get(OWNER) != pid:
            continue
        try:
            if conn.connection is not None:
                if thread == me:
                    conn.close()
                    reset(conn)
                else:
                    conn.connection.close()
            if versions.existing_pool(conn) is not None:
                pooled.append(conn)
        except Exception as exc:  # noqa: B902 -- logged with its alias, the others go on
            logger.warning('celery-django-fixup: could not close database connection %r: %r',
                           conn.alias, exc)
    for conn in pooled:
        try:
            close_pool(conn)
        except Exception as exc:  # noqa: B902 -- as above
            logger.warning('celery-django-fixup: could not close the connection pool of %r: '
                           '%r', conn.alias, exc)


def close_at_beat_exit(service, callback):
    """Run ``callback()`` when embedded beat (``service``, a ``celery.beat.Service``) stops.

    Embedded beat resets SIGTERM to the default action, so the worker's stop kills it on the
    spot and its sessions are counted abandoned. Here SIGTERM raises ``SystemExit`` instead, as
    standalone ``celery beat`` does: beat's loop takes that as a stop and syncs its schedule
    one last time, and ``callback`` runs right after that sync.
    """
    sync = getattr(service, 'sync', None)
    if sync is None:
        return

    def sync_then_close():
        try:
            return sync()
        finally:
            callback()

    service.sync = sync_then_close
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _stop_beat)


def _stop_beat(signum, frame):
    raise SystemExit()
