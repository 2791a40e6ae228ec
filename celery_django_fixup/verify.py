"""``celery-django-fixup verify``: reproduce the bug with Celery's own fix-up, then run the same
tasks with the patched one, and compare what the database saw.

Every run is a real ``celery worker`` of the demo project (``harness/demo``), started fresh,
given the same tasks (one query each, reporting the server's id of its session), then stopped
with SIGTERM as a supervisor would. Two scenarios, each run with the stock and the patched
worker:

- **reuse**: ``CONN_MAX_AGE=600``; how many database sessions do N tasks open?
- **fork**: the worker's main process holds a connection when it forks the pool (import-time
  queries, ``worker_init`` handlers, result writes do that in real projects); do the pool's
  children use the connection they inherited? A worker that stops finishing tasks is reported
  as hung and killed, never waited on.

With no ``--database`` it needs no service at all: a throwaway PostgreSQL server is started
from the local server binaries (a temporary folder, a free port, removed afterwards), one
database per run so that the server's session counter (``pg_stat_database.sessions``) counts
that run alone; without the binaries it falls back to SQLite, for the reuse scenario only,
counting connections in the worker. The broker is then a folder per worker (kombu's
filesystem transport). Database drivers are imported only when verify runs.

Exit status: 0 when the patched worker reused connections and no task of it failed, 1 when
not (or when a worker could not run), 2 on bad input (unreachable database or broker, a URL
that cannot be used, an unsupported Celery).
"""
from __future__ import absolute_import, division, print_function

import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import uuid

__all__ = ('VerifyError', 'Options', 'run_verify', 'format_report', 'DEFAULT_TASKS')

DEFAULT_TASKS = 200
DEFAULT_CONCURRENCY = 2
DEFAULT_HANG_AFTER = 5.0
POOLS = ('prefork', 'solo', 'threads')

#: What both workers are told; the stock worker of 4.0-4.1 and 4.4.0-4.4.3 ignores it.
CONN_MAX_AGE = 600
TASK = 'touch'

STOCK_CLASS = 'celery.fixups.django.DjangoWorkerFixup'
PATCHED_CLASS = 'celery_django_fixup.worker.DjangoWorkerFixup'

#: (key, demo mode, column title); the demo's ``fixups`` mode is
#: ``Celery(..., fixups=['celery_django_fixup:fixup'])``.
MODES = (('stock', 'stock', 'stock Celery'), ('patched', 'fixups', 'patched'))

#: Seconds a worker gets at least to exit after SIGTERM before it is reported hung and killed
#: (twice ``--hang-after`` if that is more). A healthy worker needs about 2 s on Redis and 3 to
#: 4 s on the filesystem broker, whose consumer waits up to 2 s for messages between checks.
MIN_STOP_TIMEOUT = 8.0


class VerifyError(Exception):
    """Bad input or an unusable environment: one line for the user, exit status 2."""


class RunError(Exception):
    """A worker could not be run at all: exit status 1, with the reason."""


def _one_line(text):
    return ' '.join(str(text).split())


class Options(object):
    """What the command line asked for (see ``celery-django-fixup verify --help``)."""

    def __init__(self, tasks=DEFAULT_TASKS, concurrency=DEFAULT_CONCURRENCY, pool='prefork',
                 database=None, broker=None, hang_after=DEFAULT_HANG_AFTER, progress=True):
        self.tasks = tasks
        self.pool = pool
        self.concurrency = 1 if pool == 'solo' else concurrency
        self.database = database
        self.broker = broker
        self.hang_after = hang_after
        self.progress = progress

    @property
    def stop_timeout(self):
        return max(MIN_STOP_TIMEOUT, 2 * self.hang_after)

    @property
    def processes(self):
        """How many processes or threads run tasks, each holding its own connection."""
        return self.concurrency

    def validate(self):
        if self.pool not in POOLS:
            raise VerifyError('--pool must be one of {0}, not {1!r}'.format(
                ', '.join(POOLS), self.pool))
        if self.concurrency < 1:
            raise VerifyError('--concurrency must be at least 1')
        # Fewer tasks than twice the connections a reusing worker may open cannot tell
        # reuse from one session per task.
        minimum = 2 * (self.processes + 1)
        if self.tasks < minimum:
            raise VerifyError('--tasks must be at least {0} with {1} {2}: fewer cannot tell '
                              'reuse from one connection per task'.format(
                                  minimum, self.processes,
                                  'process' if self.processes == 1 else 'processes'))
        if self.hang_after <= 0:
            raise VerifyError('--hang-after must be a positive number of seconds')


# -- environment checks ----------------------------------------------------------------------

def check_versions():
    """Raise :class:`VerifyError` unless the patch can be installed and workers can run here."""
    from . import versions
    reason = versions.unsupported_reason()
    if reason is not None:
        raise VerifyError(_one_line(reason))
    if sys.version_info[:2] >= (3, 9) and versions.celery_version() < (4, 4, 0):
        raise VerifyError('Celery {0} workers do not run on Python {1}.{2}; use Python 3.8 or '
                          'older with this Celery'.format(
                              '.'.join(str(p) for p in versions.celery_version()),
                              sys.version_info[0], sys.version_info[1]))


def check_pool(pool):
    """Raise :class:`VerifyError` if the installed Celery has no pool of that name (the
    ``threads`` pool came with Celery 4.4)."""
    import celery
    from celery.concurrency import get_implementation
    try:
        get_implementation(pool)
    except Exception as exc:  # noqa: B902 -- ImportError, or whatever the pool's import raises
        raise VerifyError('-P {0}: Celery {1} cannot load this pool ({2})'.format(
            pool, celery.__version__, _one_line(exc)))


def _hide_password(url):
    try:
        from urllib.parse import urlsplit, urlunsplit
    except ImportError:  # Python 2
        from urlparse import urlsplit, urlunsplit
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(':' + parts.password + '@', ':***@', 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _scrub(error, password):
    """An error message in one line, without the password a driver may have quoted."""
    text = _one_line(error)
    return text.replace(password, '***') if password else text


def _with_query(url, **params):
    try:
        from urllib.parse import urlencode
    except ImportError:  # Python 2
        from urllib import urlencode
    return url + ('&' if '?' in url else '?') + urlencode(sorted(params.items()))


# -- databases -------------------------------------------------------------------------------

class _Database(object):
    """Where the workers' connections go, and who counts them.

    ``private``: every run gets a database (or file) of its own on a server nobody else uses,
    so runs may overlap and the server's counter is theirs alone. ``server_counter``: what the
    server's number means (None: no server counter).
    """

    vendor = None
    private = False
    server_counter = None
    description = ''

    def __init__(self):
        self.notes = []

    def prepare(self, names):
        """Make what the runs called ``names`` need; called once, before any worker starts."""

    def url(self, name):
        raise NotImplementedError

    def sessions(self, name):
        """The server's session counter for run ``name`` now, or None."""
        return None

    def settled_sessions(self, name):
        return self.sessions(name)

    def close(self):
        pass


class _EmbeddedPostgres(_Database):
    vendor = 'postgresql'
    private = True

    def __init__(self, cluster):
        super(_EmbeddedPostgres, self).__init__()
        from .harness import dbstats
        self.cluster = cluster
        self.stats = dbstats.PostgresStats(cluster.url('postgres'))
        self.stats.connect()
        version = self.stats.server_version()
        # server_version_num: 150004 is 15.4 (PgCluster needs 10 or later).
        self.description = 'throwaway PostgreSQL {0}.{1} server on 127.0.0.1:{2}, removed ' \
                           'afterwards'.format(version // 10000, version % 10000, cluster.port)
        if version >= 140000:
            self.server_counter = 'this run only (a database of its own on a private server)'
        else:
            self.notes.append('PostgreSQL {0} has no session counter (14 or later has): '
                              'connections are counted in the worker'.format(version // 10000))
        self._names = {}

    def prepare(self, names):
        for name in names:
            self._names[name] = self.cluster.create_database('verify_' + name)

    def url(self, name):
        return self.cluster.url(self._names[name])

    def sessions(self, name):
        if self.server_counter is None:
            return None
        return self.stats.sessions(self._names[name])

    def settled_sessions(self, name):
        if self.server_counter is None:
            return None
        return self.stats.settled_sessions(self._names[name])

    def close(self):
        try:
            self.stats.close()
        finally:
            self.cluster.cleanup()


class _EmbeddedSqlite(_Database):
    vendor = 'sqlite'
    private = True

    def __init__(self, folder, why):
        super(_EmbeddedSqlite, self).__init__()
        self.folder = folder
        self.description = 'SQLite files in a temporary folder ({0})'.format(why)

    def url(self, name):
        return 'sqlite:///' + os.path.join(self.folder, name + '.sqlite3').lstrip('/')


class _GivenDatabase(_Database):
    """The user's own database: one database shared by every run, so runs never overlap."""

    def __init__(self, url, stats=None):
        super(_GivenDatabase, self).__init__()
        from .harness.demo.cdf_demo import dburl
        self.given = url
        self.vendor = dburl.vendor(url)
        self.name = dburl.database_name(url) if self.vendor != 'sqlite' else None
        self.stats = stats
        self.description = '{0} (given with --database)'.format(_hide_password(url))
        # PostgreSQL: each run's sessions carry a name of their own, so that waiting for them
        # to end does not wait for every other client of the database.
        self._tag = 'cdf-verify-{0}'.format(uuid.uuid4().hex[:8])
        if self.vendor == 'postgresql' and stats is not None:
            if stats.server_version() >= 140000:
                self.server_counter = ('every session opened on database {0!r} meanwhile, other '
                                       'clients\' too'.format(self.name))
            else:
                self.notes.append('this PostgreSQL has no session counter (14 or later has): '
                                  'connections are counted in the worker')
        elif self.vendor == 'mysql':
            self.server_counter = ('every connection the server accepted meanwhile, to any '
                                   'database, other clients\' too (MySQL keeps no count per '
                                   'database)')
        if self.server_counter:
            self.notes.append('the server count includes other clients: on a busy server, '
                              'trust the count made in the worker')

    def application_name(self, name):
        return '{0}-{1}'.format(self._tag, name)

    def url(self, name):
        if self.vendor == 'postgresql':
            return _with_query(self.given, application_name=self.application_name(name))
        return self.given

    def sessions(self, name):
        if self.server_counter is None:
            return None
        return self.stats.sessions(self.name)

    def settled_sessions(self, name):
        if self.server_counter is None:
            return None
        if self.vendor == 'postgresql':
            return self.stats.settled_sessions(
                self.name, application_name=self.application_name(name))
        # MySQL counts a connection when it is accepted: nothing to wait for.
        return self.stats.sessions(self.name)

    def close(self):
        if self.stats is not None:
            self.stats.close()


def open_given_database(url):
    """The user's ``--database``, checked: raises :class:`VerifyError` if it cannot be used."""
    from .harness import dbstats
    from .harness.demo.cdf_demo import dburl
    try:
        vendor = dburl.vendor(url)
    except ValueError as exc:
        raise VerifyError('--database {0}: {1} (use postgresql://, mysql:// or '
                          'sqlite:///path)'.format(_hide_password(url), _one_line(exc)))
    try:
        settings = dburl.parse(url)
    except ValueError:  # the only thing parse() checks: the port (worded per Python version)
        raise VerifyError('--database {0}: the port is not a number'.format(
            _hide_password(url)))
    if vendor == 'sqlite':
        folder = os.path.dirname(settings['NAME'])
        if settings['NAME'] == ':memory:' or not os.path.isdir(folder):
            raise VerifyError('--database {0}: a SQLite database must be a file in an existing '
                              'folder (sqlite:///absolute/path.sqlite3); workers cannot share an '
                              'in-memory database'.format(url))
        return _GivenDatabase(url)
    if not settings['NAME']:
        raise VerifyError('--database {0}: the URL must name a database'.format(
            _hide_password(url)))
    stats_class = dbstats.PostgresStats if vendor == 'postgresql' else dbstats.MysqlStats
    # The admin connection goes to the user's own database: verify may have no right to any
    # other. It is opened before the first count, so it never counts itself.
    stats = stats_class(url, admin_database=settings['NAME'])
    try:
        stats.connect()
        if vendor == 'postgresql':
            stats.server_version()
    except dbstats.ServiceUnavailable as exc:
        raise VerifyError('--database {0}: cannot connect: {1}'.format(
            _hide_password(url), _scrub(exc, settings['PASSWORD'])))
    except Exception as exc:  # noqa: B902 -- whatever the driver raises on a bad database
        raise VerifyError('--database {0}: {1}'.format(
            _hide_password(url), _scrub(exc, settings['PASSWORD'])))
    return _GivenDatabase(url, stats)


def open_embedded_database(folder, progress):
    """A throwaway PostgreSQL server when its binaries are here, else SQLite files."""
    from .harness.pgcluster import PgCluster, PgClusterError
    why = PgCluster.why_unavailable()
    if why is None:
        try:
            import psycopg2  # noqa: F401 -- the workers and the counter need it
        except ImportError:
            why = 'psycopg2 is not installed'
    if why is None:
        progress.status('starting a throwaway PostgreSQL server...')
        cluster = PgCluster()
        try:
            cluster.start()
            return _EmbeddedPostgres(cluster)
        except (PgClusterError, OSError) as exc:
            cluster.cleanup()
            # The first line says why; the server log's tail follows it.
            why = 'the throwaway PostgreSQL server did not start: {0}'.format(
                (str(exc).strip().splitlines() or [''])[0][:200])
        except BaseException:
            cluster.cleanup()
            raise
    return _EmbeddedSqlite(folder, why)


# -- brokers ---------------------------------------------------------------------------------

class _Brokers(object):
    """A broker per run: a folder of its own each by default, or the user's ``--broker``."""

    def __init__(self, folder, url=None):
        from .harness import run
        self.folder = folder
        self.url = url
        if url is None:
            self.description = 'filesystem (a folder per worker in a temporary folder)'
            self._given = None
            return
        scheme = url.split('://', 1)[0] if '://' in url else ''
        if scheme in ('filesystem', 'memory', ''):
            raise VerifyError('--broker {0}: give a network broker URL (redis://, amqp://); '
                              'without --broker a filesystem broker is used'.format(url))
        if scheme.startswith('redis') or scheme == 'rediss':
            results = url
            self.description = '{0} (given with --broker), results there too'.format(
                _hide_password(url))
        else:
            # Polling RPC results would consume them; files work with every broker.
            results = 'file://' + os.path.join(folder, 'results')
            if not os.path.isdir(results[7:]):
                os.makedirs(results[7:])
            self.description = '{0} (given with --broker), results in a temporary ' \
                               'folder'.format(_hide_password(url))
        self._given = run.Broker(url, results)
        try:
            self._given.check(timeout=5.0)
        except Exception as exc:  # noqa: B902 -- whatever the transport raises
            raise VerifyError('--broker {0}: cannot connect: {1}'.format(
                _hide_password(url), _one_line(exc) or type(exc).__name__))

    def for_run(self, name):
        from .harness import run
        if self._given is not None:
            return self._given
        return run.Broker.filesystem(os.path.join(self.folder, 'broker-' + name))


# -- progress --------------------------------------------------------------------------------

class Progress(object):
    """What is going on, on stderr: a bar on a terminal, a line per step otherwise."""

    def __init__(self, enabled=True, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, 'isatty') and self.stream.isatty()
        self._last = 0.0
        self._lock = threading.Lock()

    def status(self, text):
        if self.enabled:
            with self._lock:
                self.stream.write('verify: {0}\n'.format(text))
                self.stream.flush()

    def tick(self, label, done, total, elapsed, force=False):
        if not self.tty:
            return
        now = time.time()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        width = 30
        filled = int(width * done / total) if total else width
        with self._lock:
            self.stream.write('\r  {0:<22} [{1}{2}] {3:>5}/{4} {5:5.1f} s'.format(
                label, '#' * filled, '.' * (width - filled), done, total, elapsed))
            self.stream.flush()

    def finish(self, label, text):
        if not self.enabled:
            return
        with self._lock:
            if self.tty:
                self.stream.write('\r' + ' ' * 78 + '\r')
            self.stream.write('  {0:<22} {1}\n'.format(label, text))
            self.stream.flush()


# -- one worker run --------------------------------------------------------------------------

class Scenario(object):

    def __init__(self, key, title, parent_query):
        self.key = key
        self.title = title
        self.parent_query = parent_query


SCENARIOS = (
    Scenario('reuse', 'Reuse: {tasks} tasks, one query each, on a fresh worker',
             parent_query=False),
    Scenario('fork', 'Fork: the same, but the worker\'s main process holds a connection when it '
                     'forks the pool',
             parent_query=True),
)


class WorkerRun(object):
    """One worker (stock or patched) in one scenario, and what was measured."""

    def __init__(self, scenario, mode, options, database, brokers, folder):
        from .harness import run
        self.scenario = scenario
        self.key, self.demo_mode, self.title = mode
        self.name = '{0}_{1}'.format(scenario.key, self.key)
        self.label = '{0} {1}'.format(self.title.split()[0], scenario.key)
        self.options = options
        self.database = database
        self.connections_file = os.path.join(folder, self.name + '.connections')
        self.worker = run.Worker(
            database.url(self.name), mode=self.demo_mode, pool=options.pool,
            concurrency=options.concurrency, conn_max_age=CONN_MAX_AGE,
            parent_query=scenario.parent_query, broker=brokers.for_run(self.name),
            env={'CDF_CONNECTIONS_FILE': self.connections_file}, loglevel='warning')
        self.outcomes = []
        self.baseline = None
        self.sessions = None
        self.stalled = False
        self.error = None
        self._stopper = None

    def start(self):
        from .harness.run import WorkerError
        self.baseline = self.database.sessions(self.name)
        try:
            self.worker.start(timeout=90)
        except WorkerError as exc:
            raise RunError('the {0} worker did not start: {1}'.format(self.title, exc))
        expected = STOCK_CLASS if self.key == 'stock' else PATCHED_CLASS
        if self.worker.info.get('worker_fixup') != expected:
            # A comparison of two identical workers would prove nothing.
            raise RunError('the {0} worker runs {1}, not {2}'.format(
                self.title, self.worker.info.get('worker_fixup'), expected))

    def execute(self, progress):
        """Send the tasks and collect them, giving up on a worker that stops finishing any."""
        from .harness.run import TIMEOUT
        total = self.options.tasks
        started = time.time()
        deadline = started + 60.0 + total * 0.25
        outcomes = self.worker.send(TASK, count=total)
        pending = list(outcomes)
        last_progress = time.time()
        while pending:
            self.worker.collect(pending, timeout=0.2)
            now = time.time()
            still = [outcome for outcome in pending if outcome.state == TIMEOUT]
            if len(still) < len(pending):
                last_progress = now
            pending = still
            progress.tick(self.label, total - len(pending), total, now - started)
            if pending and (now > deadline or now - last_progress > self.options.hang_after):
                self.stalled = True
                break
        self.outcomes = outcomes
        return outcomes

    def stop(self):
        self.worker.stop(timeout=self.options.stop_timeout)

    def stop_in_background(self):
        self._stopper = threading.Thread(target=self.stop)
        self._stopper.daemon = True
        self._stopper.start()

    def join(self):
        if self._stopper is not None:
            self._stopper.join()

    def close(self):
        try:
            if self.worker.proc is not None and self.worker.stop_result is None:
                # Interrupted, or another run failed: nothing left to measure, so no
                # SIGTERM grace period; the whole process group is killed at once.
                self.worker.stop(timeout=0.0)
            self.worker.close()
        except Exception:  # noqa: B902 -- cleaning up: the others must be cleaned up too
            pass

    def measure(self):
        """Read the server's count once this worker is gone (a server may count a session
        when it ends)."""
        if self.baseline is not None:
            after = self.database.settled_sessions(self.name)
            self.sessions = after - self.baseline if after is not None else None

    def _worker_connections(self):
        try:
            with open(self.connections_file) as fh:
                return sum(1 for line in fh if line.strip())
        except IOError:
            return 0

    def result(self):
        """What this run measured, as a dict (``--json`` prints it as is)."""
        from .harness.run import TIMEOUT, summarize
        summary = summarize(self.outcomes)
        parent = set((self.worker.info or {}).get('parent_backends', {}).values())
        errors = []
        for outcome in self.outcomes:
            if not outcome.ok and outcome.state != TIMEOUT and outcome.error not in errors:
                errors.append(outcome.error)
        backends = set(o.backend for o in self.outcomes if o.ok and o.backend is not None)
        return {
            'worker_fixup': (self.worker.info or {}).get('worker_fixup'),
            'tasks': summary['total'],
            'ok': summary['ok'],
            'failed': summary['failed'],
            'unfinished': summary['timeout'],
            'seconds': summary['seconds'],
            'tasks_per_second': summary['per_second'],
            'server_sessions': self.sessions,
            'worker_connections': self._worker_connections(),
            'task_sessions': len(backends) if self.database.vendor != 'sqlite' else None,
            'tasks_on_parent_session': (
                sum(1 for o in self.outcomes if o.ok and o.backend in parent)
                if self.scenario.parent_query and parent and self.database.vendor != 'sqlite'
                else None),
            'stalled': self.stalled,
            'stop': self.worker.stop_result,
            'stop_seconds': self.worker.stop_seconds,
            'errors': errors[:3],
        }


# -- the whole verification ------------------------------------------------------------------

def _in_threads(function, items):
    """Call ``function(item)`` for every item at once; re-raise the first exception."""
    errors = []

    def call(item):
        try:
            function(item)
        except BaseException as exc:  # noqa: B902 -- handed to the caller below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(item,)) for item in items]
    for thread in threads:
        thread.daemon = True
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _run_label_text(summary):
    text = '{ok}/{total} ok'.format(**summary)
    if summary['failed']:
        text += ', {0} failed'.format(summary['failed'])
    if summary['timeout']:
        text += ', {0} never finished'.format(summary['timeout'])
    return text + ' in {0:.1f} s'.format(summary['seconds'])


def run_verify(options, progress=None):
    """Run every scenario; returns the report as a dict (see :func:`format_report`)."""
    import celery
    import django
    from . import versions
    progress = progress or Progress(options.progress)
    options.validate()
    check_versions()
    check_pool(options.pool)
    line = versions.line_for()
    folder = tempfile.mkdtemp(prefix='cdf-verify-')
    database = None
    runs = []
    try:
        # The broker first: a bad --broker is reported before a server is started for nothing.
        brokers = _Brokers(folder, options.broker)
        if options.database:
            database = open_given_database(options.database)
        else:
            database = open_embedded_database(folder, progress)
        scenarios = []
        skipped = {}
        for scenario in SCENARIOS:
            if scenario.key == 'fork' and options.pool != 'prefork':
                skipped['fork'] = 'the fork scenario needs the prefork pool (-P prefork)'
            elif scenario.key == 'fork' and database.vendor not in ('postgresql', 'mysql'):
                skipped['fork'] = ('the fork scenario needs PostgreSQL or MySQL (a connection '
                                   'to a server, inherited by the pool\'s processes): install '
                                   'PostgreSQL\'s server binaries or pass --database')
            else:
                scenarios.append(scenario)
        database.prepare(['{0}_{1}'.format(scenario.key, mode[0])
                          for scenario in scenarios for mode in MODES])
        runs = [WorkerRun(scenario, mode, options, database, brokers, folder)
                for scenario in scenarios for mode in MODES]
        if database.private:
            _run_overlapping(runs, progress)
        else:
            _run_one_by_one(runs, progress)
        results = dict((run.name, run.result()) for run in runs)
        report = {
            'python': platform.python_version(),
            'celery': celery.__version__,
            'django': django.get_version(),
            'celery_line': line.name,
            'celery_problem': line.problem,
            'database': {
                'vendor': database.vendor,
                'description': database.description,
                'embedded': not options.database,
                'server_counter': database.server_counter,
                'notes': database.notes,
            },
            'broker': brokers.description,
            'pool': options.pool,
            'concurrency': options.concurrency,
            'tasks': options.tasks,
            'conn_max_age': CONN_MAX_AGE,
            'scenarios': {},
        }
        for scenario in SCENARIOS:
            if scenario.key in skipped:
                report['scenarios'][scenario.key] = {'title': scenario.title.format(
                                                         tasks=options.tasks),
                                                     'skipped': skipped[scenario.key]}
                continue
            entry = {'title': scenario.title.format(tasks=options.tasks)}
            for key, _, _ in MODES:
                entry[key] = results['{0}_{1}'.format(scenario.key, key)]
            entry['stock_finding'], entry['stock_problem_shown'] = _stock_finding(
                scenario, entry['stock'], options, line)
            report['scenarios'][scenario.key] = entry
        report['ok'], report['reason'] = _verdict(report, options, database)
        return report
    finally:
        for run in runs:
            run.close()
        if database is not None:
            database.close()
        shutil.rmtree(folder, ignore_errors=True)


def _run_overlapping(runs, progress):
    """Private databases: start every worker at once, run their tasks one worker at a time
    (the others idle, so throughput stays comparable), then stop them all at once."""
    progress.status('starting {0} workers (-P {1} -c {2})...'.format(
        len(runs), runs[0].options.pool, runs[0].options.concurrency))
    _in_threads(lambda run: run.start(), runs)
    for run in runs:
        run.execute(progress)
        if run.stalled:
            # A hung worker's SIGTERM wait overlaps the next run instead of adding to it.
            run.stop_in_background()
        progress.finish(run.label, _run_label_text(run_summary(run)))
    progress.status('stopping the workers (SIGTERM; {0:g} s before one is called hung)...'
                    .format(runs[0].options.stop_timeout))
    _in_threads(lambda run: run.stop(), [run for run in runs if not run.stalled])
    for run in runs:
        run.join()
        run.measure()


def _run_one_by_one(runs, progress):
    """A shared database: the server's counter can only be read for one worker at a time."""
    for run in runs:
        progress.status('{0}: starting the worker (-P {1} -c {2})...'.format(
            run.label, run.options.pool, run.options.concurrency))
        run.start()
        run.execute(progress)
        progress.finish(run.label, _run_label_text(run_summary(run)))
        run.stop()
        run.measure()


def run_summary(run):
    from .harness.run import summarize
    return summarize(run.outcomes)


def counted_sessions(result, database):
    """The number the verdict uses: the server's when it counts this run alone, else the
    worker's own count."""
    if database.get('server_counter') and database.get('embedded'):
        return result['server_sessions']
    return result['worker_connections']


def _stock_finding(scenario, stock, options, line):
    """What the stock run showed, in one sentence, and whether it shows the line's problem."""
    per_task = stock['worker_connections'] >= stock['tasks'] or (
        stock['server_sessions'] is not None and stock['server_sessions'] >= stock['tasks'])
    broke = stock['failed'] or stock['unfinished'] or stock['stop'] == 'hung'
    if broke:
        what = []
        if stock['failed']:
            what.append('{0} tasks failed'.format(stock['failed']))
        if stock['unfinished']:
            what.append('{0} never finished'.format(stock['unfinished']))
        if stock['stop'] == 'hung':
            what.append('the worker ignored SIGTERM (hung, killed)')
        text = ', '.join(what)
        if scenario.key == 'fork':
            text += ': the pool\'s processes used the connection inherited at fork'
        return text, True
    if scenario.key == 'fork' and stock.get('tasks_on_parent_session'):
        return ('{0} tasks ran on the session the main process opened before the fork: the '
                'pool\'s processes share one connection (no error this time; under load their '
                'replies get mixed up or the socket breaks)'.format(
                    stock['tasks_on_parent_session']), True)
    if per_task:
        text = ('a new database connection for every task: CONN_MAX_AGE={0} is ignored by '
                'Celery {1}'.format(CONN_MAX_AGE, line.name))
        if scenario.key == 'fork':
            text = 'no failure (what the pool inherits is closed), but ' + text
        return text, True
    if scenario.key == 'fork':
        if line.after_fork == 'close_if_unusable_or_obsolete':
            return ('no failure this time; Celery {0} keeps the inherited connection, which '
                    'fails intermittently: run again or with more --tasks'.format(line.name),
                    False)
        return 'no failure: Celery {0} closes what the pool inherits'.format(line.name), False
    return 'connections reused: Celery {0} honours CONN_MAX_AGE'.format(line.name), False


def _verdict(report, options, database):
    """``(ok, reason)``: ok when every patched run reused connections with no failed task."""
    problems = []
    limit = options.processes + 1
    for key in ('reuse', 'fork'):
        entry = report['scenarios'][key]
        if 'skipped' in entry:
            continue
        patched = entry['patched']
        if patched['failed'] or patched['unfinished']:
            problems.append('{0}: {1} of the patched worker\'s tasks failed and {2} never '
                            'finished{3}'.format(
                                key, patched['failed'], patched['unfinished'],
                                ' ({0})'.format(patched['errors'][0])
                                if patched['errors'] else ''))
        if patched['stop'] != 'stopped':
            problems.append('{0}: the patched worker did not stop on SIGTERM ({1})'.format(
                key, patched['stop']))
        sessions = counted_sessions(patched, report['database'])
        if sessions is None or sessions > limit:
            problems.append('{0}: the patched worker opened {1} connections for {2} tasks, '
                            'more than one per process ({3} allowed): it did not reuse '
                            'them'.format(key, sessions, patched['tasks'], limit))
    if problems:
        return False, '; '.join(problems)
    reuse = report['scenarios']['reuse']['patched']
    return True, ('the patched worker reused connections ({0} for {1} tasks) and none of its '
                  'tasks failed'.format(counted_sessions(reuse, report['database']),
                                        reuse['tasks']))


# -- the report ------------------------------------------------------------------------------

def _cell(value, none='n/a'):
    return none if value is None else str(value)


def format_report(report):
    """The human-readable report, as a list of lines."""
    database = report['database']
    out = [
        'celery-django-fixup verify: Python {python}, Celery {celery} (line {celery_line}), '
        'Django {django}'.format(**report),
        '  database: {0}'.format(database['description']),
        '  broker:   {0}'.format(report['broker']),
        '  each run: a new worker (-P {pool} -c {concurrency}), CONN_MAX_AGE={conn_max_age}, '
        '{tasks} tasks of one query each'.format(**report),
    ]
    if database['server_counter']:
        out.append('  "sessions (server)": counted by the server: {0}'.format(
            database['server_counter']))
    else:
        out.append('  "sessions (server)": n/a, {0}'.format(
            'SQLite has no server' if database['vendor'] == 'sqlite'
            else 'this server keeps no session counter'))
    out.append('  "connections (worker)": counted in the worker, each time Django opens a '
               'connection in any of its processes')
    out.append('  "tasks/s": from the first task sent to the last result seen; runs this short '
               'vary by about a third from one run to the next')
    for note in database['notes']:
        out.append('  note: {0}'.format(note))
    for number, key in enumerate(('reuse', 'fork'), 1):
        entry = report['scenarios'][key]
        out.append('')
        out.append('{0}. {1}'.format(number, entry['title']))
        if 'skipped' in entry:
            out.append('   skipped: {0}'.format(entry['skipped']))
            continue
        stock, patched = entry['stock'], entry['patched']
        rows = [
            ('', 'stock Celery {0}'.format(report['celery']), 'patched'),
            ('tasks ok / failed', _ok_failed(stock), _ok_failed(patched)),
            ('sessions (server)', _cell(stock['server_sessions']),
             _cell(patched['server_sessions'])),
            ('connections (worker)', _cell(stock['worker_connections']),
             _cell(patched['worker_connections'])),
        ]
        if stock.get('tasks_on_parent_session') or patched.get('tasks_on_parent_session'):
            rows.append(('tasks on the parent\'s session',
                         _cell(stock['tasks_on_parent_session']),
                         _cell(patched['tasks_on_parent_session'])))
        rows.extend([
            ('tasks/s', '{0:.0f}'.format(stock['tasks_per_second']),
             '{0:.0f}'.format(patched['tasks_per_second'])),
            ('SIGTERM', _stop_text(stock), _stop_text(patched)),
        ])
        for label, left, right in rows:
            out.append('   {0:<30} {1:<28} {2}'.format(label, left, right))
        out.append('   stock: {0}'.format(entry['stock_finding']))
        for error in stock['errors'][:1]:
            out.append('   first stock error: {0}'.format(_one_line(error)[:160]))
    out.append('')
    if report['ok']:
        out.append('OK: {0}.'.format(report['reason']))
    else:
        out.append('FAILED: {0}.'.format(report['reason']))
    return out


def _ok_failed(result):
    text = '{0} / {1}'.format(result['ok'], result['failed'])
    if result['unfinished']:
        text += ' ({0} never finished)'.format(result['unfinished'])
    return text


def _stop_text(result):
    if result['stop'] == 'hung':
        return 'hung, killed after {0:.0f} s'.format(result['stop_seconds'] or 0)
    if result['stop'] == 'stopped':
        return 'stopped in {0:.1f} s'.format(result['stop_seconds'] or 0)
    return str(result['stop'])
