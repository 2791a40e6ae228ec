"""When a connection may be kept, and which pools keep connections."""
from __future__ import absolute_import

import pytest

from celery_django_fixup import policy

from fakes import FakeConnection


class test_reason_to_discard(object):

    def test_healthy_connection_may_be_kept(self):
        assert policy.reason_to_discard(FakeConnection()) is None

    def test_closed_connection_needs_nothing(self):
        conn = FakeConnection(connected=False)
        conn.needs_rollback = True
        assert policy.reason_to_discard(conn) is None

    @pytest.mark.parametrize('attribute,reason', [
        ('in_atomic_block', 'atomic'),
        ('closed_in_transaction', 'atomic'),
        ('needs_rollback', 'rollback'),
    ])
    def test_transaction_state(self, attribute, reason):
        conn = FakeConnection()
        setattr(conn, attribute, True)
        assert reason in policy.reason_to_discard(conn)

    def test_autocommit_not_restored(self):
        assert 'autocommit' in policy.reason_to_discard(FakeConnection(autocommit=False))

    def test_no_database_round_trip(self):
        conn = FakeConnection()
        conn.errors_occurred = True
        policy.reason_to_discard(conn)
        assert conn.calls == []


@pytest.mark.parametrize('state,kept', [
    ('SUCCESS', True), (None, False), ('FAILURE', False), ('RETRY', False),
    ('REVOKED', False), ('IGNORED', False), ('REJECTED', False),
])
def test_only_a_task_that_succeeded_keeps_its_connections(state, kept):
    assert (policy.reason_to_discard_after_task(state) is None) is kept


def test_no_state_is_not_a_success():
    # Celery sends None when the task raised a BaseException or its error handling failed.
    assert 'None' in policy.reason_to_discard_after_task(None)


def test_success_with_an_exception_past_postrun_is_not_kept():
    # The body returned (SUCCESS), then storing the result raised.
    reason = policy.reason_to_discard_after_task('SUCCESS', exception=KeyError('x'))
    assert 'KeyError' in reason


def test_success_after_a_soft_time_limit_is_not_kept():
    assert 'soft time limit' in policy.reason_to_discard_after_task('SUCCESS', interrupted=True)


def test_greenlets_keep_no_connection_of_their_own():
    assert policy.reason_to_discard_after_green_task(pooled=False)


def test_greenlets_may_return_a_pooled_connection():
    assert policy.reason_to_discard_after_green_task(pooled=True) is None


@pytest.mark.parametrize('pool,green', [
    ('eventlet', True), ('gevent', True), ('prefork', False), ('processes', False),
    ('solo', False), ('threads', False), (None, False),
    ('celery.concurrency.solo:TaskPool', False), ('no.such.module:Pool', False),
])
def test_is_green_pool_by_name(pool, green):
    assert policy.is_green_pool(pool) is green


def test_is_green_pool_by_class():
    from celery.concurrency import solo, prefork
    assert policy.is_green_pool(solo.TaskPool) is False
    assert policy.is_green_pool(prefork.TaskPool) is False
    assert policy.is_green_pool(type('Green', (object,), {'is_green': True})) is True
