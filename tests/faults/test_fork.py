"""Scenario 1: the worker's main process holds a connection when it forks.

One worker combines the three ways this happens in real projects:

- a ``worker_init`` handler queries (``parent_query``), after the Django fix-up's own handler,
  so the main process forks the pool holding that connection;
- ``--max-tasks-per-child 5``: children are replaced all along, each forked from that main
  process;
- embedded beat (``-B``) with a scheduler that queries on every tick, as database-backed
  schedulers do (``cdf_demo.beat``): a process forked from the main process too, in which
  Celery has closed every inherited file descriptor before ``beat_embedded_init``.

The server's ids of the sessions every process used are the facts: the tasks report theirs
(``pg_backend_pid()`` / ``CONNECTION_ID()``) with their pid, the beat scheduler logs its own,
and the ready file names the main process's. A session used by two processes is a shared
connection.

What each Celery line really does, on PostgreSQL and on MariaDB (PyMySQL):

- 4.2-4.3: a child closes the inherited socket but keeps the wrapper (a non-forced close is a
  no-op with ``CONN_MAX_AGE``): on PostgreSQL its first query fails with ``Bad file
  descriptor``, the pool hangs and ignores SIGTERM; PyMySQL connections have no ``fileno()``,
  so there nothing is closed and every child talks over the main process's own session.
- Every other line forces the close after fork: tasks succeed.
- Embedded beat: upstream's ``beat_embedded_init`` handler is the non-forced close on 4.2-4.3
  and 4.4.4+, so the beat process keeps a wrapper around a descriptor Celery already closed:
  every scheduler query fails there.
"""
from __future__ import absolute_import

import collections

import pytest

from celery_django_fixup.harness.demo.cdf_demo import beat
from celery_django_fixup.harness.run import summarize

pytestmark = pytest.mark.faults

TASKS = 30
MAX_TASKS_PER_CHILD = 5
CONCURRENCY = 2
STOP_TIMEOUT = 10.0
SCHEDULER = 'cdf_demo.beat:QueryingScheduler'


@pytest.fixture(params=['postgresql', 'mysql'])
def database(request):
    return request.param, request.getfixturevalue(
        'pg_db' if request.param == 'postgresql' else 'mariadb_db')


def sessions_by_process(outcomes, beat_entries, parent_backends, parent_pid):
    """``{session id: set of pids}`` over the tasks, the beat process and the main process."""
    used = collections.defaultdict(set)
    for outcome in outcomes:
        if outcome.ok:
            used[outcome.backend].add(outcome.pid)
    for entry in beat_entries:
        if 'backend' in entry:
            used[entry['backend']].add(entry['pid'])
    for backend in parent_backends:
        used[backend].add(parent_pid)
    return used


def test_fork_inheritance(variant, database, start_worker, line, record, explain, tmpdir):
    vendor, db = database
    beat_log = str(tmpdir.join('beat.jsonl'))
    worker = start_worker(
        variant, url=db.url, concurrency=CONCURRENCY, conn_max_age=600, parent_query=True,
        args=['--max-tasks-per-child', str(MAX_TASKS_PER_CHILD), '-B', '--scheduler', SCHEDULER],
        env={'CDF_BEAT_LOG': beat_log})
    parent_backends = list(worker.info['parent_backends'].values())
    assert parent_backends, 'the main process queried nothing before it forked'

    # A task handed to a child that is on its way out waits for billiard's 4 s process-alive
    # timeout before a new child takes it, on every line: only a longer stall is a hang.
    outcomes = worker.run('touch', count=TASKS, timeout=90, stall=15)
    stopped = worker.stop(timeout=STOP_TIMEOUT)
    summary = summarize(outcomes)
    beat_entries = beat.read_log(beat_log)
    beat_errors = [entry['error'] for entry in beat_entries if 'error' in entry]
    used = sessions_by_process(outcomes, beat_entries, parent_backends, worker.info['pid'])
    shared = dict((backend, sorted(pids)) for backend, pids in used.items() if len(pids) > 1)
    on_parents = [backend for backend, pids in shared.items() if worker.info['pid'] in pids]
    children = set(outcome.pid for outcome in outcomes if outcome.ok)
    facts = record('fork', variant, database=vendor, ok=summary['ok'],
                   failed=summary['failed'], timeout=summary['timeout'],
                   hung=stopped == 'hung', stop_seconds=worker.stop_seconds,
                   sessions=len(used), shared_sessions=len(shared),
                   parents_session_shared=bool(on_parents), children=len(children),
                   beat_queries=len(beat_entries), beat_errors=len(beat_errors))
    context = explain(dict(facts, shared=shared, beat_error_samples=beat_errors[:2]), outcomes,
                      worker)

    # The beat process ran its scheduler (otherwise nothing about it was tested).
    assert beat_entries, context
    if variant == 'patched':
        assert summary['ok'] == TASKS, context
        assert stopped == 'stopped', context
        assert not shared, context
        assert not beat_errors, context
        # Children were really replaced, each forked from the main process holding its session.
        assert len(children) > CONCURRENCY, context
        return

    if line.after_fork == 'close_if_unusable_or_obsolete':
        # 4.2-4.3: the children keep the inherited connection. PostgreSQL: failed tasks, then a
        # hung pool that ignores SIGTERM; MariaDB: children on the main process's session.
        assert summary['failed'] or summary['timeout'] or stopped == 'hung' or shared, context
    else:
        assert summary['ok'] == TASKS and stopped == 'stopped', context
        assert not shared, context
    if line.reuses:
        # Upstream's beat_embedded_init close is not forced on these lines: the beat process
        # queries through a descriptor Celery closed when it forked.
        assert beat_errors and len(beat_errors) == len(beat_entries), context
    else:
        assert not beat_errors, context
