"""Database backends whose ``close()`` raises after it has closed the connection.

``ENGINE: 'cdf_demo.closeraises.postgresql'`` (or ``.mysql``) is Django's own backend, except
that closing a connection ends the session and then raises a ``DatabaseError`` that says
nothing of "closed", as a driver does when the server or the network fails during the close.
Celery's fix-up tolerates only errors whose message mentions "closed" or "not connected": any
other one stops its loop over the aliases, and the aliases after the failing one are then
never closed. The fault suite uses these backends to show that, and that the patched fix-up
closes the other aliases all the same.
"""
from __future__ import absolute_import

import contextlib

from django.db.utils import OperationalError

#: What the raised error says (no "closed", no "not connected": Celery would ignore those).
MESSAGE = 'the server failed during close (raised on purpose by cdf_demo.closeraises)'


def wrapper_class(base):
    """A subclass of the ``DatabaseWrapper`` class ``base`` whose close raises."""

    class DatabaseWrapper(base):

        #: Depth of temporary_connection() blocks (Django nests them while connecting).
        _cdf_quiet_close = 0

        def _close(self):
            # The session really ends: only the error is made up.
            super(DatabaseWrapper, self)._close()
            if not self._cdf_quiet_close:
                raise OperationalError(MESSAGE)

        @contextlib.contextmanager
        def temporary_connection(self):
            # Django's own short-lived connections (Django 6.1's MySQL backend opens one at
            # start to read the server's version) close quietly: only the worker's closes raise.
            self._cdf_quiet_close += 1
            try:
                with super(DatabaseWrapper, self).temporary_connection() as cursor:
                    yield cursor
            finally:
                self._cdf_quiet_close -= 1

    return DatabaseWrapper
