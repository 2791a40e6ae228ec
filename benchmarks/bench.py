#!/usr/bin/env python
"""What connection reuse is worth to a real prefork worker, and what the safety rules cost.

::

    python benchmarks/bench.py                      # 3 rounds of 2,000 tasks
    python benchmarks/bench.py --rounds 5 --tasks 1000 --json results.json
    python benchmarks/bench.py --networks plain,tls,pooled

Each variant is a real ``celery worker -P prefork -c 2`` of the demo project, with Redis as
broker and result backend, against a throwaway PostgreSQL server over TCP on 127.0.0.1, one
per network (``--networks``; by default ``plain,pooled`` where Django has connection pools
and psycopg-pool is installed, ``plain,tls`` elsewhere):

- ``plain``: ``CONN_MAX_AGE=600``;
- ``tls``: a server that only accepts TLS (``sslmode=require``), ``CONN_MAX_AGE=600``;
- ``pooled``: a plain server, and Django's connection pool (Django 5.1+, psycopg 3 and
  psycopg-pool): ``OPTIONS['pool']`` = ``--pool-options`` (one connection per process by
  default) and ``CONN_MAX_AGE=0``, as Django requires. Reuse then means handing the
  connection back to the pool at the end of a task.

The variants:

- ``stock``: Celery's own fix-up. On the lines that close every connection before and after
  every task (4.0-4.1, 4.4.0-4.4.3, 5.6-5.7) that is one new PostgreSQL session per task,
  whatever ``CONN_MAX_AGE`` says: run this on one of them (the ``bench`` tox env uses 4.4.0,
  ``bench57`` 5.7.0). With a pool, 5.6-5.7 also close the pool at every task in a prefork
  child (celery#10554): again one new session per task;
- ``patched``: ``celery_django_fixup`` (``Celery(fixups=['celery_django_fixup:fixup'])``);
- ``unsafe``: plain ``close_if_unusable_or_obsolete()`` reuse with no safety rule and no
  check before reuse, the upper bound of what reuse can give (with a pool: the connection
  goes back to the pool, which is never closed).

Each variant has its own worker and its own database (so that the server counts its sessions
apart), all started at the beginning and stopped at the end. The workers take turns: a round
sends each of them its tasks (a tiny ORM write and read each) in bursts, one worker at a time
while the others sit idle, the first of each turn rotating; a machine getting busier or
quieter during the run so weighs on every variant alike. Throughput is taken from the
worker's side, from the first task's completion to the last's in each burst (the time each
task returns), so sending and collecting stay out of it; a variant's tasks/s in a round is
over all its bursts, and the table gives the median of the rounds. New sessions are what the
server counted (``pg_stat_database.sessions``) on the variant's database, from before its
worker started until after it stopped, so over every round. CPU per task is read from
``/proc`` around each burst: the worker's processes, and the PostgreSQL server's postmaster
and backends (those that exited included).

A micro-benchmark then times the fix-ups' per-task hooks (``task_prerun`` + ``task_postrun``)
in-process, with 1 and 3 database aliases.

Needs Redis (``--broker``, default ``redis://127.0.0.1:6379/15``), the PostgreSQL server
binaries (``initdb``, ``postgres``; when run as root the servers run as the ``postgres``
account), ``openssl``, psycopg2 (the counters' driver; Django uses psycopg 3 when it is
installed too), and PostgreSQL 14 or later for the session counter. The
default run takes about 3 minutes on 2 idle cores (5 when the machine is busy);
``--tasks`` and ``--rounds`` scale it, and every burst has a deadline.
Exit status: 0 when the run completed (see the PASS/MISS lines; ``--check`` turns a MISS into
status 3), 1 when a run failed, 2 when a service or tool is missing.
"""
from __future__ import absolute_import, division, print_function

import argparse
import json
import os
import platform
import subprocess
import sys
import time

try:
    import celery_django_fixup  # noqa: F401 -- installed, or found on the path
except ImportError:
    # Run from a checkout that is not installed: use the package next to this folder.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from celery_django_fixup.harness import dbstats, run  # noqa: E402
from celery_django_fixup.harness.pgcluster import PgCluster  # noqa: E402

PATCHED_CLASS = 'celery_django_fixup.worker.DjangoWorkerFixup'

#: Variant name -> the demo app's ``CDF_MODE``, the fix-up class the worker must report, and
#: settings of its own.
VARIANTS = (
    ('stock', 'stock', 'celery.fixups.django.DjangoWorkerFixup', None),
    ('patched', 'fixups', PATCHED_CLASS, None),
    ('unsafe', 'unsafe', 'cdf_demo.unsafe.UnsafeWorkerFixup', None),
    # Not run unless asked for (--variants): what the check before reuse costs.
    ('nocheck', 'fixups', PATCHED_CLASS, {'CELERY_DB_HEALTH_CHECKS': False}),
)
DEFAULT_VARIANTS = ('stock', 'patched', 'unsafe')
#: The ceiling: the same worker running a task that does not touch the database, so what
#: the broker, the result backend and the pool cost per task, with no connection strategy.
NOOP = ('noop', 'fixups', PATCHED_CLASS, None)
NOOP_TASK = 'cdf_demo.noop'
NOOP_NETWORK = 'no db'
NETWORKS = ('plain', 'tls', 'pooled')
#: Django's PostgreSQL connection pool of the ``pooled`` rows (Django 5.1+, psycopg 3 and
#: psycopg-pool): one connection per process, as a prefork child runs one task at a time.
POOL_OPTIONS = {'min_size': 1, 'max_size': 1}
TASK = 'cdf_demo.orm'
CONN_MAX_AGE = 600
BENCH_USER = 'bench'
BENCH_PASSWORD = 'bench-only-not-a-secret'

#: The targets of the issue: minimum patched/stock speed-up per network, minimum
#: patched/unsafe ratio.
TARGET_SPEEDUP = {'plain': 1.8, 'tls': 3.0, 'pooled': 2.5}
#: On Celery 5 (5.6-5.7 close every connection, and a pool, at every task).
TARGET_SPEEDUP_CELERY5 = {'plain': 2.5, 'tls': 3.0, 'pooled': 2.5}
TARGET_VS_UNSAFE = 0.95


class BenchError(Exception):
    """A run did not complete: the message says which and why."""


class Unavailable(Exception):
    """A service or tool the benchmark needs is missing."""


def log(message):
    sys.stderr.write(message + '\n')
    sys.stderr.flush()


def median(values):
    values = sorted(values)
    middle = len(values) // 2
    if len(values) % 2:
        return values[middle]
    return (values[middle - 1] + values[middle]) / 2.0


# -- the database servers --------------------------------------------------------------------

class Server(object):
    """One throwaway PostgreSQL server, with a database of its own for each variant so that
    the server counts each variant's sessions apart."""

    def __init__(self, network, auth):
        self.network = network
        self.auth = auth
        # ``pooled`` has a plain server of its own; its workers use Django's pool.
        self.cluster = PgCluster(ssl_only=(network == 'tls'),
                                 settings={'password_encryption': 'scram-sha-256'})
        self.stats = None
        self.version = None

    def params(self):
        return {'sslmode': 'require'} if self.network == 'tls' else {}

    def start(self):
        self.cluster.start()
        self.stats = dbstats.PostgresStats(self.cluster.url('postgres', **self.params()))
        self.stats.connect()
        self.version = self.stats.server_version()
        if self.version < 140000:
            raise Unavailable('PostgreSQL 14 or later is needed to count sessions')
        if self.auth == 'scram':
            self._require_scram()
        return self

    def add_database(self, name, table=True):
        """Create database ``name`` (with the demo table); the URL a worker uses for it."""
        self.cluster.create_database(name, owner=BENCH_USER if self.auth == 'scram' else None)
        if self.auth == 'scram':
            url = self.cluster.url(name, user=BENCH_USER, **self.params()).replace(
                BENCH_USER + '@', '{0}:{1}@'.format(BENCH_USER, BENCH_PASSWORD), 1)
        else:
            url = self.cluster.url(name, **self.params())
        if table:
            run.prepare_database(url)
        return url

    def _require_scram(self):
        """The workers log in as a user with a SCRAM password, as production servers ask;
        the superuser that counts sessions keeps trust authentication."""
        self.cluster.fetchall("CREATE ROLE {0} LOGIN PASSWORD '{1}'".format(
            BENCH_USER, BENCH_PASSWORD))
        kind = 'hostssl' if self.network == 'tls' else 'host'
        # Rewritten in place: the file keeps the owner the server reads it as.
        with open(os.path.join(self.cluster.data_dir, 'pg_hba.conf'), 'w') as fh:
            fh.write('{0}  all  {1}  127.0.0.1/32  scram-sha-256\n'.format(kind, BENCH_USER))
            fh.write('{0}  all  all  127.0.0.1/32  trust\n'.format(kind))
        self.cluster.fetchall('SELECT pg_reload_conf()')
        deadline = time.time() + 10
        while True:  # the reload is asynchronous: wait until a password is really asked
            try:
                self.cluster.connect('postgres', user=BENCH_USER).close()
            except Exception:  # noqa: B902 -- psycopg2.OperationalError: password required
                break
            if time.time() > deadline:
                raise BenchError('pg_hba.conf reload did not take effect')
            time.sleep(0.05)

    def connect_cost_ms(self, count=20):
        """Median milliseconds to open (and close) a connection as a worker does, on a
        database of its own (the variants' session counts must not include these)."""
        import psycopg2
        url = self.add_database('bench_connect', table=False)
        timings = []
        for _ in range(count):
            started = time.time()
            psycopg2.connect(url).close()
            timings.append((time.time() - started) * 1000.0)
        return round(median(timings), 2)

    def cpu_seconds(self):
        return _server_cpu(self.cluster.pid)

    def close(self):
        if self.stats is not None:
            self.stats.close()
        self.cluster.cleanup()


# -- the workers ------------------------------------------------------------------------------

class Contender(object):
    """One variant on one network: its database, its worker (kept running for the whole
    benchmark, idle between its bursts) and what it measured."""

    def __init__(self, server, network, variant, concurrency, broker, task=TASK,
                 pool_options=None):
        self.server = server
        self.pool_options = POOL_OPTIONS if pool_options is None else pool_options
        self.network = network
        self.variant = variant
        self.name = variant[0]
        self.task = task
        self.concurrency = concurrency
        self.broker = broker
        self.database = 'bench_{0}'.format(self.name)
        self.url = None
        self.worker = None
        self.client = None
        self.redis = None
        self.sessions_before = None
        self.sessions = None
        self.tasks_done = 0
        self.bursts = []

    @property
    def label(self):
        return '{0} {1}'.format(self.network, self.name)

    def start(self):
        _, mode, expected_class, settings = self.variant
        self.url = self.server.add_database(self.database)
        self.sessions_before = self.server.stats.sessions(self.database)
        databases = None
        if self.network == 'pooled':
            # Django refuses a pool with persistent connections: CONN_MAX_AGE must be 0.
            from celery_django_fixup.harness.demo.cdf_demo import dburl
            options = dict(dburl.parse(self.url)['OPTIONS'], pool=self.pool_options)
            databases = {'default': {'url': self.url, 'CONN_MAX_AGE': 0, 'OPTIONS': options}}
        self.worker = run.Worker(self.url, mode=mode, concurrency=self.concurrency,
                                 broker=self.broker, conn_max_age=CONN_MAX_AGE,
                                 databases=databases, settings=settings, loglevel='warning')
        self.worker.start(timeout=60)
        if self.worker.info.get('worker_fixup') != expected_class:
            raise BenchError('{0}: the worker runs {1}, not {2}'.format(
                self.label, self.worker.info.get('worker_fixup'), expected_class))
        self.client = self.broker.client()
        self.redis = _counting_client(self.broker.result_backend)
        return self

    def burst(self, count, timeout, round_number):
        """Send ``count`` tasks at once and wait for all; their throughput, taken from the
        worker's clock (first completion to last), and the CPU they cost."""
        backend = self.client.backend
        keys = []
        worker_cpu = self._worker_cpu()
        server_cpu = self.server.cpu_seconds()
        try:
            with self.client.producer_or_acquire() as producer:
                for _ in range(count):
                    result = self.client.send_task(self.task, queue=self.worker.queue,
                                                   producer=producer)
                    keys.append(backend.get_key_for_task(result.id))
            self._wait(keys, timeout)
            worker_cpu = self._worker_cpu() - worker_cpu
            server_cpu = self.server.cpu_seconds() - server_cpu
            metas = [backend.decode_result(value) for value in backend.mget(keys)]
        finally:
            for start in range(0, len(keys), 500):
                self.redis.delete(*keys[start:start + 500])
        bad = [meta for meta in metas if meta.get('status') != 'SUCCESS' or
               (self.task == TASK and not meta['result'].get('found'))]
        if bad:
            raise BenchError('{0}: {1} of {2} tasks did not succeed, e.g. {3!r}'.format(
                self.label, len(bad), count, bad[0]))
        done = sorted(meta['result']['at'] for meta in metas)
        self.tasks_done += count
        burst = {'round': round_number, 'tasks': count, 'intervals': count - 1,
                 'seconds': done[-1] - done[0], 'worker_cpu': worker_cpu,
                 'server_cpu': server_cpu, 'load': _load()[0] if _load() else None}
        self.bursts.append(burst)
        return burst

    def _worker_cpu(self):
        # The pool's children are not reaped while the worker runs: each is read on its own.
        return sum(_cpu_seconds(pid) for pid in self.worker.processes())

    def _wait(self, keys, timeout, stall=30.0):
        """Poll how many results exist (``EXISTS`` sends no values back, so the poll costs
        next to nothing) until all are there."""
        deadline = time.time() + timeout
        seen, progress = 0, time.time()
        while True:
            count = sum(int(self.redis.execute_command('EXISTS', *keys[start:start + 500]))
                        for start in range(0, len(keys), 500))
            now = time.time()
            if count >= len(keys):
                return
            if count > seen:
                seen, progress = count, now
            if now > deadline or now - progress > stall or self.worker.proc.poll() is not None:
                raise BenchError('{0}: {1} of {2} tasks done when the wait ended\n{3}'.format(
                    self.label, count, len(keys), self.worker.log_tail()))
            time.sleep(0.01)

    def stop(self):
        """SIGTERM the worker; it must exit (a hung worker is a failed benchmark)."""
        if self.worker is None:
            return
        stopped = self.worker.stop(timeout=15)
        if stopped != 'stopped':
            raise BenchError('{0}: the worker did not stop on SIGTERM ({1})\n{2}'.format(
                self.label, stopped, self.worker.log_tail()))

    def count_sessions(self):
        """New sessions the server counted on this variant's database, once it stopped."""
        self.sessions = (self.server.stats.settled_sessions(self.database) -
                         self.sessions_before)
        return self.sessions

    def close(self):
        if self.worker is not None:
            self.worker.close()
        if self.client is not None:
            self.client.close()

    def rounds(self):
        """Per round: tasks/s over its bursts, and CPU milliseconds per task."""
        found = []
        for number in sorted(set(b['round'] for b in self.bursts)):
            mine = [b for b in self.bursts if b['round'] == number]
            seconds = sum(b['seconds'] for b in mine)
            tasks = sum(b['tasks'] for b in mine)
            found.append({
                'round': number, 'tasks': tasks, 'seconds': round(seconds, 3),
                'per_second': round(sum(b['intervals'] for b in mine) / seconds, 1)
                if seconds > 0 else 0.0,
                'worker_cpu_ms': round(sum(b['worker_cpu'] for b in mine) / tasks * 1e3, 3),
                'server_cpu_ms': round(sum(b['server_cpu'] for b in mine) / tasks * 1e3, 3),
            })
        return found


_TICKS = os.sysconf('SC_CLK_TCK') if hasattr(os, 'sysconf') else 100


def _cpu_fields(pid):
    try:
        with open('/proc/{0}/stat'.format(pid)) as fh:
            # "pid (comm) state ppid ...": utime, stime, cutime, cstime are fields 14-17.
            fields = fh.read().rsplit(')', 1)[1].split()
    except (IOError, OSError, IndexError):
        return [0, 0, 0, 0]
    return [int(value) for value in fields[11:15]]


def _cpu_seconds(pid, children=False):
    """CPU seconds used by ``pid`` (and by its children it has reaped, with ``children``)."""
    fields = _cpu_fields(pid)
    return sum(fields if children else fields[:2]) / float(_TICKS)


def _server_cpu(postmaster):
    """CPU seconds used so far by a PostgreSQL server: the postmaster, the backends it has
    reaped (one per session that ended) and those still running."""
    if postmaster is None:
        return 0.0
    return _cpu_seconds(postmaster, children=True) + sum(
        _cpu_seconds(pid, children=True) for pid in _children_of(postmaster))


def _children_of(parent):
    found = []
    for entry in os.listdir('/proc') if os.path.isdir('/proc') else ():
        if entry.isdigit():
            try:
                with open('/proc/{0}/stat'.format(entry)) as fh:
                    if int(fh.read().rsplit(')', 1)[1].split()[1]) == parent:
                        found.append(int(entry))
            except (IOError, OSError, IndexError, ValueError):
                continue
    return found


def _counting_client(url):
    """A Redis client whose ``EXISTS`` gives the number of keys found (redis-py 2 makes it a
    bool, and takes one key only)."""
    import redis
    client = redis.StrictRedis.from_url(url)
    client.response_callbacks.pop('EXISTS', None)
    return client


# -- the micro-benchmark of the hooks -----------------------------------------------------------

def micro_child(aliases, url, iterations):
    """In a process of its own (Django configured here only): time the hooks of each fix-up.

    ``hooks``: ``task_prerun`` + ``task_postrun`` with the connections open and unused;
    ``with query``: the same around one ``SELECT 1`` per alias, the least a task that uses
    its database does, so the patched fix-up's check before reuse (a zero-wait poll of each
    kept connection's socket) is in it. Stock closes every connection, so its ``with query``
    includes a new connection per alias and runs fewer iterations.
    """
    from celery_django_fixup.harness.demo import PATH
    sys.path.insert(0, PATH)
    from cdf_demo import dburl
    from django.conf import settings
    entry = dict(dburl.parse(url), CONN_MAX_AGE=CONN_MAX_AGE)
    names = ['default'] + ['alias{0}'.format(index) for index in range(2, aliases + 1)]
    settings.configure(DATABASES=dict((name, dict(entry)) for name in names),
                       INSTALLED_APPS=[], USE_TZ=True, DEBUG=False,
                       CELERY_DB_HEALTH_CHECKS=True)
    import django
    django.setup()
    from celery import Celery
    from django.db import connections

    from celery_django_fixup.worker import DjangoWorkerFixup, upstream_class
    from cdf_demo.unsafe import UnsafeWorkerFixup

    class Request(object):
        is_eager = False

    class Task(object):
        request = Request()

    app = Celery('bench-micro', fixups=[], set_as_current=False)
    task = Task()
    fixups = [('stock', upstream_class()(app)), ('patched', DjangoWorkerFixup(app)),
              ('unsafe', UnsafeWorkerFixup(app))]
    no_checks = DjangoWorkerFixup(app)
    no_checks.health_check = None
    fixups.insert(2, ('patched, no health check', no_checks))

    conns = [connections[name] for name in names]

    def sample(fixup, query, count):
        for conn in conns:
            conn.ensure_connection()
        started = time.time()
        for _ in range(count):
            fixup.on_task_prerun(sender=task, task_id='x', task=task)
            if query:
                for conn in conns:
                    with conn.cursor() as cursor:
                        cursor.execute('SELECT 1')
            fixup.on_task_postrun(sender=task, task_id='x', task=task, state='SUCCESS')
        return (time.time() - started) / count * 1e6

    samples = dict(((name, query), []) for name, _ in fixups for query in (False, True))
    # The fix-ups take turns, five times: a busier moment of the machine hits all of them.
    for _ in range(5):
        for name, fixup in fixups:
            samples[name, False].append(sample(fixup, False, iterations))
            # Stock connects anew for every query: milliseconds each, so fewer of them.
            samples[name, True].append(sample(
                fixup, True, max(10, iterations // (100 if name == 'stock' else 10))))
    # The least disturbed sample, as timeit reports: the machine only ever adds time.
    results = [{'variant': name, 'aliases': aliases,
                'hooks_us': round(min(samples[name, False]), 1),
                'with_query_us': round(min(samples[name, True]), 1)} for name, _ in fixups]
    for name in names:
        connections[name].close()
    print(json.dumps(results))


def run_micro(url, iterations):
    results = []
    for aliases in (1, 3):
        environ = dict(os.environ)
        environ.pop('DJANGO_SETTINGS_MODULE', None)
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), '--micro-child',
                                 str(aliases), url, str(iterations)], env=environ,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise BenchError('micro-benchmark failed:\n' + err.decode('utf-8', 'replace'))
        results.extend(json.loads(out.decode('utf-8').strip().splitlines()[-1]))
    return results


# -- the report ---------------------------------------------------------------------------------

def environment():
    import celery
    import django
    import kombu
    import psycopg2
    import redis
    try:
        import psycopg
    except ImportError:
        psycopg = None
    try:
        import psycopg_pool
    except ImportError:
        psycopg_pool = None
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as fh:
            for line in fh:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except (IOError, OSError):
        pass
    return {
        'python': platform.python_version(), 'celery': celery.__version__,
        'kombu': kombu.__version__, 'django': django.get_version(),
        'psycopg2': psycopg2.__version__.split()[0], 'redis_py': redis.__version__,
        'psycopg': psycopg.__version__ if psycopg else None,
        'psycopg_pool': psycopg_pool.__version__ if psycopg_pool else None,
        'os': platform.platform(), 'cpu': cpu, 'cpus': _cpu_count(), 'memory': _memory(),
    }


def _memory():
    try:
        with open('/proc/meminfo') as fh:
            for line in fh:
                if line.startswith('MemTotal:'):
                    return '{0:.0f} GiB'.format(int(line.split()[1]) / 1024.0 / 1024.0)
    except (IOError, OSError, ValueError):
        pass
    return None


def _cpu_count():
    try:
        import multiprocessing
        return multiprocessing.cpu_count()
    except (ImportError, NotImplementedError):
        return None


def _load():
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def summarize(contenders, concurrency):
    """Per network and variant: sessions, tasks/s median/min/max of the rounds, ratios."""
    table = {}
    for contender in contenders:
        rounds = contender.rounds()
        rates = [r['per_second'] for r in rounds]
        table.setdefault(contender.network, {})[contender.name] = {
            'sessions': contender.sessions, 'tasks': contender.tasks_done,
            'median': round(median(rates), 1), 'min': min(rates), 'max': max(rates),
            'rounds': rounds, 'bursts': contender.bursts,
            # Where the time goes, per task: wall time of one pool child, CPU time of the
            # worker's processes and of the database server.
            'child_ms': round(concurrency * 1000.0 / median(rates), 2),
            'worker_cpu_ms': round(median([r['worker_cpu_ms'] for r in rounds]), 2),
            'server_cpu_ms': round(median([r['server_cpu_ms'] for r in rounds]), 2),
        }
    for network, rows in table.items():
        if network == NOOP_NETWORK:
            continue
        for row in rows.values():
            if 'stock' in rows:
                row['vs_stock'] = round(row['median'] / rows['stock']['median'], 2)
            if 'unsafe' in rows:
                row['vs_unsafe'] = round(row['median'] / rows['unsafe']['median'], 3)
    return table


def check_targets(table, concurrency, stock_reuses, speedups=None, pool_size=1):
    speedups = speedups or TARGET_SPEEDUP
    targets = []
    for network, rows in sorted(table.items()):
        if network == NOOP_NETWORK:
            continue
        # A pool keeps min_size connections in each pool process.
        limit = concurrency * (pool_size if network == 'pooled' else 1)
        for name in ('patched', 'unsafe'):
            if name in rows:
                value = rows[name]['sessions']
                targets.append({
                    'target': '{0} {1}: new sessions <= {2}'.format(
                        network, name, 'concurrency ({0})'.format(limit) if limit == concurrency
                        else 'concurrency x pool min_size ({0})'.format(limit)),
                    'value': value, 'ok': value <= limit})
        if 'patched' in rows and 'stock' in rows:
            goal = speedups[network]
            value = rows['patched']['vs_stock']
            entry = {'target': '{0}: patched/stock >= {1:g}x'.format(network, goal),
                     'value': value, 'ok': value >= goal}
            if stock_reuses:
                entry['ok'] = None
                entry['note'] = 'not applicable: this Celery line reuses connections itself'
            targets.append(entry)
        if 'patched' in rows and 'unsafe' in rows:
            value = rows['patched']['vs_unsafe']
            targets.append({'target': '{0}: patched/unsafe >= {1:g}x'.format(
                network, TARGET_VS_UNSAFE), 'value': value, 'ok': value >= TARGET_VS_UNSAFE})
    return targets


def render(report):
    env = report['environment']
    out = []
    if env.get('psycopg'):
        # Django 4.2+ uses psycopg 3 when it is installed (psycopg2 counts the sessions).
        drivers = 'psycopg {0}, psycopg-pool {1} (psycopg2 {2} for the counters)'.format(
            env['psycopg'], env.get('psycopg_pool'), env['psycopg2'])
    else:
        drivers = 'psycopg2 {0}'.format(env['psycopg2'])
    out.append('Python {python}, Celery {celery}, kombu {kombu}, Django {django}, {drivers}, '
               'redis-py {redis_py}'.format(drivers=drivers, **env))
    out.append('{cpus} x {cpu}, {memory} RAM; {os}'.format(**env))
    out.append('PostgreSQL {0} (throwaway servers, 127.0.0.1 TCP, auth {1}); connect+close '
               'median: {2}'.format(
                   report['postgresql'], report['auth'],
                   ', '.join('{0} {1} ms'.format(n, report['connect_ms'][n])
                             for n in report['networks'])))
    out.append('{tasks} x {task} per variant and round in {bursts} bursts taking turns, '
               'prefork -c {concurrency}, CONN_MAX_AGE={cma}, broker+results {broker}'.format(
                   tasks=report['tasks'], task=TASK, concurrency=report['concurrency'],
                   cma=CONN_MAX_AGE, broker=report['broker'], bursts=report['bursts']))
    if 'pooled' in report['networks']:
        out.append("pooled: plain server, Django's connection pool OPTIONS['pool']={0}, "
                   'CONN_MAX_AGE=0'.format(json.dumps(report['pool_options'], sort_keys=True)))
    out.append('{rounds} rounds; load average {l0} -> {l1}; {seconds:.0f} s in all'.format(
        rounds=report['rounds'], l0=report['load_before'], l1=report['load_after'],
        seconds=report['seconds']))
    out.append('')
    header = '{0:<6} {1:<8} {2:>15}  {3:>26}  {4:>8}  {5:>9}'.format(
        'net', 'variant', 'sessions/tasks', 'tasks/s median [min-max]', 'x stock', 'x unsafe')
    out.append(header)
    out.append('-' * len(header))
    for network in report['networks'] + [NOOP_NETWORK]:
        for name in [v[0] for v in VARIANTS + (NOOP,)]:
            row = report['table'].get(network, {}).get(name)
            if row is None:
                continue
            out.append('{0:<6} {1:<8} {2:>15}  {3:>26}  {4:>8}  {5:>9}'.format(
                network, name, '{0}/{1}'.format(row['sessions'], row['tasks']),
                '{0:.0f} [{1:.0f}-{2:.0f}]'.format(row['median'], row['min'], row['max']),
                '{0:.2f}'.format(row['vs_stock']) if 'vs_stock' in row else '',
                '{0:.3f}'.format(row['vs_unsafe']) if 'vs_unsafe' in row else ''))
    out.append('')
    for target in report['targets']:
        status = {True: 'PASS', False: 'MISS', None: 'N/A '}[target['ok']]
        note = ' ({0})'.format(target['note']) if target.get('note') else ''
        out.append('{0}  {1}: {2}{3}'.format(status, target['target'], target['value'], note))
    out.append('')
    out.append('Profile, per task (medians): wall time of one pool child; CPU of the worker '
               '(main + pool) and of PostgreSQL (postmaster + backends):')
    header = '{0:<6} {1:<8} {2:>14} {3:>16} {4:>19}'.format(
        'net', 'variant', 'child wall ms', 'worker CPU ms', 'PostgreSQL CPU ms')
    out.append(header)
    out.append('-' * len(header))
    for network in report['networks'] + [NOOP_NETWORK]:
        for name in [v[0] for v in VARIANTS + (NOOP,)]:
            row = report['table'].get(network, {}).get(name)
            if row is not None:
                out.append('{0:<6} {1:<8} {2:>14.2f} {3:>16.2f} {4:>19.2f}'.format(
                    network, name, row['child_ms'], row['worker_cpu_ms'],
                    row['server_cpu_ms']))
    if report.get('micro'):
        out.append('')
        out.append('Per-task hook cost (task_prerun + task_postrun), microseconds, best of 5, '
                   'in-process on the {0} server:'.format(report['micro_network']))
        header = '{0:<26} {1:>8} {2:>10} {3:>22}'.format(
            'fix-up', 'aliases', 'hooks', 'hooks + SELECT 1/alias')
        out.append(header)
        out.append('-' * len(header))
        for row in report['micro']:
            out.append('{0:<26} {1:>8} {2:>10.1f} {3:>22.1f}'.format(
                row['variant'], row['aliases'], row['hooks_us'], row['with_query_us']))
    return '\n'.join(out)


# -- main ---------------------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--tasks', type=int, default=2000,
                        help='tasks per variant and round (2000)')
    parser.add_argument('--rounds', type=int, default=3,
                        help='rounds; tasks/s is the median of the rounds (3)')
    parser.add_argument('--bursts', type=int, default=8,
                        help='a round sends each variant its tasks in this many bursts, the '
                             'variants taking turns (8)')
    parser.add_argument('--concurrency', type=int, default=2, help='prefork children (2)')
    parser.add_argument('--broker', default=os.environ.get('CDF_BENCH_BROKER_URL',
                                                           'redis://127.0.0.1:6379/15'),
                        help='Redis URL, broker and result backend')
    parser.add_argument('--auth', choices=('trust', 'scram'), default='trust',
                        help='how workers log in to PostgreSQL (trust)')
    parser.add_argument('--networks', default=None,
                        help="comma-separated: plain, tls, pooled (Django's connection pool "
                             'on a plain server: Django 5.1+, psycopg 3, psycopg-pool). Default: '
                             'plain,pooled where Django has pools and psycopg-pool is '
                             'installed, else plain,tls')
    parser.add_argument('--pool-options', type=json.loads, default=POOL_OPTIONS,
                        help="Django's OPTIONS['pool'] of the pooled rows, as JSON: true or "
                             'an object of psycopg_pool.ConnectionPool arguments (%s)' %
                             json.dumps(POOL_OPTIONS, sort_keys=True).replace('%', '%%'))
    parser.add_argument('--micro-iterations', type=int, default=3000,
                        help='hook calls per sample of the micro-benchmark; 0 skips it')
    parser.add_argument('--json', metavar='PATH',
                        help="write the full results as JSON to PATH ('-': stdout, and the "
                             "table to stderr)")
    parser.add_argument('--variants', default=','.join(DEFAULT_VARIANTS),
                        help='comma-separated: stock, patched, unsafe (these three by '
                             'default), nocheck (patched with CELERY_DB_HEALTH_CHECKS=False)')
    parser.add_argument('--no-noop', dest='noop', action='store_false',
                        help='skip the worker whose task does not touch the database')
    parser.add_argument('--check', action='store_true',
                        help='exit with status 3 if a target is missed')
    parser.add_argument('--micro-child', nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.networks is None:
        args.networks = 'plain,pooled' if _pools_available() is None else 'plain,tls'
    args.networks = [n.strip() for n in args.networks.split(',') if n.strip()]
    if not args.networks or set(args.networks) - set(NETWORKS):
        parser.error('--networks takes plain, tls and/or pooled')
    args.variants = [v.strip() for v in args.variants.split(',') if v.strip()]
    if not args.variants or set(args.variants) - set(v[0] for v in VARIANTS):
        parser.error('--variants takes stock, patched, unsafe and/or nocheck')
    if args.rounds < 1 or args.concurrency < 1 or args.bursts < 1 or \
            args.tasks < 2 * args.bursts:
        parser.error('--rounds, --concurrency, --bursts >= 1 and --tasks >= 2 x --bursts')
    return args


def _pool_min_size(options):
    """Connections a pool keeps open in each process (psycopg_pool's default min_size: 4)."""
    return options.get('min_size', 4) if isinstance(options, dict) else 4


def _pools_available():
    """None if Django's PostgreSQL connection pool can be used here, else why not."""
    import django
    if django.VERSION[:2] < (5, 1):
        return 'Django {0} has no connection pool (5.1+)'.format(django.get_version())
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        return 'the pooled rows need psycopg 3 and psycopg-pool: {0}'.format(exc)
    return None


def bench(args):
    from celery_django_fixup import versions
    started = time.time()
    if 'pooled' in args.networks and _pools_available():
        raise Unavailable(_pools_available())
    line = versions.line_for()
    if line is None:
        raise Unavailable('Celery {0} is outside the supported range'.format(
            versions.celery_version()))
    if line.reuses:
        log('note: Celery {0} ({1}) reuses connections itself: "stock" is not the '
            'close-every-task baseline; run on Celery 4.4.0-4.4.3 or 4.0-4.1.'.format(
                versions.celery_version(), line.name))
    broker = run.Broker.redis(args.broker)
    try:
        broker.check()
    except Exception as exc:  # noqa: B902 -- whatever the transport raises
        raise Unavailable('Redis at {0}: {1!r}'.format(args.broker, exc))
    why = PgCluster.why_unavailable()
    if why:
        raise Unavailable(why)

    report = {'environment': environment(), 'tasks': args.tasks, 'rounds': args.rounds,
              'bursts': args.bursts, 'concurrency': args.concurrency, 'broker': args.broker,
              'auth': args.auth, 'networks': args.networks, 'celery_line': line.name,
              'pool_options': args.pool_options,
              'stock_reuses': line.reuses, 'load_before': _load()}
    servers = {}
    contenders = []
    try:
        for network in args.networks:
            servers[network] = Server(network, args.auth).start()
        first = servers[args.networks[0]]
        report['postgresql'] = '{0}.{1}'.format(first.version // 10000, first.version % 100)
        for network in args.networks:
            for variant in VARIANTS:
                if variant[0] in args.variants:
                    contenders.append(Contender(servers[network], network, variant,
                                                args.concurrency, broker,
                                                pool_options=args.pool_options))
        if args.noop:
            contenders.append(Contender(first, NOOP_NETWORK, NOOP, args.concurrency, broker,
                                        task=NOOP_TASK))
        # Every worker runs from start to end, idle but for its own bursts.
        for contender in contenders:
            contender.start()
        report['connect_ms'] = dict((n, s.connect_cost_ms()) for n, s in servers.items())
        sizes = [args.tasks // args.bursts + (1 if index < args.tasks % args.bursts else 0)
                 for index in range(args.bursts)]
        timeout = max(60.0, max(sizes) / 10.0)
        turn = 0
        previous = None
        for number in range(1, args.rounds + 1):
            for size in sizes:
                # Each turn starts with the next contender, so none is always first, and
                # every other turn goes the other way round, so none always runs right after
                # the same one (after stock's burst the server is still reaping its backends).
                shift = turn % len(contenders)
                order = contenders[shift:] + contenders[:shift]
                if turn % 2:
                    order.reverse()
                turn += 1
                for contender in order:
                    contender.burst(size, timeout, number)
                    contender.bursts[-1]['after'] = previous
                    previous = contender.label
            log('round {0}: '.format(number) + ', '.join(
                '{0} {1:.0f}/s'.format(c.label, c.rounds()[-1]['per_second'])
                for c in contenders))
        for contender in contenders:
            contender.stop()
        for contender in contenders:
            contender.count_sessions()
        if args.micro_iterations:
            network = 'plain' if 'plain' in servers else args.networks[0]
            url = [c.url for c in contenders if c.network == network][0]
            report['micro'] = run_micro(url, args.micro_iterations)
            report['micro_network'] = network
    finally:
        for contender in contenders:
            contender.close()
        for server in servers.values():
            server.close()
    report['table'] = summarize(contenders, args.concurrency)
    report['targets'] = check_targets(
        report['table'], args.concurrency, line.reuses,
        TARGET_SPEEDUP_CELERY5 if versions.celery_version() >= (5, 0, 0) else TARGET_SPEEDUP,
        pool_size=_pool_min_size(args.pool_options))
    report['load_after'] = _load()
    report['seconds'] = round(time.time() - started, 1)
    return report


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.micro_child:
        aliases, url, iterations = args.micro_child
        micro_child(int(aliases), url, int(iterations))
        return 0
    try:
        report = bench(args)
    except Unavailable as exc:
        log('cannot run the benchmark: {0}'.format(exc))
        return 2
    except BenchError as exc:
        log('benchmark failed: {0}'.format(exc))
        return 1
    text = render(report)
    if args.json == '-':
        log(text)
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(text)
        if args.json:
            with open(args.json, 'w') as fh:
                json.dump(report, fh, indent=2, sort_keys=True)
    missed = [t for t in report['targets'] if t['ok'] is False]
    return 3 if args.check and missed else 0


if __name__ == '__main__':
    sys.exit(main())
