"""Scenario 10: processes of the worker that exit must close their sessions first.

billiard ends a pool process with ``os._exit`` right after ``worker_process_shutdown``, and the
worker's main process exits without closing anything either: a connection still open then is
dropped by the kernel without a goodbye, and the server counts the session as abandoned. Only a
process killed by a signal has an excuse. Exits on purpose, each on a fresh worker
(``CONN_MAX_AGE=600``):

- ``max tasks per child``: ``--max-tasks-per-child 10``, 100 tasks on ``-c 2``: each pool
  process is replaced after 10 tasks;
- ``autoscale shrink``: ``--autoscale=3,1`` (keepalive 1 s through Celery's
  ``AUTOSCALE_KEEPALIVE``): three tasks that hold a connection make the pool grow to three
  processes; once idle, it shrinks back to one (billiard's ``terminate_controlled``: SIGTERM,
  which a pool process turns into a normal exit);
- ``warm shutdown``: SIGTERM to the worker, whose main process holds a connection too: it
  stored the failure of a task whose process died (django-celery-results as result backend).

Counted by the server: PostgreSQL's ``pg_stat_database.sessions_abandoned`` of the worker's own
database; on MariaDB the ``Aborted connection ID to db: 'NAME'`` warnings of the server's error
log, for the worker's own (scratch) database only. MariaDB's ``Aborted_clients`` counter is
server-wide and other clients of the server move it too: it is recorded, never asserted on.
The error log is checked to report such an exit first (a connection dropped on purpose); if it
cannot be read or does not report it, the MariaDB cases cannot run.

Stock Celery: 4.2-4.3 and 4.4.4+ keep connections in pool processes, which leave them abandoned
at every such exit; 4.0-4.1 and 4.4.0-4.4.3 close after every task, so only the main process'
connection is abandoned (warm shutdown).
"""
from __future__ import absolute_import

import time

import pytest

from celery_django_fixup.harness import dbresults, run
from celery_django_fixup.harness.run import summarize
from servercounts import PgAbandoned, mariadb_error_log, settled

pytestmark = pytest.mark.faults

CONCURRENCY = 2
MAX_TASKS_PER_CHILD = 10
TASKS = 100
AUTOSCALE = (3, 1)
SHUTDOWN_TASKS = 20
ENV_DJANGO_DB = {'CDF_RESULT_BACKEND': run.DJANGO_DB}


@pytest.fixture(params=['postgresql', 'mysql'])
def database(request, missing):
    """``(url, counter)``: a new database with the demo tables (and django-celery-results'
    when installed) and what counts its abandoned sessions."""
    try:
        import django_celery_results  # noqa: F401
        env = ENV_DJANGO_DB
    except ImportError:
        env = None
    if request.param == 'postgresql':
        postgres = request.getfixturevalue('postgres')
        name = postgres.create_database(prefix='cdf_exits')
        request.addfinalizer(lambda: postgres.drop_database(name))
        url = postgres.url(name)
        run.prepare_database(url, env=env)
        return url, PgAbandoned(postgres, name)
    scratch = request.getfixturevalue('mariadb_scratch')()
    run.prepare_database(scratch.url, env=env)
    return scratch.url, mariadb_error_log(scratch.stats, scratch.name, missing)


def facts_of(counter):
    facts = {'database': counter.vendor}
    if counter.vendor == 'mysql':
        facts['aborted_clients_server_wide'] = counter.aborted_clients() - counter.clients_before
        facts['aborted_ids'] = counter.ids()
    return facts


# -- scenarios -----------------------------------------------------------------------------------

def test_max_tasks_per_child(variant, database, start_worker, line, record, explain):
    url, counter = database
    worker = start_worker(variant, url=url, concurrency=CONCURRENCY, conn_max_age=600,
                          args=['--max-tasks-per-child', str(MAX_TASKS_PER_CHILD)])
    outcomes = worker.run('touch', count=TASKS, timeout=120, stall=30)
    stopped = worker.stop(timeout=15)
    abandoned = settled(counter)
    summary = summarize(outcomes)
    pids = set(outcome.pid for outcome in outcomes if outcome.ok)
    facts = record('exits', variant, case='max tasks per child ({0})'.format(counter.vendor),
                   tasks=TASKS, failed=summary['failed'], timeout=summary['timeout'],
                   processes=len(pids), abandoned=abandoned, hung=stopped == 'hung',
                   **facts_of(counter))
    context = explain(facts, outcomes, worker)
    assert stopped == 'stopped', context
    assert summary['ok'] == TASKS, context
    # The processes were replaced: the scenario happened.
    assert len(pids) >= TASKS // MAX_TASKS_PER_CHILD, context
    if variant == 'patched' or not line.reuses:
        assert abandoned == 0, context
    else:
        # Every process that ran tasks left its session behind when it exited.
        assert abandoned >= len(pids) - 1, context


def test_autoscale_shrink(variant, database, start_worker, line, record, explain):
    url, counter = database
    worker = start_worker(variant, url=url, concurrency=AUTOSCALE[0], conn_max_age=600,
                          args=['--autoscale={0},{1}'.format(*AUTOSCALE)],
                          env={'AUTOSCALE_KEEPALIVE': '1'})
    # A fresh worker starts at the minimum: the main process and one pool process.
    assert len(worker.processes()) == 1 + AUTOSCALE[1], worker.processes()
    outcomes = worker.run('touch_sleep', count=AUTOSCALE[0], kwargs={'seconds': 4},
                          timeout=60, stall=30)
    grown = set(outcome.pid for outcome in outcomes if outcome.ok)
    deadline = time.time() + 30
    while len(worker.processes()) > 1 + AUTOSCALE[1] and time.time() < deadline:
        time.sleep(0.2)
    shrunk = len(worker.processes()) == 1 + AUTOSCALE[1]
    # The pool's exits, before the worker stops (the one process left keeps its session).
    at_shrink = settled(counter, timeout=5, running=True)
    stopped = worker.stop(timeout=15)
    abandoned = settled(counter)
    summary = summarize(outcomes)
    facts = record('exits', variant, case='autoscale shrink ({0})'.format(counter.vendor),
                   tasks=len(outcomes), failed=summary['failed'], timeout=summary['timeout'],
                   processes=len(grown), shrunk=shrunk, abandoned_at_shrink=at_shrink,
                   abandoned=abandoned, hung=stopped == 'hung', **facts_of(counter))
    context = explain(facts, outcomes, worker)
    assert stopped == 'stopped', context
    assert summary['ok'] == AUTOSCALE[0], context
    # The pool grew to three processes, each holding a connection, and shrank back to one.
    assert len(grown) == AUTOSCALE[0] and shrunk, context
    if variant == 'patched' or not line.reuses:
        assert abandoned == 0, context
    else:
        assert at_shrink >= AUTOSCALE[0] - AUTOSCALE[1], context
        assert abandoned >= AUTOSCALE[0], context


def test_warm_shutdown(variant, database, start_worker, line, record, explain, missing):
    try:
        import django_celery_results  # noqa: F401
    except ImportError as exc:
        missing('django-celery-results is not installed in this environment ({0})'.format(exc))
    url, counter = database
    reader = dbresults.TaskResults(url)
    broker = run.Broker(run.Broker().url, run.DJANGO_DB)
    worker = start_worker(variant, url=url, broker=broker, results=reader,
                          concurrency=CONCURRENCY, conn_max_age=600, env=ENV_DJANGO_DB)
    try:
        # First, before any pool process has a connection to lose: a process that dies, whose
        # failure the main process stores (and so holds a connection).
        # (Celery 4.0-4.1: a hard time limit; see test_main_process.killed_tasks.)
        from celery_django_fixup import versions
        if versions.celery_version() < (4, 2):
            # Long past its 1 s hard limit, so that a loaded machine still kills it first.
            lost = worker.run('hard_limited', count=1, kwargs={'seconds': 20}, timeout=40)
        else:
            lost = worker.run('lost', count=1, timeout=30)
        # The only session on the database now is the main process': the reader's is closed
        # (the server may list it a moment longer).
        reader.close()
        deadline = time.time() + 10
        main_sessions = counter.backends()
        while len(main_sessions) > 1 and time.time() < deadline:
            time.sleep(0.1)
            main_sessions = counter.backends()
        outcomes = worker.run('touch', count=SHUTDOWN_TASKS, timeout=60, stall=30)
        stopped = worker.stop(timeout=15)
    finally:
        reader.close()
    abandoned = settled(counter)
    summary = summarize(outcomes)
    extra = facts_of(counter)
    if counter.vendor == 'mysql':
        # MariaDB names the connections it counts: was the main process' one of them?
        extra['main_process_abandoned'] = bool(set(main_sessions) & set(extra['aborted_ids']))
    facts = record('exits', variant, case='warm shutdown ({0})'.format(counter.vendor),
                   tasks=SHUTDOWN_TASKS, failed=summary['failed'], timeout=summary['timeout'],
                   main_process_stored=lost[0].state == 'FAILURE',
                   main_sessions=main_sessions, abandoned=abandoned, hung=stopped == 'hung',
                   **extra)
    context = explain(facts, outcomes + lost, worker)
    assert stopped == 'stopped', context
    # The main process stored the failure: it has a connection.
    assert lost[0].state == 'FAILURE', context
    assert lost[0].error.startswith(('WorkerLostError', 'TimeLimitExceeded')), context
    assert len(main_sessions) == 1, context
    if variant == 'patched':
        assert summary['ok'] == SHUTDOWN_TASKS, context
        assert abandoned == 0, context
    elif line.reuses:
        # The pool's kept connections.
        assert abandoned >= 1, context
    else:
        # The pool's processes close at every task. The main process' session: closed before
        # exit on 4.4.0 (Python 3.7, measured: 0 abandoned), left open on 4.1 (Python 2.7,
        # measured: 1).
        assert abandoned <= len(main_sessions), context
