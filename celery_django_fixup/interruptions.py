"""Whether a soft time limit was delivered during a task, even one the task caught.

A prefork pool process gets its soft time limit as a signal (``SIGUSR1``), whose handler
raises ``SoftTimeLimitExceeded`` wherever the task happens to be: possibly in the middle of a
driver's exchange with the server, leaving unread data on the socket (a pure-Python driver
such as PyMySQL) or a connection Django believes healthy (Django ticket 30646). A task may
catch the exception and return normally. :class:`SoftTimeLimitWatch` wraps the handler
billiard installs, and tells afterwards whether it ran.
"""
from __future__ import absolute_import

import signal

__all__ = ('SoftTimeLimitWatch',)

#: The signal billiard delivers soft time limits with (none on Windows).
SIG_SOFT_TIMEOUT = getattr(signal, 'SIGUSR1', None)


class SoftTimeLimitWatch(object):

    def __init__(self):
        self.fired = False

    def start(self):
        """Watch from now on; call before each task (cheap when already watching).

        billiard installs its handler after ``worker_process_init``, so this is done at the
        first task. Only the main thread can set a handler: elsewhere (no prefork) nothing is
        delivered this way and nothing is watched.
        """
        self.fired = False
        if SIG_SOFT_TIMEOUT is None:
            return
        current = signal.getsignal(SIG_SOFT_TIMEOUT)
        if getattr(current, 'watch', None) is self or not callable(current):
            return

        def handler(signum, frame):
            self.fired = True
            return current(signum, frame)

        handler.watch = self
        try:
            signal.signal(SIG_SOFT_TIMEOUT, handler)
        except ValueError:  # not the main thread
            pass
