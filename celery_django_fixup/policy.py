"""When a connection may be kept for the next task: the rules, with no mechanics.

How a connection is closed or checked is in :mod:`celery_django_fixup.connections`.
"""
from __future__ import absolute_import

from celery import states

__all__ = ('reason_to_discard', 'reason_to_discard_after_task',
           'reason_to_discard_after_green_task', 'is_green_pool')

try:
    _string_types = (basestring,)  # noqa: F821 -- Python 2
except NameError:
    _string_types = (str,)

#: Pool aliases whose tasks run in greenlets (``celery worker -P NAME``).
GREEN_POOLS = frozenset(['eventlet', 'gevent'])


def reason_to_discard(conn):
    """Why ``conn`` must be closed now whatever its age, or None if it may be kept.

    Looks only at the wrapper's state, with no database round trip.
    """
    if conn.connection is None:
        return None
    if conn.in_atomic_block or conn.closed_in_transaction:
        return 'left inside an atomic block'
    if conn.needs_rollback:
        return 'needs a rollback'
    if conn.autocommit != conn.settings_dict['AUTOCOMMIT']:
        return 'left with autocommit changed'
    return None


def reason_to_discard_after_task(state, exception=None, interrupted=False):
    """Why every connection of the thread that ran a task must be closed when the task ends,
    whatever their age, or None if each may be kept as Django's rules say.

    ``state`` is what ``task_postrun`` was sent; ``exception`` one raised past it (Celery
    sends ``task_postrun`` from a ``finally``); ``interrupted`` whether a soft time limit was
    delivered during the task.

    A task that did not end in ``SUCCESS`` may have left its connection broken in a way Django
    does not record: a ``SoftTimeLimitExceeded`` raised in the middle of a query never passes
    Django's error wrapper (Django ticket 30646, celery#9824). Celery sends no state (None)
    when the task raised a ``BaseException`` or when its own error handling failed. A soft
    time limit the task caught may have landed in the middle of a driver's exchange with the
    server.
    """
    if state != states.SUCCESS:
        return 'the task ended in state {0}'.format(state)
    if exception is not None:
        return 'the task raised {0!r} after its body returned'.format(exception)
    if interrupted:
        return 'a soft time limit was delivered during the task'
    return None


def reason_to_discard_after_green_task(pooled):
    """Why a connection a task used in a greenlet must be closed when the task ends, whatever
    its state, or None if it may go back to the Django connection pool (5.1+) it came from.

    Connections are per greenlet and die unclosed with it: the greenlet keeps none. A pool is
    process-wide, shared by the greenlets: a connection goes back to it, as Django's
    ``close()`` does at the end of a request, if it is safe to hand on (:func:`reason_to_discard`,
    checked where every task boundary checks it).
    """
    if not pooled:
        return 'tasks run in greenlets'
    return None


def is_green_pool(pool_cls):
    """True if ``pool_cls`` (a pool class, or the name or dotted path the worker was given)
    runs tasks in greenlets, whose connections die with the greenlet and must not be kept."""
    if pool_cls is None:
        return False
    if isinstance(pool_cls, _string_types):
        if pool_cls in GREEN_POOLS:
            return True
        try:
            from celery import concurrency
            pool_cls = concurrency.get_implementation(pool_cls)
        except Exception:  # noqa: B902 -- an unimportable pool is not one we can tell apart
            return False
    return bool(getattr(pool_cls, 'is_green', False))
