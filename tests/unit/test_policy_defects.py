"""Ways a task's connection was kept although the task ended badly, or was checked by the
driver instead of Django, in the style of Celery's own fix-up tests.

1. Failed tasks reported as successes: ``task_postrun`` without a state (a ``BaseException``, an
   ``on_error`` that raised), or with ``SUCCESS`` although Celery then reports an internal error
   (the result store, ``on_success``, callbacks or ``after_return`` raised after the body
   returned).
2. PyMySQL's ``ping()`` reconnects in place by default: Django's ``is_usable()`` would hand the
   task a session Django never set up.
3. A task that catches the soft time limit's exception and returns normally.
4. ``CELERY_DB_REUSE_MAX`` counted per worker instead of per thread (threads pool).
"""
from __future__ import absolute_import

import os
import signal
import sys
import threading
import warnings

import pytest

from celery import Task, signals
from celery.exceptions import SoftTimeLimitExceeded

from celery_django_fixup import versions
from celery_django_fixup.connections import socket_is_quiet
from celery_django_fixup.worker import DjangoWorkerFixup

try:
    from unittest import mock
except ImportError:  # Python 2
    import mock
from fakes import make_fixup
from fakes import (FakeConnection, FakeConnectionHandler, FakeDbapiConnection, FakeMysqlConnection,
                   FakePyMySQL, FakeThreadLocalHandler)

PY2 = sys.version_info[0] == 2

#: Celery 5.7 only logs an exception of ``on_success`` or ``after_return``: the task succeeded.
HANDLER_ERRORS_ONLY_LOGGED = not versions.handler_errors_fail_the_task()


def task(eager=False):
    return mock.Mock(name='task', request=mock.Mock(is_eager=eager))


def connected(conn):
    """``conn`` after a task used it again: connected, whatever the fix-up did before."""
    if conn.connection is None:
        conn.connection = FakeDbapiConnection()
    return conn


@pytest.fixture
def installed():
    """``installed(app, *conns, **conf)``: a fix-up whose signal handlers are connected (and
    disconnected at the end), its connections as a task left them."""
    fixups = []

    def install(app, *conns, **conf):
        fixup = make_fixup(app, *conns, **conf)
        fixup.install()
        fixups.append(fixup)
        for conn in conns:
            connected(conn)
            del conn.calls[:]
        return fixup

    yield install
    for fixup in fixups:
        fixup.uninstall()


# -- 1. failed tasks reported as successes --------------------------------------------------------

class test_postrun_without_state(object):
    """Every Celery 4.x sends a state; ``None`` means the tracer never set one: the body raised
    a ``BaseException`` (``state`` is only set for ``Exception``), or ``on_error`` raised."""

    def test_forces_a_close(self, app):
        conn = FakeConnection()
        fixup = make_fixup(app, conn)
        fixup.on_task_postrun(task(), state=None)
        assert conn.calls[0] == 'close', conn.calls
        assert conn.connection is None

    def test_forces_a_close_with_reuse_max(self, app):
        conn = FakeConnection()
        fixup = make_fixup(app, conn, CELERY_DB_REUSE_MAX=10)
        fixup.on_task_postrun(task(), state=None)
        assert conn.connection is None


def postrun_while_raising(fixup, exc, state='SUCCESS'):
    """``task_postrun`` as Celery's tracer sends it when the result store, ``on_success`` or
    ``after_return`` raised: from a ``finally`` clause, the exception on its way out."""
    with pytest.raises(type(exc)):
        try:
            raise exc
        finally:
            fixup.on_task_postrun(task(), state=state)


@pytest.mark.skipif(PY2, reason='Python 2 cannot tell an exception in flight in a finally '
                                'clause from one handled earlier')
class test_postrun_with_an_exception_in_flight(object):

    @pytest.mark.parametrize('exc', [
        SoftTimeLimitExceeded('fired while the result backend wrote'),
        RuntimeError('on_success raised'),
    ])
    def test_forces_a_close(self, app, exc):
        conn = FakeConnection()
        fixup = make_fixup(app, conn)
        postrun_while_raising(fixup, exc)
        assert 'close' in conn.calls, conn.calls
        assert conn.connection is None

    def test_an_exception_handled_before_is_not_in_flight(self, app):
        # A task that raised and was handled (state FAILURE) is closed for its state; a task
        # that succeeded after some exception was caught and handled keeps its connection.
        conn = FakeConnection()
        fixup = make_fixup(app, conn)
        try:
            raise RuntimeError('handled')
        except RuntimeError:
            pass
        fixup.on_task_postrun(task(), state='SUCCESS')
        assert conn.connection is not None


class test_failure_reported_after_postrun(object):
    """Celery's tracer sends ``task_postrun`` (``SUCCESS``) in a ``finally``, then reports the
    internal error and calls ``on_error``, which sends ``task_failure`` (and, from 4.4,
    ``task_internal_error`` before it): the connection is closed when that arrives."""

    def test_task_failure_closes_right_away(self, app, installed):
        conn = FakeConnection()
        fixup = installed(app, conn)
        sender = task()
        fixup.on_task_prerun(sender, task_id='t1')
        fixup.on_task_postrun(sender, task_id='t1', state='SUCCESS')
        assert conn.connection is not None
        exc = SoftTimeLimitExceeded('fired while the result backend wrote')
        signals.task_failure.send(sender=sender, task_id='t1', exception=exc, args=(),
                                  kwargs={}, traceback=None, einfo=None)
        assert conn.connection is None, conn.calls

    @pytest.mark.skipif(not hasattr(signals, 'task_internal_error'),
                        reason='task_internal_error is sent from Celery 4.4')
    def test_task_internal_error_closes_right_away(self, app, installed):
        conn = FakeConnection()
        fixup = installed(app, conn)
        sender = task()
        fixup.on_task_prerun(sender, task_id='t1')
        fixup.on_task_postrun(sender, task_id='t1', state='SUCCESS')
        signals.task_internal_error.send(sender=sender, task_id='t1', args=(), kwargs={},
                                         request=None, exception=RuntimeError('x'),
                                         traceback=None, einfo=None)
        assert conn.connection is None, conn.calls

    def test_eager_task_failure_is_left_alone(self, app, installed):
        conn = FakeConnection()
        installed(app, conn)
        signals.task_failure.send(sender=task(eager=True), task_id='t1',
                                  exception=RuntimeError('x'), args=(), kwargs={},
                                  traceback=None, einfo=None)
        assert conn.connection is not None


def _tracer(app, task_obj):
    from celery.app.trace import build_tracer
    return build_tracer(task_obj.name, task_obj, eager=False, propagate=False, app=app)


def _trace(app, task_obj):
    """Run ``task_obj`` through Celery's real tracer, as a worker's pool process does."""
    tracer = _tracer(app, task_obj)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # "Exception raised outside body"
        try:
            return tracer('task-id-1', (), {}, {'id': 'task-id-1', 'is_eager': False})
        except BaseException as exc:  # noqa: B902 -- what the pool process would see
            return exc


class test_celerys_tracer(object):
    """The whole sequence of signals Celery's tracer sends, with the fix-up installed: the
    task's connection must not survive a task Celery reports as failed."""

    def _app(self, app):
        app.conf.result_backend = 'cache+memory://'
        return app

    def test_successful_task_keeps_its_connection(self, app, installed):
        conn = FakeConnection()
        installed(self._app(app), conn)

        @app.task(shared=False)
        def ok():
            connected(conn)
            return 1

        _trace(app, ok)
        assert conn.connection is not None, conn.calls

    def test_result_store_interrupted(self, app, installed):
        conn = FakeConnection()
        installed(self._app(app), conn)

        @app.task(shared=False)
        def stored():
            connected(conn)
            return 1

        stored.backend.mark_as_done = mock.Mock(
            side_effect=SoftTimeLimitExceeded('fired while the result backend wrote'))
        _trace(app, stored)
        assert conn.connection is None, conn.calls

    def test_on_success_raises(self, app, installed):
        conn = FakeConnection()
        installed(self._app(app), conn)

        class OnSuccessRaises(Task):
            # The tracer calls on_success only if the task's class defines one.
            def on_success(self, retval, task_id, args, kwargs):
                raise RuntimeError('on_success raised')

        @app.task(shared=False, base=OnSuccessRaises)
        def succeeded():
            connected(conn)
            return 1

        _trace(app, succeeded)
        if HANDLER_ERRORS_ONLY_LOGGED:
            # Celery 5.7: the task succeeded (its error is logged), and so may its connection.
            assert conn.connection is not None, conn.calls
        else:
            assert conn.connection is None, conn.calls

    def test_after_return_raises(self, app, installed):
        conn = FakeConnection()
        installed(self._app(app), conn)

        class AfterReturnRaises(Task):
            def after_return(self, *args, **kwargs):
                raise RuntimeError('after_return raised')

        @app.task(shared=False, base=AfterReturnRaises)
        def returned():
            connected(conn)
            return 1

        _trace(app, returned)
        if HANDLER_ERRORS_ONLY_LOGGED:
            assert conn.connection is not None, conn.calls
        else:
            assert conn.connection is None, conn.calls

    def test_on_failure_raises(self, app, installed):
        conn = FakeConnection()
        installed(self._app(app), conn)

        @app.task(shared=False)
        def failed():
            connected(conn)
            raise ValueError('failed')

        failed.on_failure = mock.Mock(side_effect=RuntimeError('on_failure raised'))
        _trace(app, failed)
        assert conn.connection is None, conn.calls

    def test_base_exception(self, app, installed):
        conn = FakeConnection()
        installed(self._app(app), conn)

        class Stop(BaseException):
            pass

        @app.task(shared=False)
        def stopped():
            connected(conn)
            raise Stop()

        assert isinstance(_trace(app, stopped), Stop)
        assert conn.connection is None, conn.calls


# -- 2. PyMySQL reconnects inside the driver ------------------------------------------------------

def _needs_pymysql():
    return pytest.importorskip('pymysql')


class test_pymysql_check_before_reuse(object):

    def test_fake_is_what_the_fixup_sees_of_pymysql(self):
        _needs_pymysql()
        from pymysql.connections import Connection
        dbapi = FakePyMySQL()
        assert isinstance(dbapi, Connection)
        assert not hasattr(dbapi, 'fileno')
        dbapi.close()

    def test_session_killed_while_idle_is_replaced_through_django(self, app):
        _needs_pymysql()
        conn = FakeMysqlConnection()
        old = conn.connection
        fixup = make_fixup(app, conn)
        fixup.on_task_prerun(task())
        old.kill()  # KILL while the worker was idle
        conn.ensure_connection()
        # Never revived inside the driver: Django's connect() must run (init_connection_state,
        # connection_created, a new close_at).
        assert old.reconnects == 0, old.pings
        assert conn.connection is not old
        assert conn.created == 1, conn.calls
        assert old.closed_by_client

    def test_healthy_session_is_kept_and_never_pinged_with_reconnect(self, app):
        _needs_pymysql()
        conn = FakeMysqlConnection()
        old = conn.connection
        fixup = make_fixup(app, conn)
        fixup.on_task_prerun(task())
        conn.ensure_connection()
        assert conn.connection is old
        assert conn.created == 0
        assert True not in old.pings, old.pings

    def test_unusable_after_an_error_is_not_revived_by_the_driver(self, app):
        _needs_pymysql()
        # The task's query failed on the killed session (errors_occurred): the check at
        # postrun must not let PyMySQL reconnect in place either.
        conn = FakeMysqlConnection()
        old = conn.connection
        old.kill()
        conn.errors_occurred = True
        fixup = make_fixup(app, conn)
        fixup.on_task_postrun(task(), state='SUCCESS')
        assert old.reconnects == 0, old.pings
        assert conn.connection is None

    def test_reconnect_is_logged(self, app, caplog):
        _needs_pymysql()
        import logging
        caplog.set_level(logging.INFO)
        conn = FakeMysqlConnection()
        conn.connection.kill()
        fixup = make_fixup(app, conn)
        fixup.on_task_prerun(task())
        conn.ensure_connection()
        assert 'was broken while idle; reconnecting' in caplog.text


# -- 3. interruptions the task catches ------------------------------------------------------------

@pytest.fixture
def soft_timeout_handler():
    """billiard's handler of the soft time limit signal, installed as in a pool process
    (before ``worker_process_init``); the previous handler is put back afterwards."""
    from billiard import pool
    if pool.SIG_SOFT_TIMEOUT is None:
        pytest.skip('no soft time limit signal on this platform')
    previous = signal.signal(pool.SIG_SOFT_TIMEOUT, pool.soft_timeout_sighandler)
    yield pool.SIG_SOFT_TIMEOUT
    signal.signal(pool.SIG_SOFT_TIMEOUT, previous)


def deliver(signum):
    """Send ``signum`` to this process and wait until its handler has run."""
    os.kill(os.getpid(), signum)
    for _ in range(1000):  # the handler runs at the next bytecode boundary
        threading.Event().wait(0.001)
    raise AssertionError('the signal handler did not raise')


class test_soft_time_limit_caught_by_the_task(object):

    def test_forces_a_close_at_postrun(self, app, soft_timeout_handler):
        conn = FakeConnection()
        fixup = make_fixup(app, conn)
        with mock.patch('os.close'):
            fixup.on_worker_process_init()
        connected(conn)
        fixup.on_task_prerun(task())
        caught = False
        try:
            deliver(soft_timeout_handler)  # in the middle of a query
        except SoftTimeLimitExceeded:
            caught = True  # and the task returns normally
        assert caught
        del conn.calls[:]
        fixup.on_task_postrun(task(), state='SUCCESS')
        assert 'close' in conn.calls, conn.calls
        assert conn.connection is None

    def test_only_the_task_it_was_delivered_in(self, app, soft_timeout_handler):
        conn = FakeConnection()
        fixup = make_fixup(app, conn)
        with mock.patch('os.close'):
            fixup.on_worker_process_init()
        connected(conn)
        fixup.on_task_prerun(task())
        try:
            deliver(soft_timeout_handler)
        except SoftTimeLimitExceeded:
            pass
        fixup.on_task_postrun(task(), state='SUCCESS')
        connected(conn)
        fixup.on_task_prerun(task())
        fixup.on_task_postrun(task(), state='SUCCESS')
        assert conn.connection is not None, conn.calls

    def test_pymysql_left_with_unread_packets_is_replaced_through_django(self, app):
        _needs_pymysql()
        # The exception landed while PyMySQL read the reply: the rest of it is still to read.
        dbapi = FakePyMySQL(broken=True, unread=b'\x01\x00\x00\x01\x01')
        conn = FakeMysqlConnection(dbapi=dbapi)
        fixup = make_fixup(app, conn)
        fixup.on_task_prerun(task())
        conn.ensure_connection()
        assert dbapi.reconnects == 0, dbapi.pings
        assert conn.connection is not dbapi
        assert conn.created == 1


class test_unread_data_is_not_quiet(object):

    def test_socket_with_unread_data(self):
        import socket
        left, right = socket.socketpair()
        try:
            dbapi = mock.Mock(spec=['fileno', 'closed'], closed=0)
            dbapi.fileno.return_value = left.fileno()
            assert socket_is_quiet(dbapi)
            right.sendall(b'stale')
            assert not socket_is_quiet(dbapi)
        finally:
            left.close()
            right.close()

    def test_pymysql_socket_with_unread_data(self):
        _needs_pymysql()
        dbapi = FakePyMySQL(unread=b'stale')
        try:
            assert not socket_is_quiet(dbapi)
        finally:
            dbapi.close()

    @pytest.mark.xfail(strict=True, reason='socket_is_quiet() polls PyMySQL\'s _sock only: '
                       'bytes already in its buffered _rfile are not seen')
    def test_pymysql_unread_data_already_buffered(self):
        _needs_pymysql()
        # PyMySQL reads through a buffered file: what it has taken off the socket but not
        # used yet is not seen by poll().
        dbapi = FakePyMySQL(unread=b'stale packets')
        try:
            dbapi._rfile.peek(1)
            assert not socket_is_quiet(dbapi)
        finally:
            dbapi.close()


# -- 4. CELERY_DB_REUSE_MAX under the threads pool ------------------------------------------------

def run_in_threads(fixup, threads, schedule):
    """Run one task at a time on the thread ``schedule`` names for it (an index below
    ``threads``); returns, per thread, the DB-API connection each of its tasks used."""
    try:
        import queue
    except ImportError:  # Python 2
        import Queue as queue
    used = dict((index, []) for index in range(threads))
    inboxes = [queue.Queue() for _ in range(threads)]
    done = queue.Queue()

    def serve(index):
        while True:
            job = inboxes[index].get()
            if job is None:
                return
            try:
                sender = task()
                fixup.on_task_prerun(sender)
                conn = fixup._db.connections.all()[0]
                conn.ensure_connection()
                used[index].append(conn.connection)  # kept alive: ids are not reused
                fixup.on_task_postrun(sender, state='SUCCESS')
                done.put(None)
            except Exception as exc:  # noqa: B902 -- reported to the test
                done.put(exc)

    workers = [threading.Thread(target=serve, args=(index,)) for index in range(threads)]
    for worker in workers:
        worker.daemon = True
        worker.start()
    try:
        for index in schedule:
            inboxes[index].put(True)
            error = done.get(timeout=10)
            if error is not None:
                raise error
    finally:
        for inbox in inboxes:
            inbox.put(None)
        for worker in workers:
            worker.join(10)
    return used


def longest_run(ids):
    """The most consecutive tasks one DB-API connection served."""
    longest = current = 0
    previous = object()
    for value in ids:
        current = current + 1 if value == previous else 1
        previous = value
        longest = max(longest, current)
    return longest


def round_robin(threads, tasks):
    return [number % threads for number in range(tasks)]


def shuffled(threads, tasks, seed=4):
    """Which thread of a pool takes each task, as a pool does it: any idle one."""
    import random
    chooser = random.Random(seed)
    return [chooser.randrange(threads) for _ in range(tasks)]


class test_reuse_max_per_thread(object):
    """``CELERY_DB_REUSE_MAX=N``: each thread's connection serves N tasks of that thread at most.
    Counted once per worker, a close at every N tasks closes only the connections of the thread
    that happens to run then: the others keep theirs for about concurrency x N tasks."""

    @pytest.mark.parametrize('threads,reuse_max,schedule', [
        (2, 4, 'round robin'),   # counted per worker: thread 1 is never recycled
        (2, 5, 'shuffled'),
        (4, 5, 'shuffled'),
    ])
    def test_each_thread_keeps_a_connection_for_at_most_n_tasks(self, app, threads, reuse_max,
                                                                 schedule):
        fixup = make_fixup(app, CELERY_DB_REUSE_MAX=reuse_max)
        fixup._db.connections = FakeThreadLocalHandler(lambda: [FakeConnection()])
        make = round_robin if schedule == 'round robin' else shuffled
        used = run_in_threads(fixup, threads, make(threads, threads * 30))
        runs = dict((index, longest_run(ids)) for index, ids in used.items())
        assert all(len(ids) > 3 * reuse_max for ids in used.values()), used
        assert max(runs.values()) == reuse_max, runs

    def test_one_thread_is_counted_as_before(self, app):
        fixup = make_fixup(app, CELERY_DB_REUSE_MAX=5)
        fixup._db.connections = FakeThreadLocalHandler(lambda: [FakeConnection()])
        used = run_in_threads(fixup, 1, [0] * 20)
        assert longest_run(used[0]) == 5
        assert len(set(used[0])) == 4
