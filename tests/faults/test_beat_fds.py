"""Embedded beat (``celery worker -B``) whose scheduler opens files and sockets before
``beat_embedded_init``, in a worker whose main process holds connections when it forks.

In every Celery 4.x release the beat process (``beat._Process.run``) closes every inherited
file descriptor (``platforms.close_open_fds``), then ``Service.start`` creates the scheduler,
whose ``setup_schedule`` opens its files, and only then sends ``beat_embedded_init``. By then
the numbers the inherited database sockets had may belong to the scheduler's files, a broker
socket or beat's own new database connection: closing "the inherited socket" by its number,
or a driver's close that writes to it (psycopg2's Terminate, PyMySQL's COM_QUIT), hits
whatever holds the number now.

The scheduler (``cdf_demo.beat:FilesScheduler``) takes those numbers on purpose: a file takes
the number of the ``default`` alias's inherited socket, a socket to Redis the one of the
``other`` alias (the main process queried both), files every free number below. On every tick
(0.2 s) it writes a line to each file, PINGs Redis and queries the database; every second it
sends a task to the worker.

What must happen: beat sends on schedule, its queries succeed on a session of its own, the
files hold exactly the lines written, the socket answers, on PostgreSQL and MariaDB.
"""
from __future__ import absolute_import

import re
import time

import pytest

from celery_django_fixup.harness.demo.cdf_demo import beat

pytestmark = pytest.mark.faults

SCHEDULER = 'cdf_demo.beat:FilesScheduler'
TICKS = 25
SENT = 4
_NOOP_DONE = re.compile(r'Task cdf_demo\.noop\[[0-9a-f-]{36}\] succeeded')


@pytest.fixture(params=['postgresql', 'mysql'])
def database(request):
    return request.param, request.getfixturevalue(
        'pg_db' if request.param == 'postgresql' else 'mariadb_db')


def wait_for(predicate, timeout, interval=0.1):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            return False
        time.sleep(interval)
    return True


def test_embedded_beat_keeps_its_files(variant, database, start_worker, line, record, explain,
                                       tmpdir):
    vendor, db = database
    beat_log = str(tmpdir.join('beat.jsonl'))
    folder = tmpdir.mkdir('files')
    worker = start_worker(
        variant, url=db.url, concurrency=1, conn_max_age=600, parent_query=True,
        databases={'other': {'url': db.url}},
        args=['-B', '--scheduler', SCHEDULER],
        env={'CDF_BEAT_LOG': beat_log, 'CDF_BEAT_FILES': str(folder), 'CDF_BEAT_TICK': '0.2'})
    parent_fds = worker.info['parent_fds']
    assert len([fd for fd in parent_fds.values() if fd is not None]) == 2, worker.info

    def ticks():
        return [entry for entry in beat.read_log(beat_log) if 'tick' in entry]

    def noops():
        return len(_NOOP_DONE.findall(worker.log()))

    wait_for(lambda: len(ticks()) >= TICKS and noops() >= SENT, timeout=45)
    stopped = worker.stop(timeout=10)
    entries = beat.read_log(beat_log)
    setups = [entry for entry in entries if entry.get('setup')]
    tick_entries = [entry for entry in entries if 'tick' in entry]
    db_errors = [entry['error'] for entry in tick_entries if 'error' in entry]
    file_errors = [error for entry in tick_entries for error in entry['file_errors']]
    socket_errors = [entry['socket_error'] for entry in tick_entries if 'socket_error' in entry]
    problems = beat.check_files(setups[0], len(tick_entries)) if setups else {}
    beat_sessions = set(entry['backend'] for entry in tick_entries if 'backend' in entry)
    on_parents = beat_sessions & set(worker.info['parent_backends'].values())
    log = worker.log()
    beat_log_errors = [text for text in log.splitlines()
                       if 'ERROR/Beat' in text or 'beat raised exception' in text]
    sent = noops()
    failed_ticks = sum(1 for entry in tick_entries
                       if 'error' in entry or entry['file_errors'] or 'socket_error' in entry)
    facts = record('beat_fds', variant, database=vendor, ticks=len(tick_entries),
                   failed=failed_ticks,
                   beat_errors=len(db_errors), file_errors=len(file_errors),
                   socket_errors=len(socket_errors), files_damaged=len(problems),
                   shared_sessions=len(on_parents), sent=sent, hung=stopped == 'hung')
    context = explain(dict(facts, setup=setups[:1], parent_fds=parent_fds,
                           db_error_samples=db_errors[:2], file_error_samples=file_errors[:2],
                           socket_error_samples=socket_errors[:2], problems=problems,
                           beat_log_errors=beat_log_errors[:3]), (), worker, lines=60)

    # The scheduler took the numbers of both inherited sockets (else nothing was tested).
    assert setups, context
    taken = set(int(fd) for fd in setups[0]['files']) | set([setups[0]['socket_fd']])
    assert set(parent_fds.values()) <= taken, context
    if variant == 'patched':
        assert stopped == 'stopped', context
        assert len(tick_entries) >= TICKS, context
        assert sent >= SENT, context
        assert not db_errors, context
        assert not file_errors and not socket_errors, context
        assert not problems, context
        assert not on_parents, context
        assert not beat_log_errors, context
        return
    # Stock: what each line does is recorded; every 4.x line breaks some of it.
    assert db_errors or file_errors or socket_errors or problems or on_parents, context


def test_embedded_beat_keeps_its_files_when_inherited_pollers_are_freed(
        variant, start_worker, pg_db, record, explain, tmpdir):
    """The worker's main process forks beat holding kombu's event-loop pollers (its event
    loop, its Redis transports: Celery 5.7 creates the event loop's before beat). Celery then
    closes their numbers under them, the scheduler's files take those numbers, and the
    garbage collector frees a poller whenever it likes: its ``epoll`` object closes its old
    number, whatever holds it by then (measured: beat's database socket, "Socket operation on
    non-socket", and the WAL of its SQLite schedule file). The scheduler frees them on purpose
    right after its files took their numbers; with the patched fix-up the files stay intact.
    """
    beat_log = str(tmpdir.join('beat.jsonl'))
    folder = tmpdir.mkdir('files')
    worker = start_worker(
        variant, url=pg_db.url, concurrency=1, conn_max_age=600,
        args=['-B', '--scheduler', SCHEDULER],
        env={'CDF_BEAT_LOG': beat_log, 'CDF_BEAT_FILES': str(folder), 'CDF_BEAT_TICK': '0.2',
             'CDF_BEAT_FREE_POLLERS': '1'})

    def ticks():
        return [entry for entry in beat.read_log(beat_log) if 'tick' in entry]

    wait_for(lambda: len(ticks()) >= TICKS // 2, timeout=30)
    stopped = worker.stop(timeout=10)
    entries = beat.read_log(beat_log)
    setups = [entry for entry in entries if entry.get('setup')]
    tick_entries = [entry for entry in entries if 'tick' in entry]
    file_errors = [error for entry in tick_entries for error in entry['file_errors']]
    db_errors = [entry['error'] for entry in tick_entries if 'error' in entry]
    problems = beat.check_files(setups[0], len(tick_entries)) if setups else {}
    setup = setups[0] if setups else {}
    failed_ticks = sum(1 for entry in tick_entries if 'error' in entry or entry['file_errors'])
    facts = record('beat_pollers', variant, database='postgresql', failed=failed_ticks,
                   pollers=setup.get('pollers'),
                   pollers_open=len(setup.get('pollers_open') or ()), ticks=len(tick_entries),
                   file_errors=len(file_errors), beat_errors=len(db_errors),
                   files_damaged=len(problems), hung=stopped == 'hung')
    context = explain(dict(facts, setup=setups[:1], file_error_samples=file_errors[:2],
                           db_error_samples=db_errors[:2], problems=problems),
                      (), worker, lines=60)

    assert setups and tick_entries, context
    if not setup['pollers']:
        pytest.skip('embedded beat inherits no kombu event-loop poller on this line')
    if variant == 'patched':
        # Every inherited poller was closed before Celery closed its number.
        assert setup['pollers_open'] == [], context
        assert stopped == 'stopped', context
        assert not file_errors and not problems and not db_errors, context
        return
    # Stock: the pollers still held their old numbers, which the files had taken.
    assert setup['pollers_open'], context
    assert set(setup['pollers_open']) <= set(int(fd) for fd in setup['files']), context
    assert file_errors or problems, context
