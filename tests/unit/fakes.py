"""A stand-in for a Django connection wrapper that records what was done to it."""
from __future__ import absolute_import


class FakeConnection(object):
    """Has the attributes and methods of ``BaseDatabaseWrapper`` the fix-up relies on."""

    def __init__(self, alias='default', connected=True, usable=True, autocommit=True,
                 close_raises=None):
        self.alias = alias
        self.settings_dict = {'AUTOCOMMIT': True, 'CONN_MAX_AGE': 600}
        self.connection = FakeDbapiConnection() if connected else None
        self.autocommit = autocommit
        self.in_atomic_block = False
        self.closed_in_transaction = False
        self.needs_rollback = False
        self.errors_occurred = False
        self.savepoint_ids = []
        self.commit_on_exit = True
        self.usable = usable
        self.close_raises = close_raises
        self.calls = []

    def close(self):
        # Django's close(), reduced to what the fix-up depends on.
        self.calls.append('close')
        if self.closed_in_transaction or self.connection is None:
            return
        try:
            if self.close_raises is not None:
                raise self.close_raises
        finally:
            if self.in_atomic_block:
                self.closed_in_transaction = True
                self.needs_rollback = True
            else:
                self.connection = None

    def close_if_unusable_or_obsolete(self):
        self.calls.append('close_if_unusable_or_obsolete')
        if self.close_raises is not None:
            raise self.close_raises

    def is_usable(self):
        self.calls.append('is_usable')
        return self.usable

    def ensure_connection(self):
        self.calls.append('ensure_connection')
        if self.connection is None:
            self.connection = FakeDbapiConnection()


class FakeDbapiConnection(object):
    fd = 1000
    closed = 0

    def fileno(self):
        return self.fd

    def close(self):
        self.closed = 1


class FakeConnectionHandler(object):
    def __init__(self, *conns):
        self.conns = list(conns)

    def all(self, initialized_only=False):
        return list(self.conns)
