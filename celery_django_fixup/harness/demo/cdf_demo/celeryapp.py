"""The demo Celery app, configured by environment variables.

``CDF_MODE`` picks the worker fix-up:

- ``stock``: Celery's own; ``celery_django_fixup`` is never imported.
- ``import``: ``import celery_django_fixup`` before ``Celery(...)``.
- ``fixups``: ``Celery(..., fixups=['celery_django_fixup:fixup'])`` (the default).
- ``unsafe``: Celery's own with plain reuse and no safety (see ``cdf_demo.unsafe``).

``CDF_BROKER_URL`` and ``CDF_RESULT_BACKEND`` (Redis db 15 on localhost by default),
``CDF_BROKER_TRANSPORT_OPTIONS`` (JSON). ``CDF_PARENT_QUERY=1`` runs a query in the worker's
main process from a ``worker_init`` handler, after the Django fix-up's own, so that the main
process holds a connection when it forks the pool (as import-time queries or a result backend
write do in real projects). ``CDF_READY_FILE``: where the worker writes, once it is ready to
take tasks, a JSON object with its pid, versions, the worker fix-up class it really uses and
``parent_backends``, the server's id of each session ``CDF_PARENT_QUERY`` used (and
``parent_fds``, the file descriptor number of each one's socket).
``CDF_CONNECTIONS_FILE``: a file that gets one line (``pid alias vendor``) per database
connection Django opens in the worker's processes.
"""
from __future__ import absolute_import

import json
import os
import sys

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'cdf_demo.settings')

from celery import Celery, signals  # noqa: E402

from cdf_demo.whichfixup import worker_fixup_class  # noqa: E402

MODES = ('stock', 'import', 'fixups', 'unsafe')
MODE = os.environ.get('CDF_MODE', 'fixups')
if MODE not in MODES:
    raise ValueError('CDF_MODE must be one of {0}, not {1!r}'.format(MODES, MODE))


def _task_modules():
    """``cdf_demo.tasks`` and every ``cdf_demo/tasks_<topic>.py`` beside it, by name."""
    folder = os.path.dirname(os.path.abspath(__file__))
    names = sorted(name[:-3] for name in os.listdir(folder)
                   if name.startswith('tasks') and name.endswith('.py'))
    return ['cdf_demo.' + name for name in names]


TASK_MODULES = _task_modules()

if MODE == 'import':
    import celery_django_fixup  # noqa: F401 -- installs the patch
    app = Celery('cdf_demo', include=TASK_MODULES)
elif MODE == 'fixups':
    app = Celery('cdf_demo', include=TASK_MODULES, fixups=['celery_django_fixup:fixup'])
else:
    if 'celery_django_fixup' in sys.modules:
        # A stock worker that has the patch would make every comparison meaningless.
        raise RuntimeError('CDF_MODE={0} but celery_django_fixup was imported'.format(MODE))
    if MODE == 'unsafe':
        from cdf_demo import unsafe
        unsafe.install()
    app = Celery('cdf_demo', include=TASK_MODULES)

DEFAULT_BROKER = 'redis://127.0.0.1:6379/15'

app.conf.update(
    broker_url=os.environ.get('CDF_BROKER_URL') or DEFAULT_BROKER,
    result_backend=(os.environ.get('CDF_RESULT_BACKEND') or
                    os.environ.get('CDF_BROKER_URL') or DEFAULT_BROKER),
    broker_transport_options=json.loads(os.environ.get('CDF_BROKER_TRANSPORT_OPTIONS') or '{}'),
    # Remote control would add a broadcast binding per worker; the harness stops workers
    # with signals and does not need it.
    worker_enable_remote_control=False,
    result_expires=3600,
)
app.conf.update(json.loads(os.environ.get('CDF_SETTINGS_JSON') or '{}'))


#: Server-side id of the session each alias used in the main process (``CDF_PARENT_QUERY``),
#: reported in the ready file as ``parent_backends``.
PARENT_BACKENDS = {}

#: The file descriptor number of each of those sessions' sockets in the main process, reported
#: as ``parent_fds``: what a process forked from it inherits.
PARENT_FDS = {}


def backend_id(conn):
    """The server's id of the session behind ``conn`` (connecting if needed)."""
    with conn.cursor() as cursor:
        if conn.vendor == 'postgresql':
            cursor.execute('SELECT pg_backend_pid()')
        elif conn.vendor == 'mysql':
            cursor.execute('SELECT CONNECTION_ID()')
        else:
            # SQLite has no server: the DB-API object's identity is the nearest thing.
            cursor.execute('SELECT 1')
            return 'sqlite-{0:x}'.format(id(conn.connection))
        return cursor.fetchone()[0]


def _query_every_alias():
    from django.db import connections
    for conn in connections.all():
        PARENT_BACKENDS[conn.alias] = backend_id(conn)
        PARENT_FDS[conn.alias] = socket_fd(conn)


def socket_fd(conn):
    """The file descriptor number of the socket behind ``conn``, or None (no connection, or
    SQLite). PyMySQL has no ``fileno()`` on its connection: its socket is ``_sock``."""
    raw = conn.connection
    if raw is None:
        return None
    for owner in (raw, getattr(raw, '_sock', None)):
        fileno = getattr(owner, 'fileno', None)
        if fileno is not None:
            try:
                return fileno()
            except Exception:  # noqa: B902 -- closed: no number
                return None
    return None


if os.environ.get('CDF_PARENT_QUERY') == '1':
    # Connected after Celery(...) installed the Django fix-up, so this runs after the fix-up's
    # own worker_init handler closed the connections: the main process forks holding them.
    signals.worker_init.connect(lambda **kwargs: _query_every_alias(), weak=False)


@signals.worker_ready.connect(weak=False)
def _report_ready(sender=None, **kwargs):
    path = os.environ.get('CDF_READY_FILE')
    if not path:
        return
    import celery
    import django
    info = {
        'pid': os.getpid(),
        'mode': MODE,
        'worker_fixup': worker_fixup_class(app),
        'celery': celery.__version__,
        'django': django.get_version(),
        'python': sys.version.split()[0],
        'pool': type(getattr(sender, 'pool', None)).__module__,
        'parent_backends': PARENT_BACKENDS,
        'parent_fds': PARENT_FDS,
    }
    # Write then rename: the harness must never read a half-written file.
    with open(path + '.tmp', 'w') as fh:
        json.dump(info, fh)
    os.rename(path + '.tmp', path)


def _count_connections(path):
    """``CDF_CONNECTIONS_FILE``: append ``pid alias vendor`` to that file each time Django opens
    a database connection in any process of the worker.

    Counted in the client, so it works where no server can count (SQLite) and, unlike a
    server's counter, sees only this worker's connections on a database others use too.
    """
    from django.db.backends.signals import connection_created

    def created(sender=None, connection=None, **kwargs):
        line = '{0} {1} {2}\n'.format(os.getpid(), connection.alias, connection.vendor)
        # O_APPEND: the pool's processes write to the same file; one short write each is
        # never interleaved with another's.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode('utf-8'))
        finally:
            os.close(fd)

    connection_created.connect(created, weak=False, dispatch_uid='cdf_demo.count_connections')


if os.environ.get('CDF_CONNECTIONS_FILE'):
    _count_connections(os.environ['CDF_CONNECTIONS_FILE'])
