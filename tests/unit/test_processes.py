"""Which process a connection belongs to, forks and exits, and the spawned pool process."""
from __future__ import absolute_import

import os
import threading

import pytest

from celery_django_fixup import connections, patch, processes, worker
from celery_django_fixup.worker import DjangoWorkerFixup

try:
    from unittest import mock
except ImportError:  # Python 2
    import mock
from fakes import FakeConnection


def test_connection_opened_here_is_not_inherited():
    conn = FakeConnection()
    assert processes.inherited(conn)  # opened before anything recorded it
    processes.record(conn)
    assert not processes.inherited(conn)
    with mock.patch('os.getpid', return_value=os.getpid() + 1):
        assert processes.inherited(conn)  # as seen from a forked child


def test_fork_closes_other_threads_connections_quietly_in_the_child():
    # The interpreter frees the other threads' state in the child: their connections are held
    # from before the fork and closed there with no IO.
    other = FakeConnection('other')
    dbapi = other.connection
    recorder = threading.Thread(target=processes.record, args=(other,))
    recorder.start()
    recorder.join()
    processes._before_fork()
    assert dbapi in processes._held_at_fork
    with mock.patch('celery_django_fixup.connections._point_at_devnull',
                    return_value=True) as devnull:
        processes._after_fork_in_child()
    devnull.assert_called_once_with(dbapi.fd)
    assert dbapi.closed and other.calls == []
    assert processes._held_at_fork == []


def test_fork_in_the_parent_holds_nothing_after():
    conn = FakeConnection()
    processes.record(conn)
    processes._before_fork()
    processes._after_fork_in_parent()
    assert processes._held_at_fork == []
    assert not conn.connection.closed


def test_connection_of_a_driver_without_a_socket_is_kept_unclosed():
    conn = FakeConnection()
    dbapi = conn.connection
    dbapi.fileno = None
    processes.record(conn)
    processes._before_fork()
    processes._after_fork_in_child()
    assert not dbapi.closed and dbapi in connections._orphans
    connections._orphans.remove(dbapi)


def _django_fixup(worker_fixup):
    from celery.fixups import django as upstream
    django_fixup = mock.Mock(spec=upstream.DjangoFixup, _worker_fixup=worker_fixup)
    django_fixup.worker_fixup = worker_fixup
    return django_fixup


def _worker_process_init(app, django_fixups, installed=()):
    with mock.patch.object(patch, '_django_fixups', side_effect=lambda a: django_fixups), \
            mock.patch.object(patch._state, '_get_active_apps', return_value=[app]), \
            mock.patch.object(worker, '_installed', list(installed)):
        patch.on_worker_process_init(sender='host')


@pytest.mark.parametrize('created', [False, True], ids=['not created', 'created'])
def test_spawned_pool_process_installs_the_patched_fixup(app, created):
    # worker_pool_start_method='spawn' (Celery 5.7): the pool process unpickles the app and
    # gets worker_process_init, never worker_init. Celery's import_modules handler, which sets
    # Django up there, creates the worker fix-up first, without installing it.
    worker_fixup = mock.Mock(spec=DjangoWorkerFixup)
    django_fixup = _django_fixup(worker_fixup if created else None)
    django_fixup.worker_fixup = worker_fixup
    _worker_process_init(app, [django_fixup])
    worker_fixup.install.assert_called_once_with()
    worker_fixup.on_worker_process_init.assert_called_once_with(sender='host')


def test_spawned_pool_process_installs_one_fixup(app):
    # The app unpickled from the pool's arguments and the one the task modules import.
    first, second = mock.Mock(spec=DjangoWorkerFixup), mock.Mock(spec=DjangoWorkerFixup)
    _worker_process_init(app, [_django_fixup(first), _django_fixup(second)])
    first.install.assert_called_once_with()
    assert second.mock_calls == []


def test_forked_pool_process_keeps_the_fixup_its_parent_installed(app):
    parents = mock.Mock(spec=DjangoWorkerFixup)
    django_fixup = _django_fixup(parents)
    _worker_process_init(app, [django_fixup], installed=[parents])
    assert parents.mock_calls == []


@pytest.fixture
def pollers():
    eventio = pytest.importorskip('kombu.utils.eventio')
    if getattr(eventio, '_epoll', None) is None or not hasattr(__import__('select'), 'epoll'):
        pytest.skip('no epoll on this platform')
    still_open, already_closed = eventio._epoll(), eventio._epoll()
    already_closed.close()
    yield still_open, already_closed
    still_open.close()


def test_inherited_pollers_are_closed_through_their_objects(pollers):
    # In embedded beat, before Celery closes every inherited number: freed later, a poller
    # closed here closes nothing.
    still_open, already_closed = pollers
    with mock.patch.object(processes.gc, 'get_objects',
                           return_value=[object(), still_open, already_closed]):
        assert processes.close_inherited_pollers() == 1
    assert still_open._epoll.closed


@pytest.mark.parametrize('in_beat', [True, False], ids=['embedded beat', 'other process'])
def test_beat_start_callbacks_run_in_embedded_beat_only(in_beat):
    callback = mock.Mock()
    with mock.patch.object(processes, '_beat_start_callbacks', [callback]), \
            mock.patch.object(processes, '_in_embedded_beat', return_value=in_beat):
        processes._run_beat_start_callbacks(processes._beat_start_hook)
    assert callback.called == in_beat


def test_embedded_beat_is_told_apart_by_its_process_class():
    from celery import beat
    if getattr(beat, '_Process', None) is None:
        pytest.skip('embedded beat runs in a thread here')
    beat_process = beat._Process.__new__(beat._Process)
    with mock.patch('billiard.process.current_process', return_value=beat_process):
        assert processes._in_embedded_beat()
    assert not processes._in_embedded_beat()  # this process


def test_beat_start_hook_is_registered_with_billiard_once():
    from billiard import util
    callback = mock.Mock()
    with mock.patch.object(processes, '_beat_start_callbacks', []), \
            mock.patch.object(util, 'register_after_fork') as register:
        processes.on_embedded_beat_start(callback)
        processes.on_embedded_beat_start(callback)
        processes.on_embedded_beat_start(mock.Mock())
    register.assert_called_once_with(processes._beat_start_hook,
                                     processes._run_beat_start_callbacks)


def test_installed_fixup_closes_the_pollers_embedded_beat_inherited(app):
    fixup = mock.Mock(spec=DjangoWorkerFixup)
    with mock.patch.object(worker, '_installed', [fixup]):
        worker._before_embedded_beat_closes_fds()
    fixup.on_embedded_beat_start.assert_called_once_with()
    real = DjangoWorkerFixup.__new__(DjangoWorkerFixup)
    with mock.patch.object(processes, 'close_inherited_pollers', return_value=2) as close:
        real.on_embedded_beat_start()
    close.assert_called_once_with()
