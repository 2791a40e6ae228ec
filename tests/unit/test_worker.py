"""The patched DjangoWorkerFixup, rule by rule, in the style of Celery's own fix-up tests."""
from __future__ import absolute_import

import os

import pytest

from celery import signals
from celery.fixups import django as upstream

from celery_django_fixup import InvalidSetting, versions
from celery_django_fixup.connections import LazyHealthCheck
from celery_django_fixup.worker import POOL_CHILD, DjangoWorkerFixup, upstream_class

try:
    from unittest import mock
except ImportError:  # Python 2
    import mock
from fakes import make_fixup
from fakes import FakeConnection, FakeConnectionHandler


def assert_cache_closed(fixup):
    # As each Celery line does it: cache.close() up to 4.1, close_caches() from 4.2.
    if hasattr(upstream_class(), 'close_cache') and versions.celery_version() < (4, 2, 0):
        fixup._cache.cache.close.assert_called_with()
    else:
        fixup._cache.close_caches.assert_called_with()


def task(eager=False):
    return mock.Mock(name='task', request=mock.Mock(is_eager=eager))


class test_class(object):

    def test_subclasses_celerys_own(self):
        assert issubclass(DjangoWorkerFixup, upstream_class())
        assert upstream_class().__module__ == 'celery.fixups.django'

    def test_keeps_upstream_signatures(self, app):
        fixup = make_fixup(app)
        # Called the way Celery 4.4.4 and code written against it call them.
        fixup.close_database()
        fixup.close_database(sender=None, signal=signals.beat_embedded_init)
        fixup._close_database()
        fixup._close_database(force=True)
        fixup.on_task_prerun(task())
        fixup.on_task_postrun(task())
        fixup.close_cache()
        assert fixup.install() is fixup
        fixup.uninstall()


class test_install(object):

    def test_connects_handlers_and_forces_a_close(self, app):
        conn = FakeConnection(usable=True)
        fixup = make_fixup(app, conn)
        with mock.patch('celery_django_fixup.worker.signals') as sigs:
            assert fixup.install() is fixup
            fixup.uninstall()
        sigs.beat_embedded_init.connect.assert_called_with(fixup.on_beat_embedded_init)
        if versions.upstream_connects_worker_ready(upstream_class()):
            sigs.worker_ready.connect.assert_called_with(fixup.on_worker_ready)
        sigs.task_prerun.connect.assert_called_with(fixup.on_task_prerun)
        sigs.task_postrun.connect.assert_called_with(fixup.on_task_postrun)
        sigs.worker_process_init.connect.assert_called_with(fixup.on_worker_process_init)
        sigs.worker_process_shutdown.connect.assert_called_with(fixup.on_worker_process_shutdown)
        sigs.worker_shutdown.connect.assert_called_with(fixup.on_worker_shutdown)
        # Forced, not close_if_unusable_or_obsolete: the parent must not fork with it open.
        assert conn.calls == ['close']
        assert conn.connection is None
        assert_cache_closed(fixup)

    def test_uninstall_disconnects_what_install_connected(self, app):
        fixup = make_fixup(app)
        before = list(signals.task_prerun.receivers)
        fixup.install()
        assert len(signals.task_prerun.receivers) == len(before) + 1
        fixup.uninstall()
        assert signals.task_prerun.receivers == before


class test_settings(object):

    @pytest.mark.parametrize('value', ['10', -1, 1.5, True])
    def test_reuse_max_must_be_a_whole_number(self, app, value):
        with pytest.raises(InvalidSetting) as excinfo:
            make_fixup(app, CELERY_DB_REUSE_MAX=value)
        assert 'CELERY_DB_REUSE_MAX' in str(excinfo.value)

    @pytest.mark.parametrize('value', ['false', 0, None])
    def test_health_checks_must_be_a_boolean(self, app, value):
        with pytest.raises(InvalidSetting) as excinfo:
            make_fixup(app, CELERY_DB_HEALTH_CHECKS=value)
        assert 'CELERY_DB_HEALTH_CHECKS' in str(excinfo.value)

    def test_defaults(self, app):
        fixup = make_fixup(app)
        assert fixup.db_reuse_max is None
        assert isinstance(fixup.health_check, LazyHealthCheck)

    def test_read_from_django_settings_too(self, app):
        from django.test.utils import override_settings
        with override_settings(CELERY_DB_REUSE_MAX=3, CELERY_DB_HEALTH_CHECKS=False):
            fixup = make_fixup(app)
        assert fixup.db_reuse_max == 3
        assert fixup.health_check is None


class test_task_boundaries(object):

    def test_healthy_connection_is_left_to_django(self, app):
        conn = FakeConnection()
        fixup = make_fixup(app, conn)
        fixup.on_task_prerun(task())
        assert conn.calls == ['close_if_unusable_or_obsolete']
        fixup.on_task_postrun(task(), state='SUCCESS')
        assert conn.calls == ['close_if_unusable_or_obsolete'] * 2
        assert conn.connection is not None
        assert_cache_closed(fixup)

    def test_eager_tasks_are_skipped(self, app):
        conn = FakeConnection()
        fixup = make_fixup(app, conn)
        fixup.on_task_prerun(task(eager=True))
        fixup.on_task_postrun(task(eager=True), state='FAILURE')
        assert conn.calls == []

    @pytest.mark.parametrize('state', ['FAILURE', 'RETRY', 'REVOKED', 'IGNORED', 'REJECTED'])
    def test_connection_of_a_task_that_did_not_succeed_is_closed(self, app, state):
        conn = FakeConnection()
        fixup = make_fixup(app, conn)
        fixup.on_task_postrun(task(), state=state)
        assert conn.calls[0] == 'close'
        assert conn.connection is None

    def test_postrun_without_state_is_not_a_success(self, app):
        # Celery sends no state when the task raised a BaseException.
        conn = FakeConnection()
        fixup = make_fixup(app, conn)
        fixup.on_task_postrun(task())
        assert conn.calls[0] == 'close'
        assert conn.connection is None

    @pytest.mark.parametrize('attribute', ['in_atomic_block', 'needs_rollback'])
    def test_connection_left_in_a_transaction_is_discarded(self, app, attribute):
        conn = FakeConnection()
        setattr(conn, attribute, True)
        fixup = make_fixup(app, conn)
        fixup.on_task_postrun(task(), state='SUCCESS')
        assert conn.calls == ['close']
        assert conn.connection is None
        assert not conn.in_atomic_block and not conn.needs_rollback
        assert not conn.closed_in_transaction

    def test_connection_left_with_autocommit_off_is_discarded(self, app):
        conn = FakeConnection(autocommit=False)
        fixup = make_fixup(app, conn)
        fixup.on_task_prerun(task())
        assert conn.calls == ['close']
        assert conn.connection is None

    def test_unusable_connection_after_an_error_is_closed(self, app):
        conn = FakeConnection(usable=False)
        conn.errors_occurred = True
        fixup = make_fixup(app, conn)
        fixup.on_task_postrun(task(), state='SUCCESS')
        assert conn.calls == ['is_usable', 'close']

    def test_usable_connection_after_an_error_is_kept(self, app):
        conn = FakeConnection(usable=True)
        conn.errors_occurred = True
        fixup = make_fixup(app, conn)
        fixup.on_task_postrun(task(), state='SUCCESS')
        assert conn.calls == ['is_usable', 'close_if_unusable_or_obsolete']
        assert not conn.errors_occurred

    def test_each_alias_follows_its_own_state(self, app):
        kept, failed = FakeConnection('kept'), FakeConnection('failed')
        failed.needs_rollback = True
        fixup = make_fixup(app, kept, failed)
        fixup.on_task_postrun(task(), state='SUCCESS')
        assert kept.connection is not None
        assert failed.connection is None

    def test_one_alias_failing_to_close_does_not_skip_the_others(self, app, caplog):
        broken = FakeConnection('broken', close_raises=RuntimeError('boom'))
        after = FakeConnection('after')
        fixup = make_fixup(app, broken, after)
        fixup._close_database(force=True)
        assert after.calls == ['close']
        assert after.connection is None
        assert broken.connection is None
        assert "'broken'" in caplog.text and 'boom' in caplog.text

    def test_one_alias_failing_its_check_does_not_skip_the_others(self, app, caplog):
        broken = FakeConnection('broken', close_raises=RuntimeError('boom'))
        after = FakeConnection('after', autocommit=False)
        fixup = make_fixup(app, broken, after)
        fixup.on_task_postrun(task(), state='SUCCESS')
        assert after.connection is None
        assert "'broken'" in caplog.text


class test_pools(object):

    @pytest.mark.parametrize('pool', ['eventlet', 'gevent'])
    def test_greenlet_pools_close_after_every_task(self, app, pool):
        conn = FakeConnection()
        fixup = make_fixup(app, conn)
        fixup.on_worker_init(sender=mock.Mock(pool_cls=pool))
        fixup.on_task_postrun(task(), state='SUCCESS')
        assert conn.connection is None

    def test_greenlet_pool_known_by_its_class(self, app):
        conn = FakeConnection()
        fixup = make_fixup(app, conn)
        green = type('TaskPool', (object,), {'is_green': True})
        fixup.on_worker_init(sender=mock.Mock(pool_cls=green))
        fixup.on_task_postrun(task(), state='SUCCESS')
        assert conn.connection is None

    @pytest.mark.parametrize('left', [None, 'needs_rollback', 'in_atomic_block', 'unusable'])
    def test_greenlet_pools_return_only_a_safe_connection_to_the_django_pool(self, app, left):
        # Django 5.1+ pools are process-wide: a safe connection goes back to the pool (close()),
        # an unsafe one is closed first, so that the pool drops it instead of handing it on.
        pooled = type('PooledConnection', (FakeConnection,),
                      {'_connection_pools': {'default': object()}})
        conn = pooled()
        dbapi = conn.connection
        if left == 'unusable':
            conn.errors_occurred, conn.usable = True, False
        elif left is not None:
            setattr(conn, left, True)
        fixup = make_fixup(app, conn)
        fixup.on_worker_init(sender=mock.Mock(pool_cls='gevent'))
        fixup.on_task_postrun(task(), state='SUCCESS')
        assert conn.connection is None
        assert 'close' in conn.calls
        assert dbapi.closed == (0 if left is None else 1)

    @pytest.mark.parametrize('pool', ['prefork', 'solo', 'processes', 'threads', None])
    def test_other_pools_reuse(self, app, pool):
        conn = FakeConnection()
        fixup = make_fixup(app, conn)
        fixup.on_worker_init(sender=mock.Mock(pool_cls=pool))
        fixup.on_task_postrun(task(), state='SUCCESS')
        assert conn.connection is not None


class test_fork(object):

    def test_child_drops_inherited_connections_with_no_io(self, app):
        a, b = FakeConnection('a'), FakeConnection('b')
        dbapi_a, dbapi_b = a.connection, b.connection
        dbapi_a.fd, dbapi_b.fd = 1001, 1002
        fixup = make_fixup(app, a, b)
        with mock.patch('celery_django_fixup.connections._point_at_devnull',
                        return_value=True) as devnull:
            fixup.on_worker_process_init()
        # Each socket pointed at /dev/null, then closed by the driver: whatever it sends
        # goes nowhere. Never a ping, never Django's close(): the session is the parent's.
        devnull.assert_has_calls([mock.call(1001), mock.call(1002)])
        assert dbapi_a.closed and dbapi_b.closed
        assert a.calls == [] and b.calls == []
        assert a.connection is None and b.connection is None
        assert_cache_closed(fixup)

    def test_child_with_no_connection_closes_nothing(self, app):
        conn = FakeConnection(connected=False)
        fixup = make_fixup(app, conn)
        with mock.patch('celery_django_fixup.connections._point_at_devnull') as devnull:
            fixup.on_worker_process_init()
        devnull.assert_not_called()

    def test_socket_that_cannot_be_found_is_never_closed(self, app):
        # psycopg2 raises its own InterfaceError from fileno() on a closed connection; other
        # drivers have no fileno() at all: the DB-API object is then kept, never closed.
        from celery_django_fixup import connections
        a, b = FakeConnection('a'), FakeConnection('b')
        dbapi_a = a.connection
        dbapi_a.fileno = mock.Mock(side_effect=type('InterfaceError', (Exception,), {}))
        fixup = make_fixup(app, a, b)
        with mock.patch('celery_django_fixup.connections._point_at_devnull',
                        return_value=True) as devnull:
            fixup.on_worker_process_init()
        devnull.assert_called_once_with(1000)
        assert not dbapi_a.closed and dbapi_a in connections._orphans
        assert a.connection is None and b.connection is None
        connections._orphans.remove(dbapi_a)

    def test_child_started_by_execv_validates_models(self, app):
        fixup = make_fixup(app)
        with mock.patch.dict(os.environ, {'FORKED_BY_MULTIPROCESSING': '1'}):
            with mock.patch.object(fixup, 'validate_models') as validate:
                fixup.on_worker_process_init()
        validate.assert_called_with()

    def test_any_fork_drops_inherited_connections(self, app):
        conn = FakeConnection()
        dbapi = conn.connection
        fixup = make_fixup(app, conn)
        with mock.patch('celery_django_fixup.connections._point_at_devnull',
                        return_value=True):
            fixup.on_fork_in_child()
        assert dbapi.closed and conn.calls == [] and conn.connection is None

    def test_embedded_beat_touches_no_inherited_fd(self, app):
        # beat closed every inherited fd before beat_embedded_init: their numbers may belong
        # to the scheduler's files now. Nothing is closed, nothing is written.
        from celery_django_fixup import connections, processes
        inherited, own = FakeConnection('inherited'), FakeConnection('own')
        dbapi = inherited.connection
        processes.record(own)
        fixup = make_fixup(app, inherited, own)
        service = mock.Mock(name='beat.Service')
        original_sync = service.sync
        with mock.patch('celery_django_fixup.connections._point_at_devnull') as devnull, \
                mock.patch('celery_django_fixup.processes.signal') as sig:
            sig.getsignal.return_value = sig.SIG_DFL  # as beat leaves it
            fixup.on_beat_embedded_init(sender=service)
        devnull.assert_not_called()
        assert not dbapi.closed and dbapi in connections._orphans
        assert inherited.calls == [] and inherited.connection is None
        # beat's own connection is kept, and checked before every use.
        assert own.connection is not None and fixup.health_check.is_armed(own)
        connections._orphans.remove(dbapi)
        # SIGTERM stops beat through its loop, and its last sync closes the connections.
        sig.signal.assert_called_once_with(sig.SIGTERM, mock.ANY)
        with pytest.raises(SystemExit):
            sig.signal.call_args[0][1](15, None)
        service.sync()
        original_sync.assert_called_once_with()
        assert own.connection is None

    def test_install_leaves_a_connection_inside_an_atomic_block(self, app):
        # The testing worker is built inside the test's transaction: it is the test's.
        conn = FakeConnection()
        conn.in_atomic_block = True
        fixup = make_fixup(app, conn)
        with mock.patch('celery_django_fixup.worker.signals'):
            fixup.install()
            fixup.uninstall()
        assert conn.calls == [] and conn.connection is not None


class test_processes(object):

    def test_solo_pool_process_init_in_the_workers_own_process_changes_nothing(self, app):
        # Celery 4.4+'s solo pool sends worker_process_init in the worker's own process: the
        # testing worker builds it inside the caller's transaction.
        conn = FakeConnection()
        fixup = make_fixup(app, conn)
        with mock.patch('celery_django_fixup.worker.signals'):
            conn.in_atomic_block = True
            fixup.install()
            fixup.uninstall()
        fixup.on_worker_process_init()
        assert conn.calls == [] and conn.connection is not None
        assert fixup.guards_idle_connections

    def test_pool_process_closes_its_connections_before_it_exits(self, app):
        from celery_django_fixup import processes
        own, other = FakeConnection('own'), FakeConnection('other')
        processes.record(own)
        fixup = make_fixup(app, own, other)
        fixup.on_worker_process_shutdown()
        assert own.calls == ['close'] and own.connection is None
        # Not opened by this process: not this process's to close.
        assert other.calls == [] and other.connection is not None

    def test_main_process_closes_them_at_shutdown(self, app):
        from celery_django_fixup import processes
        own = FakeConnection('own')
        processes.record(own)
        fixup = make_fixup(app, own)
        fixup.on_worker_shutdown()
        assert own.connection is None

    def test_main_process_checks_a_connection_before_every_use(self, app):
        conn = FakeConnection(usable=True)
        fixup = make_fixup(app, conn)
        fixup.on_connection_created(connection=conn)
        for _ in range(2):
            conn.ensure_connection()
        assert conn.calls == ['is_usable', 'ensure_connection'] * 2
        conn.usable = False
        old = conn.connection
        conn.ensure_connection()
        assert conn.connection is not old

    def test_pool_process_checks_once_per_task(self, app):
        from fakes import FakeDbapiConnection
        conn = FakeConnection(usable=True, connected=False)
        fixup = make_fixup(app, conn)
        fixup.on_worker_process_init()
        conn.connection = FakeDbapiConnection()
        fixup.on_connection_created(connection=conn)
        conn.ensure_connection()
        assert 'is_usable' not in conn.calls


class test_reuse_max(object):

    def test_periodic_close_is_forced(self, app):
        conn = FakeConnection()
        fixup = make_fixup(app, conn, CELERY_DB_REUSE_MAX=2)
        closes = []
        for _ in range(3):  # three tasks: prerun + postrun each
            fixup.on_task_prerun(task())
            closes.append(conn.connection is None)
            conn.connection = conn.connection or object()
            fixup.on_task_postrun(task(), state='SUCCESS')
            closes.append(conn.connection is None)
            conn.connection = conn.connection or object()
        # Counted as upstream counts it (prerun and postrun), the close at the 4th boundary.
        assert closes == [False, False, False, False, True, False]

    def test_kept_regardless_of_age_between_periodic_closes(self, app):
        conn = FakeConnection()
        fixup = make_fixup(app, conn, CELERY_DB_REUSE_MAX=10)
        fixup.on_task_prerun(task())
        assert 'close_if_unusable_or_obsolete' not in conn.calls
        assert conn.connection is not None

    def test_unsafe_connection_closed_between_periodic_closes(self, app):
        conn = FakeConnection()
        conn.needs_rollback = True
        fixup = make_fixup(app, conn, CELERY_DB_REUSE_MAX=10)
        fixup.on_task_prerun(task())
        assert conn.connection is None

    def test_failed_task_closes_between_periodic_closes(self, app):
        conn = FakeConnection()
        fixup = make_fixup(app, conn, CELERY_DB_REUSE_MAX=10)
        fixup.on_task_postrun(task(), state='FAILURE')
        assert conn.connection is None


class test_health_checks(object):

    def test_kept_connection_is_checked_on_first_use(self, app):
        conn = FakeConnection(usable=True)
        fixup = make_fixup(app, conn)
        fixup.role = POOL_CHILD
        fixup.on_task_prerun(task())
        del conn.calls[:]
        conn.ensure_connection()
        conn.ensure_connection()
        assert conn.calls == ['is_usable', 'ensure_connection', 'ensure_connection']

    def test_broken_connection_is_replaced_before_the_task_uses_it(self, app):
        conn = FakeConnection(usable=False)
        old = conn.connection
        fixup = make_fixup(app, conn)
        fixup.role = POOL_CHILD
        fixup.on_task_prerun(task())
        conn.ensure_connection()
        assert conn.connection is not None and conn.connection is not old
        assert conn.calls[-3:] == ['is_usable', 'close', 'ensure_connection']

    def test_task_that_never_uses_the_database_costs_no_check(self, app):
        conn = FakeConnection(usable=False)
        fixup = make_fixup(app, conn)
        fixup.role = POOL_CHILD
        fixup.on_task_prerun(task())
        fixup.on_task_postrun(task(), state='SUCCESS')
        assert 'is_usable' not in conn.calls
        assert 'ensure_connection' not in vars(conn)

    def test_new_connection_is_not_checked(self, app):
        conn = FakeConnection(connected=False)
        fixup = make_fixup(app, conn)
        fixup.role = POOL_CHILD
        fixup.on_task_prerun(task())
        conn.ensure_connection()
        assert conn.calls == ['close_if_unusable_or_obsolete', 'ensure_connection']

    def test_setting_turns_it_off(self, app):
        conn = FakeConnection(usable=False)
        fixup = make_fixup(app, conn, CELERY_DB_HEALTH_CHECKS=False)
        fixup.role = POOL_CHILD
        fixup.on_task_prerun(task())
        conn.ensure_connection()
        assert 'is_usable' not in conn.calls

    def test_tasks_in_the_main_process_check_before_every_use(self, app):
        # The solo and threads pools: the main process's rule.
        conn = FakeConnection(usable=True)
        fixup = make_fixup(app, conn)
        fixup.on_task_prerun(task())
        del conn.calls[:]
        conn.ensure_connection()
        conn.ensure_connection()
        assert conn.calls == ['is_usable', 'ensure_connection'] * 2
        fixup.on_task_postrun(task(), state='SUCCESS')
        assert fixup.health_check.is_armed(conn)

    def test_never_closes_inside_an_atomic_block(self, app):
        conn = FakeConnection(usable=False)
        fixup = make_fixup(app, conn)
        fixup.role = POOL_CHILD
        fixup.on_task_prerun(task())
        conn.in_atomic_block = True
        conn.ensure_connection()
        assert 'close' not in conn.calls


def test_every_override_says_why():
    import inspect
    from celery_django_fixup.worker import OVERRIDES
    original = upstream_class()
    # Every method upstream has that the class overrides, and every public one it adds.
    methods = set(name for name, value in vars(DjangoWorkerFixup).items()
                  if inspect.isfunction(value) and
                  (name in vars(original) or not name.startswith('_')))
    assert methods == set(OVERRIDES)
