"""Scenario 9: Django's connection pool (Django 5.1+, PostgreSQL, psycopg 3 and psycopg_pool).

Every worker here runs with ``OPTIONS={'pool': {'min_size': 1, 'max_size': 4}}`` and
``CONN_MAX_AGE = 0`` (Django requires it with a pool): closing a connection at the end of a task
hands it back to the pool of its process, and the next task takes it from there.

- Sessions per 1,000 tasks (prefork ``-c 2``): patched keeps each process's pool, so the
  server counts about one pool's ``min_size`` per process (one more when the first task had
  to wait for the pool's first connection: psycopg_pool then grows the pool). Stock 5.5 keeps the pools too;
  stock 5.6-5.7 close the pool (``close_pool()``) at every task boundary in prefork, so every
  task builds a pool and tears it down (celery#10554).
- Fork: the main process holds a pooled connection when it forks the pool (``parent_query``).
  A child must never use its parent's pool: no ``PoolTimeout`` (the pool's worker threads do not
  survive a fork), no session used by two processes, and the parent's session untouched.
- Killed backends: every session of the worker is ended (``pg_terminate_backend``) between
  batches, while the connections wait in the pools. No task may fail (patched).
- A failed task: the connection of a task that failed inside ``atomic()``, or that its soft
  time limit interrupted in a query, must leave the pool: the next task on that process gets
  another session.
- Threads and gevent (``-c 4``): the tasks of one process share its pool: no task fails, no
  ``pool is closed`` or ``PoolTimeout``, and the sessions stay bounded by the pool's size.

Outside Django 5.1+ every test here is skipped with the version as its reason.
"""
from __future__ import absolute_import

import collections
import os
import time

import pytest

from celery_django_fixup import versions
from celery_django_fixup.harness import run

pytestmark = pytest.mark.faults

MIN_SIZE = 1
MAX_SIZE = 4
POOL = {'min_size': MIN_SIZE, 'max_size': MAX_SIZE}
CONCURRENCY = 2
TASKS = int(os.environ.get('CDF_POOL_TASKS') or 1000)
FORK_TASKS = 30
MAX_TASKS_PER_CHILD = 5
BATCH = 10
KILLS = 2
SHARED_TASKS = 40
SHARED_CONCURRENCY = 4
#: The module of each pool's class, as the worker reports it.
POOL_MODULES = {'threads': 'thread', 'gevent': 'gevent'}
#: What a worker's log or a task's error says when a pool is used wrongly.
POOL_ERRORS = ('PoolTimeout', 'pool is closed', "couldn't get a connection")


@pytest.fixture(autouse=True)
def django_pools(missing):
    """Skip outside Django 5.1+ (the version is the reason); psycopg 3 and psycopg_pool must
    be installed where it is (a failure under ``CI=true``, as any missing dependency)."""
    django = versions.django_version()
    if django is None or django < (5, 1):
        pytest.skip('Django connection pools need Django 5.1 or later; Django {0} is '
                    'installed'.format('.'.join(str(part) for part in django or ()) or 'not'))
    for module in ('psycopg', 'psycopg_pool'):
        try:
            __import__(module)
        except ImportError as exc:
            missing('Django connection pools need psycopg 3 and psycopg_pool: {0}'.format(exc))


def pooled(**extra):
    """The ``databases`` argument of a worker whose ``default`` alias uses a pool."""
    entry = {'OPTIONS': {'pool': dict(POOL, **extra)}}
    return {'default': entry}


def start(start_worker, variant, **kwargs):
    kwargs.setdefault('concurrency', CONCURRENCY)
    return start_worker(variant, conn_max_age=0, databases=pooled(), **kwargs)


def pool_errors(outcomes, worker):
    """Task errors and worker log lines that say a pool was used wrongly."""
    texts = [outcome.error or '' for outcome in outcomes] + worker.log().splitlines()
    return [text for text in texts if any(error in text for error in POOL_ERRORS)]


def closes_pool_every_task(variant, line):
    """Stock 5.6-5.7 in prefork: ``close()`` then ``close_pool()`` at every task boundary."""
    return variant == 'stock' and not line.reuses


def test_sessions_per_thousand_tasks(pg_db, start_worker, variant, line, record, explain):
    before = pg_db.sessions()
    worker = start(start_worker, variant)
    outcomes = worker.run('touch', count=TASKS, timeout=300, stall=60)
    stopped = worker.stop(timeout=10)
    opened = pg_db.settled_sessions() - before
    summary = run.summarize(outcomes)
    processes = set(outcome.pid for outcome in outcomes if outcome.ok)
    facts = record('django_pool', variant, case='sessions per {0} tasks (pool min_size {1})'
                   .format(TASKS, MIN_SIZE), tasks=TASKS, failed=summary['failed'],
                   timeout=summary['timeout'], sessions=opened,
                   per_second=summary['per_second'], hung=stopped == 'hung')
    context = explain(facts, outcomes, worker)

    assert summary['ok'] == TASKS, context
    assert stopped == 'stopped', context
    if closes_pool_every_task(variant, line):
        # A pool built and torn down for every task: a session per task at least.
        assert opened >= TASKS, context
    else:
        # One pool per process, for all its tasks. Django opens a pool without waiting for
        # its min_size connections, so the first task waits for a connection and psycopg_pool
        # grows the pool by one: min_size + 1 per process at most, as one task at a time
        # runs in a prefork process.
        assert len(processes) <= opened <= CONCURRENCY * (MIN_SIZE + 1), context


def test_fork_with_the_parent_holding_a_pooled_connection(pg_db, start_worker, variant, line,
                                                          record, explain):
    worker = start(start_worker, variant, parent_query=True,
                   args=['--max-tasks-per-child', str(MAX_TASKS_PER_CHILD)])
    parent = list(worker.info['parent_backends'].values())
    assert parent, 'the main process queried nothing before it forked'
    # A task handed to a child on its way out waits for billiard's 4 s process-alive timeout
    # before a new child takes it. A child stuck on its parent's pool makes no progress at all.
    outcomes = worker.run('touch', count=FORK_TASKS, timeout=120, stall=20)
    parent_alive = set(parent) <= set(pg_db.backends())
    stopped = worker.stop(timeout=10)
    summary = run.summarize(outcomes)
    used = collections.defaultdict(set)
    for outcome in outcomes:
        if outcome.ok:
            used[outcome.backend].add(outcome.pid)
    for backend in parent:
        used[backend].add(worker.info['pid'])
    shared = dict((backend, sorted(pids)) for backend, pids in used.items() if len(pids) > 1)
    errors = pool_errors(outcomes, worker)
    children = set(outcome.pid for outcome in outcomes if outcome.ok)
    facts = record('django_pool', variant, case='fork, main process holds a pooled connection',
                   tasks=FORK_TASKS, failed=summary['failed'], timeout=summary['timeout'],
                   shared_sessions=len(shared), pool_errors=len(errors),
                   parent_ended=not parent_alive, children=len(children),
                   hung=stopped == 'hung')
    context = explain(dict(facts, shared=shared, pool_error_samples=errors[:3]), outcomes,
                      worker)

    if variant == 'patched':
        assert summary['ok'] == FORK_TASKS, context
        assert stopped == 'stopped', context
        assert not shared and not errors, context
        # Nothing a child did reached the parent's session.
        assert parent_alive, context
        assert len(children) > CONCURRENCY, context
    elif closes_pool_every_task(variant, line):
        # The child closes what it inherited (the pool included) and builds its own pool at
        # every task: no task fails, no session is shared.
        assert summary['ok'] == FORK_TASKS and not shared, context
    else:
        # Stock 5.0-5.5: the child closes the socket of the inherited connection and hands it
        # back to the inherited pool, whose worker threads did not survive the fork.
        assert summary['failed'] or summary['timeout'] or shared or errors, context


def test_backends_killed_inside_the_pool(pg_db, start_worker, variant, line, record, explain):
    before = pg_db.sessions()
    worker = start(start_worker, variant)
    first = worker.run('touch', count=BATCH, timeout=60, stall=30)
    assert run.summarize(first)['ok'] == BATCH, (first[:3], worker.log_tail())
    ended, after, reused_dead = [], [], set()
    for _ in range(KILLS):
        # The connections wait in the pools between batches.
        worker.wait_until_idle(5)
        if closes_pool_every_task(variant, line):
            # A task's result reaches the caller before its task_postrun closes the pool: let
            # the last task's pool go first, so that only what a pool kept can be killed.
            pg_db.wait_for_no_backends(5)
        ended.extend(pg_db.terminate())
        assert pg_db.wait_for_no_backends(), pg_db.backends()
        batch = worker.run('touch', count=BATCH, timeout=60, stall=30)
        # Only sessions ended before this batch count: the next kill ends this batch's own.
        reused_dead |= set(ended) & set(outcome.backend for outcome in batch if outcome.ok)
        after.extend(batch)
    stopped = worker.stop(timeout=10)
    opened = pg_db.settled_sessions() - before
    summary = run.summarize(after)
    facts = record('django_pool', variant, case='backends killed inside the pool',
                   tasks=BATCH * KILLS, kills=len(ended), failed=summary['failed'],
                   timeout=summary['timeout'], sessions=opened, hung=stopped == 'hung')
    context = explain(dict(facts, reused_dead=sorted(reused_dead)), after, worker)

    assert stopped == 'stopped', context
    assert summary['timeout'] == 0, context
    if closes_pool_every_task(variant, line):
        # Nothing waits in a pool between tasks: nothing to kill.
        assert not ended and summary['ok'] == BATCH * KILLS, context
        return
    # The pools kept their sessions between batches.
    assert len(ended) >= KILLS, context
    if variant == 'patched':
        assert summary['ok'] == BATCH * KILLS and not reused_dead, context
        assert opened <= CONCURRENCY * (MIN_SIZE + 1) * (KILLS + 1), context
    else:
        # Django checks a pooled connection only with CONN_HEALTH_CHECKS (off by default):
        # the pool hands the dead one to the next task of each process, which fails on it.
        assert summary['failed'] >= 1, context


#: Tasks run after the failed one, on the same process.
AFTER_FAILURE = 3
#: (case, task, kwargs): tasks whose connection must not go back to the pool.
FAILING = [
    ('exception inside atomic()', 'atomic_error', {}),
    ('soft time limit in a query', 'slow_query', {'seconds': 2}),
]


def open_after(db, backend, timeout):
    """Whether session ``backend`` is still open on ``db`` after ``timeout`` s at most."""
    deadline = time.time() + timeout
    while backend in db.backends():
        if time.time() > deadline:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize('case,task,kwargs', FAILING, ids=[task for _, task, _ in FAILING])
def test_failed_task_connection_leaves_the_pool(case, task, kwargs, pg_db, start_worker,
                                                variant, line, record, explain):
    # One process: the next tasks always run where the failed one did.
    worker = start(start_worker, variant, concurrency=1)
    first = worker.run('touch', timeout=30)[0]
    failed = worker.run(task, kwargs=kwargs, timeout=30)[0]
    # The pool hands out its idle connections in turn (it may hold min_size + 1, see
    # test_sessions_per_thousand_tasks): enough tasks to come round to every one of them.
    after = worker.run('touch', count=AFTER_FAILURE, timeout=60)
    # A session whose client went away in the middle of a query ends with the query.
    still_open = open_after(pg_db, failed.backend, 8.0 if task == 'slow_query' else 2.0)
    stopped = worker.stop(timeout=10)
    summary = run.summarize(after)
    reused = failed.backend is not None and failed.backend in set(
        outcome.backend for outcome in after)
    facts = record('django_pool', variant, case='failed task: ' + case,
                   tasks=len(after), failed=summary['failed'], timeout=summary['timeout'],
                   reused=int(reused), hung=stopped == 'hung')
    context = explain(dict(facts, first=repr(first), failed_task=repr(failed), after=after,
                           still_open=still_open), [first, failed] + after, worker)

    assert first.ok, context
    assert not failed.ok and failed.backend is not None and failed.pid == first.pid, context
    assert stopped == 'stopped', context
    assert summary['ok'] == AFTER_FAILURE, context
    assert set(outcome.pid for outcome in after) == set([failed.pid]), context
    if variant == 'patched' or closes_pool_every_task(variant, line):
        assert not reused and not still_open, context
    elif task == 'atomic_error':
        # Stock 5.0-5.5: atomic() rolled back, and close() put the connection back in the
        # pool as if nothing had happened; a later task takes the same session.
        assert reused and still_open, context
    else:
        # psycopg_pool itself closes a connection handed back in the middle of a query.
        assert not reused, context


@pytest.mark.parametrize('pool', ['threads', 'gevent'])
def test_threads_and_greenlets_share_the_pool(pool, pg_db, start_worker, variant, missing,
                                              record, explain):
    if pool == 'gevent':
        try:
            __import__('gevent')
        except ImportError as exc:
            missing('the gevent pool cannot run here: {0}'.format(exc))
    before = pg_db.sessions()
    worker = start(start_worker, variant, pool=pool, concurrency=SHARED_CONCURRENCY)
    assert worker.info['pool'] == 'celery.concurrency.' + POOL_MODULES[pool], worker.info
    outcomes = worker.run('pool_hold', count=SHARED_TASKS, kwargs={'seconds': 0.05},
                          timeout=120, stall=45)
    stopped = worker.stop(timeout=10)
    opened = pg_db.settled_sessions() - before
    summary = run.summarize(outcomes)
    errors = pool_errors(outcomes, worker)
    runners = set(outcome.result['thread'] for outcome in outcomes if outcome.ok)
    facts = record('django_pool', variant, case='{0} -c {1} share the pool'.format(
                   pool, SHARED_CONCURRENCY), tasks=SHARED_TASKS, failed=summary['failed'],
                   timeout=summary['timeout'], sessions=opened, pool_errors=len(errors),
                   hung=stopped == 'hung')
    context = explain(dict(facts, pool_error_samples=errors[:3]), outcomes, worker)

    assert stopped == 'stopped', context
    # The tasks really ran side by side.
    assert len(runners) > 1, context
    if variant == 'patched':
        assert summary['ok'] == SHARED_TASKS, context
        assert not errors, context
        # One pool for the process, never more than its max_size sessions open at once; a
        # session per task would be no pool at all.
        assert opened <= 2 * MAX_SIZE, context
