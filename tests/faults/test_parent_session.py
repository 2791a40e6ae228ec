"""The worker's main process uses its own connection again after its pool processes started.

The main process holds a connection when it forks the pool (``parent_query``), and queries
through it again every 0.3 s afterwards (``CDF_PARENT_PROBE``: from the worker's timer, in its
main thread, with Django's request-start check before each query, as a result backend write or
a ``worker_ready`` hook would). ``--max-tasks-per-child 1``: a new pool process is forked from
it after every task.

A pool process must drop what it inherited without talking to the server: PyMySQL's
``close()`` sends ``COM_QUIT`` over the socket it shares with the main process, and the server
ends the main process's session; its next query fails with ``(2013, 'Lost connection to MySQL
server during query')`` (or ``(2006, "MySQL server has gone away (Broken pipe)")`` once the
server has closed the socket). PyMySQL exposes no ``fileno()``, so "close the inherited socket
first" (what Celery does for every driver) closes nothing there.

- Stock 4.0-4.1, 4.4.x: the forced close after fork ends the main process's session.
- Stock 4.2-4.3: no close after fork: the pool processes run their tasks on the main process's
  session.
- What must happen: the main process's session survives (the same ``CONNECTION_ID()`` answers
  every probe of its main thread, no error) and no task runs on it.

Celery 5.7 fires the timer from a thread of its own (``prefork-timer-shutdown``) while the pool
drains at warm shutdown: a probe there runs on that thread's own Django connection, a second
session, which must not fail either. Every session of the main process, that thread's too, ends
with a goodbye (no ``Aborted connection`` in the server's error log for the worker's database).
"""
from __future__ import absolute_import

import time

import pytest

from celery_django_fixup.harness.demo.cdf_demo import beat
from celery_django_fixup.harness.run import summarize
from servercounts import mariadb_error_log, settled

pytestmark = pytest.mark.faults

TASKS = 6
CONCURRENCY = 2
PROBES_AFTER = 3
MAIN_THREAD = 'MainThread'


def test_main_process_session_survives_its_children(variant, mariadb_db, start_worker, line,
                                                    record, explain, tmpdir, missing):
    aborted = mariadb_error_log(mariadb_db.stats, mariadb_db.name, missing)
    probe_log = str(tmpdir.join('probe.jsonl'))
    worker = start_worker(
        variant, url=mariadb_db.url, concurrency=CONCURRENCY, conn_max_age=600,
        parent_query=True, args=['--max-tasks-per-child', '1'],
        env={'CDF_PARENT_PROBE': probe_log, 'CDF_PARENT_PROBE_INTERVAL': '0.3'})
    parent = worker.info['parent_backends']['default']
    # One at a time: each task is followed by a new pool process forked from the main process.
    outcomes = worker.run('touch', count=TASKS, batch=1, timeout=120, stall=30)
    done_at = time.time()
    deadline = done_at + 30
    while time.time() < deadline:
        if sum(1 for entry in beat.read_log(probe_log) if entry['at'] > done_at) >= \
                PROBES_AFTER:
            break
        time.sleep(0.1)
    stopped = worker.stop(timeout=10)
    abandoned = settled(aborted)

    probes = beat.read_log(probe_log)
    errors = [entry['errors']['default'] for entry in probes if entry['errors']]
    # 2013 when the query was sent before the server closed the socket, 2006 ("gone away",
    # broken pipe) when after.
    lost = [error for error in errors if '(2013' in error or '(2006' in error]
    sessions = set(entry['backends']['default'] for entry in probes
                   if 'default' in entry['backends'])
    # Django's connections are per thread: the main thread's are the ones forked with.
    main_thread_sessions = set(entry['backends']['default'] for entry in probes
                               if 'default' in entry['backends'] and
                               entry.get('thread', MAIN_THREAD) == MAIN_THREAD)
    summary = summarize(outcomes)
    on_parents = [outcome for outcome in outcomes if outcome.ok and outcome.backend in
                  sessions | set([parent])]
    facts = record('parent_session', variant, database='mysql', ok=summary['ok'],
                   failed=summary['failed'], timeout=summary['timeout'], probes=len(probes),
                   probe_errors=len(errors), lost_connection=len(lost),
                   parent_sessions=len(sessions | set([parent])),
                   shared_sessions=len(set(outcome.backend for outcome in on_parents)),
                   abandoned=abandoned, hung=stopped == 'hung')
    context = explain(dict(facts, parent=parent, probe_error_samples=errors[:3],
                           aborted_ids=aborted.ids(),
                           sessions=sorted(sessions),
                           main_thread_sessions=sorted(main_thread_sessions),
                           threads=sorted(set(entry.get('thread') for entry in probes))),
                      outcomes, worker)

    after = [entry for entry in probes if entry['at'] > done_at]
    if variant == 'patched':
        assert summary['ok'] == TASKS, context
        assert stopped == 'stopped', context
        assert len(after) >= PROBES_AFTER, context
        assert not errors, context
        assert main_thread_sessions == set([parent]), context
        assert not on_parents, context
        assert abandoned == 0, context
        return
    if line.after_fork == 'close':
        # The pool processes' close ended the main process's session.
        assert lost, context
    else:
        assert on_parents or summary['failed'] or summary['timeout'] or errors, context
