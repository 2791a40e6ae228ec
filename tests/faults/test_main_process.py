"""Scenario 9: the worker's main process writes to the database, and the server ends its session.

With django-celery-results as the result backend (``result_backend = 'django-db'``) the worker's
main process stores, through Django itself, the failure of a task its pool process could not
report: killed by its hard time limit (``Request.on_timeout``) or dead (``WorkerLostError``).
That connection lives outside every task, so no task boundary checks or closes it.

A prefork worker (``-c 2``, ``-O fair``, prefetch 1, ``CONN_MAX_AGE=600``) gets, one after the
other, six tasks that are killed (a 1 s hard time limit on a 3 s sleep, and a task that kills its
own process, in turn), each followed by two ordinary tasks. Between two killed tasks the server
ends the worker's sessions, one way per case:

- ``terminate``: ``pg_terminate_backend`` of every session of the worker;
- ``idle timeout``: the sessions' own idle timeout (PostgreSQL ``idle_session_timeout`` in the
  connection's ``options``, MariaDB ``wait_timeout`` from an ``init_command``; nothing set
  server-wide) and a pause longer than it;
- ``server restart``: a throwaway PostgreSQL server restarted (``fast``);
- ``terminate, TLS``: ``pg_terminate_backend`` on the throwaway server, over ``sslmode=require``.

Each killed task's FAILURE must be stored (read from the results table by the test), and no
other task may fail. Stock Celery (every 4.x line): the first failure is stored; once the server
has ended the main process' session every later write fails with ``InterfaceError: connection
already closed`` and the killed tasks stay PENDING for ever (callers wait on them).
"""
from __future__ import absolute_import

import time

import pytest

from celery_django_fixup.harness import dbresults, dbstats, run
from celery_django_fixup.harness.run import TIMEOUT, summarize

try:
    from urllib.parse import quote
except ImportError:  # Python 2
    from urllib import quote

pytestmark = pytest.mark.faults

CONCURRENCY = 2
#: Killed tasks, in turn (each followed by ``TOUCHES`` ordinary ones).
KILLED = ('hard_limited', 'lost') * 3
#: On Celery 4.0-4.1 (billiard 3.5, seen on Python 2.7) a pool process that SIGKILLs itself
#: takes the worker's main process down with it, stock or patched: hard time limits only.
KILLED_4_1 = ('hard_limited',) * 6


def killed_tasks():
    from celery_django_fixup import versions
    return KILLED_4_1 if versions.celery_version() < (4, 2) else KILLED
TOUCHES = 2
#: The sessions' idle timeout (s) and the pause after which the server has ended them.
IDLE_TIMEOUT = 1
GAP = IDLE_TIMEOUT + 0.5
SESSION_TIMEOUT = {
    'postgresql': 'options=' + quote('-c idle_session_timeout={0}'.format(IDLE_TIMEOUT * 1000)),
    'mysql': 'init_command=' + quote('SET SESSION wait_timeout={0}'.format(IDLE_TIMEOUT)),
}
#: How long a killed task's result may take to be stored; a failed write shows sooner in the
#: worker's log (a traceback through ``mark_as_failure``), and is then given ``GRACE`` s.
STORE_TIMEOUT = 20.0
GRACE = 2.0
ENV = {'CDF_RESULT_BACKEND': run.DJANGO_DB}
SETTINGS = {'worker_prefetch_multiplier': 1}


def django_celery_results(missing):
    try:
        import django_celery_results  # noqa: F401
    except ImportError as exc:
        missing('django-celery-results is not installed in this environment ({0}): the '
                'django-db result backend cannot run'.format(exc))


@pytest.fixture(scope='module')
def cluster(missing):
    """A throwaway PostgreSQL server that also accepts TLS, restarted at will."""
    from celery_django_fixup.harness.pgcluster import PgCluster
    reason = PgCluster.why_unavailable()
    if reason:
        missing(reason)
    with PgCluster(ssl=True) as pg:
        yield pg


class Target(object):
    """The worker's database for one case, and how the server ends the worker's sessions."""

    def __init__(self, case, vendor, url, worker_url, sessions, end):
        self.case = case
        self.vendor = vendor
        self.url = url
        self.worker_url = worker_url
        self.sessions = sessions
        self.end = end


def pg_target(request, case):
    postgres = request.getfixturevalue('postgres')
    name = postgres.create_database(prefix='cdf_mainproc')
    request.addfinalizer(lambda: postgres.drop_database(name))
    url = postgres.url(name)

    def sessions():
        return postgres.backends(name)

    if case == 'terminate':
        return Target(case, 'postgresql', url, url, sessions,
                      lambda kept: postgres.terminate(name, kept))
    return Target(case, 'postgresql', url, url + '?' + SESSION_TIMEOUT['postgresql'], sessions,
                  lambda kept: time.sleep(GAP))


def mysql_target(request):
    db = request.getfixturevalue('mariadb_scratch')()
    return Target('idle timeout', 'mysql', db.url, db.url + '?' + SESSION_TIMEOUT['mysql'],
                  db.backends, lambda kept: time.sleep(GAP))


def cluster_target(request, case):
    cluster = request.getfixturevalue('cluster')
    name = dbstats.scratch_name('cdf_mainproc')
    cluster.create_database(name)
    if case == 'server restart':
        url = cluster.url(name, sslmode='disable')
        end = lambda kept: cluster.restart('fast')  # noqa: E731
    else:
        url = cluster.url(name, sslmode='require')

        def end(kept):
            for pid in kept:
                cluster.fetchall('SELECT pg_terminate_backend(%s)', (pid,))

    def sessions():
        return [row[0] for row in cluster.fetchall(
            'SELECT pid FROM pg_stat_activity WHERE datname = %s ORDER BY pid', (name,))]

    target = Target(case, 'postgresql', url, url, sessions, end)
    if case == 'terminate, TLS':
        # Whether each session on the database uses TLS, as the server sees it.
        target.tls = lambda: [row[0] for row in cluster.fetchall(
            'SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) '
            'WHERE a.datname = %s', (name,))]
    return target


@pytest.fixture(params=['terminate-postgresql', 'idle-postgresql', 'idle-mysql',
                        'restart-postgresql', 'tls-postgresql'])
def target(request, missing):
    django_celery_results(missing)
    case, vendor = request.param.split('-')
    if vendor == 'mysql':
        found = mysql_target(request)
    elif case in ('terminate', 'idle'):
        found = pg_target(request, 'terminate' if case == 'terminate' else 'idle timeout')
    else:
        found = cluster_target(request, 'server restart' if case == 'restart'
                               else 'terminate, TLS')
    run.prepare_database(found.url, env=ENV)
    return found


def wait_stored(worker, outcome, log_from):
    """Wait for ``outcome`` to be stored; give up ``GRACE`` s after the worker's log shows its
    main process failed to store a result, or after ``STORE_TIMEOUT`` s."""
    deadline = time.time() + STORE_TIMEOUT
    give_up = None
    while True:
        worker.collect([outcome], timeout=0.3)
        if outcome.state != TIMEOUT:
            return True
        now = time.time()
        if give_up is None and 'mark_as_failure' in worker.log()[log_from:]:
            give_up = now + GRACE
        if now > deadline or (give_up is not None and now > give_up):
            return False


def test_main_process_writes_after_the_server_ended_its_session(variant, target, start_worker,
                                                                line, record, explain):
    reader = dbresults.TaskResults(target.url)
    broker = run.Broker(run.Broker().url, run.DJANGO_DB)
    worker = start_worker(variant, url=target.worker_url, broker=broker, results=reader,
                          concurrency=CONCURRENCY, conn_max_age=600, args=['-O', 'fair'],
                          settings=SETTINGS, env=ENV)
    killed, touched, ended, tls = [], [], [], []
    tasks = killed_tasks()
    try:
        for index, task in enumerate(tasks):
            if index:
                # The reader's own session is not the worker's: out of the way first.
                reader.close()
                kept = target.sessions()
                target.end(kept)
                ended.extend(kept)
            log_from = len(worker.log())
            outcome = worker.send(task)[0]
            wait_stored(worker, outcome, log_from)
            killed.append(outcome)
            touched.extend(worker.run('touch', count=TOUCHES, timeout=30, stall=15))
            if hasattr(target, 'tls'):
                tls.extend(target.tls())
        # A result stored late still counts.
        worker.collect(killed, timeout=GRACE)
        stopped = worker.stop(timeout=15)
    finally:
        reader.close()

    stored = [outcome for outcome in killed if outcome.state == 'FAILURE']
    summary = summarize(touched)
    facts = record('main_process', variant, case='{0} ({1})'.format(target.case, target.vendor),
                   killed=len(killed), stored=len(stored),
                   never_stored=len(killed) - len(stored), failed=summary['failed'],
                   timeout=summary['timeout'], ended=len(ended), hung=stopped == 'hung')
    context = explain(facts, touched + killed, worker)

    assert stopped == 'stopped', context
    # An idle timeout ends the sessions by itself: on a loaded machine it may have done so
    # before they could be listed.
    assert ended or target.case == 'idle timeout', context
    # What was stored is the failure of a killed task, whatever the fix-up.
    expected = ('TimeLimitExceeded', 'WorkerLostError')
    assert all(outcome.error.startswith(expected) for outcome in stored), context
    if hasattr(target, 'tls'):
        assert tls and all(tls), ('sessions without TLS', tls, context)
    assert summary['timeout'] == 0, context

    if variant == 'patched':
        assert len(stored) == len(tasks), context
        assert summary['failed'] == 0, context
    else:
        # Every line: only the write before the first end of the session is stored.
        assert [outcome.state for outcome in killed] == (
            ['FAILURE'] + [TIMEOUT] * (len(tasks) - 1)), context
        if not line.reuses:
            assert summary['failed'] == 0, context
