"""What differs between Celery and Django lines, and the one range of versions supported.

Everything that depends on the installed Celery or Django release lives here: the Celery lines
in ``LINES`` (what stock Celery does with connections, for ``check`` and ``verify``), and below
them, as capabilities, what the patched class must adapt to.
"""
from __future__ import absolute_import

import sys

__all__ = (
    'SUPPORTED_CELERY', 'SUPPORTED_DJANGO', 'CeleryLine', 'LINES',
    'celery_version', 'django_version', 'line_for', 'unsupported_reason',
    'task_failure_signals', 'exception_in_flight', 'upstream_connects_worker_ready',
    'upstream_init_kwargs', 'handler_errors_fail_the_task', 'pool_start_method_setting',
    'initialized_connections', 'mark_health_check_done', 'existing_pool', 'forget_pool',
)

#: Celery releases the patched fix-up is written and tested against (inclusive).
SUPPORTED_CELERY = ((4, 0, 0), (5, 7, 0))

#: Django feature releases supported (inclusive), as ``django.VERSION[:2]``.
SUPPORTED_DJANGO = ((1, 11), (6, 1))


class CeleryLine(object):
    """How one line of Celery releases handles Django's database connections.

    ``at_task`` and ``after_fork`` name what upstream calls on every connection at a task
    boundary and in a prefork child after it closed the inherited file descriptors;
    ``problem`` is what that costs users, in one sentence.
    """

    def __init__(self, first, last, at_task, after_fork, problem):
        self.first = first
        self.last = last
        self.at_task = at_task
        self.after_fork = after_fork
        self.problem = problem

    @property
    def name(self):
        return '{0}-{1}'.format(_dotted(self.first), _dotted(self.last))

    @property
    def reuses(self):
        """True if stock Celery of this line keeps connections between tasks."""
        return self.at_task != 'close'

    def __contains__(self, version):
        return self.first <= tuple(version[:3]) <= self.last

    def __repr__(self):
        return '<CeleryLine {0}>'.format(self.name)


LINES = (
    CeleryLine(
        (4, 0, 0), (4, 1, 1), at_task='close', after_fork='close',
        problem='closes every connection before and after every task: CONN_MAX_AGE is '
                'ignored and every task opens a new database connection (celery#4116)'),
    CeleryLine(
        (4, 2, 0), (4, 3, 1),
        at_task='close_if_unusable_or_obsolete', after_fork='close_if_unusable_or_obsolete',
        problem='reuses connections, but a prefork child keeps the connection its parent held '
                'at fork: Bad file descriptor, then hung workers (celery#4878, celery#5483)'),
    CeleryLine(
        (4, 4, 0), (4, 4, 3), at_task='close', after_fork='close',
        problem='closes every connection before and after every task: CONN_MAX_AGE is '
                'ignored and every task opens a new database connection (celery#5515)'),
    CeleryLine(
        (4, 4, 4), (4, 4, 7), at_task='close_if_unusable_or_obsolete', after_fork='close',
        problem='reuses connections without checking them: a connection broken while idle or '
                'left by a failed task is handed to the next task (celery#9824)'),
    CeleryLine(
        (5, 0, 0), (5, 5, 3), at_task='close_if_unusable_or_obsolete', after_fork='close',
        problem='reuses connections without checking them: a connection broken while idle or '
                'left by a failed task is handed to the next task (celery#9824), and a Django '
                'connection pool inherited across fork is shared or dead in the child '
                '(celery#9953)'),
    CeleryLine(
        (5, 6, 0), (5, 7, 0), at_task='close', after_fork='close',
        problem='closes every connection before and after every task: CONN_MAX_AGE is '
                'ignored and every task opens a new database connection (celery#9824); a '
                'Django connection pool is torn down at every task (celery#10554)'),
)


def _dotted(version):
    return '.'.join(str(part) for part in version)


def _next_minor():
    return '{0}.{1}'.format(SUPPORTED_DJANGO[1][0], SUPPORTED_DJANGO[1][1] + 1)


def celery_version():
    """The installed Celery release as a tuple of three integers."""
    import celery
    return tuple(int(part) for part in celery.VERSION[:3])


def django_version():
    """The installed Django feature release as ``(major, minor)``, or None without Django."""
    try:
        import django
    except ImportError:
        return None
    return tuple(django.VERSION[:2])


def line_for(version=None):
    """The :class:`CeleryLine` a Celery release belongs to, or None outside the supported range."""
    version = celery_version() if version is None else tuple(version[:3])
    for line in LINES:
        if version in line:
            return line
    return None


def unsupported_reason(celery=None, django=None):
    """Why the patch must not be installed on these versions, or None when it may."""
    celery = celery_version() if celery is None else tuple(celery[:3])
    django = django_version() if django is None else django
    if line_for(celery) is None:
        return (
            'celery-django-fixup supports Celery {0} to {1}; Celery {2} is installed, so nothing '
            'was patched and Celery keeps its own Django fix-up. Install a supported Celery '
            '(pip install "celery>={0},<={1}") or stop importing celery_django_fixup.'.format(
                _dotted(SUPPORTED_CELERY[0]), _dotted(SUPPORTED_CELERY[1]), _dotted(celery)))
    if django is None:
        return (
            'celery-django-fixup patches the Django fix-up, but Django is not installed: nothing '
            'was patched. Install a supported Django (pip install "django>={0},<{2}"), or stop '
            'importing celery_django_fixup.'.format(
                _dotted(SUPPORTED_DJANGO[0]), _dotted(SUPPORTED_DJANGO[1]), _next_minor()))
    if not SUPPORTED_DJANGO[0] <= tuple(django[:2]) <= SUPPORTED_DJANGO[1]:
        return (
            'celery-django-fixup supports Django {0} to {1}; Django {2} is installed, so nothing '
            'was patched and Celery keeps its own Django fix-up. Install a supported Django '
            '(pip install "django>={0},<{3}") or stop importing celery_django_fixup.'.format(
                _dotted(SUPPORTED_DJANGO[0]), _dotted(SUPPORTED_DJANGO[1]),
                _dotted(django[:2]), _next_minor()))
    return None


def task_failure_signals():
    """The signals Celery sends when a task fails, including after its ``task_postrun``
    (``task_internal_error``: Celery 4.1+)."""
    from celery import signals
    return [signal for signal in (signals.task_failure,
                                  getattr(signals, 'task_internal_error', None))
            if signal is not None]


def exception_in_flight():
    """The exception propagating through the caller's ``finally`` block, if the interpreter
    says (Python 3); None on Python 2, where ``sys.exc_info()`` shows only handled ones."""
    if sys.version_info[0] < 3:
        return None
    return sys.exc_info()[1]


# -- Celery ------------------------------------------------------------------------------------

def upstream_connects_worker_ready(upstream_cls):
    """Whether upstream's class has ``on_worker_ready`` (its DEBUG warning), connected to
    ``worker_ready``: Celery 4.0-5.2; 5.3 removed both."""
    return hasattr(upstream_cls, 'on_worker_ready')


#: Given to Celery 5.6.1's ``DjangoWorkerFixup.__init__`` as the worker: given none, that
#: release builds a ``WorkController``, which builds the fix-up again (celery#10045). The
#: worker is set when ``worker_init`` is sent, as on every other release.
_WORKER_NOT_YET = type('WorkerNotYet', (object,), {'__bool__': lambda self: True,
                                                    '__nonzero__': lambda self: True})()


def upstream_init_kwargs(upstream_cls):
    """What upstream's ``__init__`` takes besides the app."""
    try:
        from inspect import signature
    except ImportError:  # Python 2: Celery 4 takes the app only
        return {}
    if 'worker' in signature(upstream_cls.__init__).parameters:
        return {'worker': _WORKER_NOT_YET}
    return {}


def handler_errors_fail_the_task():
    """Whether an exception raised by a task's ``on_success`` or ``after_return`` ends the
    task in FAILURE after its ``task_postrun`` was sent with SUCCESS (Celery 4.0-5.6), rather
    than being only logged (5.7)."""
    return celery_version() < (5, 7, 0)


def pool_start_method_setting():
    """Whether prefork pool processes can be spawned rather than forked
    (``worker_pool_start_method``, Celery 5.7+): a spawned one is sent ``worker_process_init``
    but never ``worker_init``."""
    return celery_version() >= (5, 7, 0)


# -- Django ------------------------------------------------------------------------------------

def initialized_connections(handler):
    """The connection wrappers of this thread; from Django 4.1 only those already created
    (``all(initialized_only=True)``), so that closing nothing creates nothing."""
    try:
        return handler.all(initialized_only=True)
    except TypeError:  # Django < 4.1
        return handler.all()


def mark_health_check_done(conn):
    """Tell Django 4.1+ (``CONN_HEALTH_CHECKS``) that the connection is being checked by the
    fix-up, so that Django does not add a second round trip of its own (and, on MySQL, a
    ``ping()`` that PyMySQL answers by reconnecting in place)."""
    if hasattr(conn, 'health_check_done'):
        conn.health_check_done = True


def existing_pool(conn):
    """The Django connection pool of ``conn``'s alias in this process (PostgreSQL with
    psycopg 3 and ``OPTIONS['pool']``, Django 5.1+), without creating one, or None."""
    pools = getattr(type(conn), '_connection_pools', None)
    if not pools:
        return None
    return pools.get(conn.alias)


def forget_pool(conn):
    """Remove ``conn``'s alias's pool from Django's per-process registry without closing it,
    and return it (or None): the next use creates a new one."""
    pools = getattr(type(conn), '_connection_pools', None)
    if not pools:
        return None
    return pools.pop(conn.alias, None)
