"""Scenario 5: a task that was interrupted or failed leaves the next task a clean connection.

Four ways a task ends that may leave its connection unfit for the next task: a soft time limit
raised in the middle of a running query, an exception inside ``atomic()``, a task that returns
with autocommit left off, and a plain non-database exception. Each runs on a prefork worker of
one pool process (``-c 1``, ``CONN_MAX_AGE=600``), so that the task after it, a ``probe`` (which
reports its process even when it fails), is the next task of the same process: which process
takes a task is never left to chance. After each of them:

- patched: the next task succeeds, on a new server session (the failed task's was not
  reused), no task anywhere sees ``current transaction is aborted`` or ``another command is
  already in progress``, and the sessions of the unsafe tasks are gone from the server while
  the worker still runs;
- stock, where the line closes every connection at every task (4.0-4.1, 4.4.0-4.4.3): the same;
- stock, where the line reuses (4.2-4.3, 4.4.4-4.4.7): the connection of a failed task is
  handed to the next task, and after a soft time limit in a query the next task fails
  (psycopg2: ``InterfaceError: connection already closed``; psycopg 3: ``another command is
  already in progress``). Django itself drops a connection left with
  autocommit off, so that case is clean on every line.

A stock process that stops answering (a task that never comes back) is the stock worker's
outcome, recorded as such (timed out, hung) and not a failure of the test; the tasks it ran
before must still show its line's behaviour. The patched worker must answer every task.
"""
from __future__ import absolute_import

import time

import pytest

from celery_django_fixup.harness.run import TIMEOUT

pytestmark = pytest.mark.faults

#: (case, task, kwargs, how the task itself ends): the unsafe tasks. The query outlives the 1 s
#: soft limit by two seconds, so that the limit fires in the middle of it even on a loaded
#: machine, and its server session is over soon after the client dropped it.
CASES = [
    ('soft time limit in a query', 'slow_query', {'seconds': 3}, 'SoftTimeLimitExceeded'),
    ('exception inside atomic()', 'atomic_error', {}, 'DemoTaskError'),
    ('autocommit left off', 'autocommit_off', {}, None),
    ('non-database exception', 'fail', {}, 'DemoTaskError'),
]
REPEATS = 2
#: The errors a task gets from a connection an earlier task left in a bad state.
DIRTY = ('current transaction is aborted', 'another command is already in progress')
#: Seconds one task may take (a loaded machine included) before its process counts as stuck.
TASK_TIMEOUT = 30


def interrupted_query_error():
    """What the next task's query says on a connection a soft time limit interrupted in the
    middle of a query: psycopg2 (through ``slow_query``'s wait callback) closes the connection;
    psycopg 3, which Django 4.2+ uses when it is installed, leaves the query running."""
    from celery_django_fixup import versions
    if versions.django_version() >= (4, 2):
        try:
            import psycopg  # noqa: F401
            return 'another command is already in progress'
        except ImportError:
            pass
    return 'connection already closed'


def one(worker, task, kwargs=None):
    return worker.run(task, kwargs=kwargs, timeout=TASK_TIMEOUT)[0]


def ended_as_meant(unsafe, ending):
    """Whether the unsafe task itself ended as its case means (the scenario happened)."""
    if ending is None:
        return unsafe.ok
    return unsafe.state == 'FAILURE' and (unsafe.error or '').startswith(ending + ':')


def gone(db, backends, timeout=8.0):
    """The subset of ``backends`` still open on the server after ``timeout`` at most."""
    deadline = time.time() + timeout
    while True:
        left = sorted(set(backends) & set(db.backends()))
        if not left or time.time() > deadline:
            return left
        time.sleep(0.1)


def run_cases(worker, everything):
    """Each unsafe task followed by a ``probe``: ``(pairs, stuck)``, ``stuck`` being the case
    whose task never came back (nothing is sent to a process after that)."""
    pairs = []
    for case, task, kwargs, _ in CASES:
        for _ in range(REPEATS):
            unsafe = one(worker, task, kwargs)
            everything.append(unsafe)
            if unsafe.state == TIMEOUT:
                return pairs, case
            after = one(worker, 'probe')
            everything.append(after)
            pairs.append((case, unsafe, after))
            if after.state == TIMEOUT:
                return pairs, case
    return pairs, None


def test_next_task_gets_a_clean_connection(pg_db, start_worker, variant, line, record, explain):
    before = pg_db.sessions()
    # One pool process: the task sent after an unsafe one is the next task of its process.
    worker = start_worker(variant, concurrency=1, conn_max_age=600)
    # The process connects first: each unsafe task then runs on a connection an earlier task
    # used, as in a real worker.
    everything = worker.run('touch', count=2, timeout=TASK_TIMEOUT)
    assert all(outcome.ok for outcome in everything), (everything, worker.log_tail())
    pid = everything[0].pid
    pairs, stuck = run_cases(worker, everything)
    unsafe_backends = [unsafe.backend for _, unsafe, _ in pairs]
    strict = variant == 'patched' or not line.reuses
    # A stock worker that reuses keeps some of them on purpose: no need to wait for those.
    left_open = gone(pg_db, unsafe_backends, timeout=8.0 if strict else 2.5)
    stopped = worker.stop(timeout=10)
    opened = pg_db.settled_sessions() - before

    dirty = [outcome for outcome in everything
             if any(text in (outcome.error or '') for text in DIRTY)]
    timeouts = sum(1 for outcome in everything if outcome.state == TIMEOUT)
    by_case = dict((case, {'failed': 0, 'reused': 0, 'timeout': 0, 'pairs': []})
                   for case, _, _, _ in CASES)
    for case, unsafe, after in pairs:
        facts = by_case[case]
        facts['pairs'].append((unsafe, after))
        if after.state == TIMEOUT:
            facts['timeout'] += 1
            continue
        facts['failed'] += 0 if after.ok else 1
        facts['reused'] += 1 if after.backend == unsafe.backend else 0
    if stuck is not None and len(by_case[stuck]['pairs']) < REPEATS and \
            by_case[stuck]['timeout'] == 0:
        by_case[stuck]['timeout'] = 1  # the unsafe task itself never came back
    for case, _, _, _ in CASES:
        facts = by_case[case]
        record('interrupted', variant, case=case, tasks=2 * REPEATS,
               ran=2 * len(facts['pairs']), failed=facts['failed'], timeout=facts['timeout'],
               reused=facts['reused'], dirty=len(dirty), hung=stopped == 'hung')
    summary = record('interrupted', variant, case='the four cases together',
                     tasks=len(everything), failed=sum(f['failed'] for f in by_case.values()),
                     timeout=timeouts, reused=sum(f['reused'] for f in by_case.values()),
                     dirty=len(dirty), sessions=opened, left_open=len(left_open),
                     stuck=stuck, hung=stopped == 'hung')
    context = explain(summary, everything, worker)

    if variant == 'patched':
        # Strict: every task came back and the worker stopped.
        assert stuck is None and timeouts == 0, context
    if stuck is None:
        assert stopped == 'stopped', context
    # The premise: one process ran everything, and each unsafe task ended as its case means.
    assert set(outcome.pid for outcome in everything if outcome.pid is not None) == {pid}, \
        context
    endings = dict((case, ending) for case, _, _, ending in CASES)
    for case, unsafe, _ in pairs:
        assert ended_as_meant(unsafe, endings[case]), (case, unsafe, context)
        assert unsafe.backend is not None, (case, unsafe, context)
    done = [(case, unsafe, after) for case, unsafe, after in pairs if after.state != TIMEOUT]
    # With psycopg 3, stock's failures after an interrupted query are the only dirty ones.
    slow_after = [after for case, _, after in done if case == 'soft time limit in a query']
    assert set(dirty) <= (set() if strict else set(slow_after)), context
    if strict:
        for case, unsafe, after in done:
            assert after.ok, (case, unsafe, after, context)
            assert after.backend != unsafe.backend, (case, unsafe, after, context)
        if stuck is None:
            assert left_open == [], ('sessions of unsafe tasks still open', left_open, context)
        if variant == 'patched':
            # One session for the first tasks, and one new session after each unsafe task
            # at most.
            assert opened <= 1 + len(pairs), (opened, context)
        return
    # Stock Celery that reuses connections: the bug, case by case, for every task that came
    # back.
    for case, unsafe, after in done:
        if case == 'soft time limit in a query':
            assert not after.ok and interrupted_query_error() in after.error, \
                (case, after, context)
        elif case == 'autocommit left off':
            assert after.ok and after.backend != unsafe.backend, (case, after, context)
        else:
            assert after.ok and after.backend == unsafe.backend, (case, after, context)
