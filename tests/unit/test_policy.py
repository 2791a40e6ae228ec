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


@pytest.mark.parametrize('state,succeeded', [
    ('SUCCESS', True), (None, True), ('FAILURE', False), ('RETRY', False),
    ('REVOKED', False), ('IGNORED', False), ('REJECTED', False),
])
def test_task_succeeded(state, succeeded):
    assert policy.task_succeeded(state) is succeeded


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
