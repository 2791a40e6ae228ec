"""A task that runs on every pool process at once: ``cdf_demo.meet``.

Which pool process takes a task is the worker's choice. A test that needs a task on each
process (the first task after every process's connection was ended, say) sends one ``meet``
task per process: each waits, before it does anything else, until as many ``meet`` tasks of its
group run at the same time in distinct processes, and then runs the body of the task it
names, in its own process. With the ``fair`` scheduling strategy (``-O fair``: a busy process
is handed no task), a process that waits takes no other ``meet`` task, so the group is spread
over the processes whatever the worker's order.

The group is a folder (shared by the processes of one worker on one machine); each task
writes a file named after its pid in it and waits for ``parties`` distinct files.
"""
from __future__ import absolute_import

import errno
import os
import time

from cdf_demo.celeryapp import app


class MeetError(Exception):
    """Not every process of the group came within the time given."""


def _arrive(folder):
    try:
        os.makedirs(folder)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise
    with open(os.path.join(folder, str(os.getpid())), 'w'):
        pass


@app.task(name='cdf_demo.meet')
def meet(folder, parties, task='cdf_demo.probe', kwargs=None, timeout=60.0):
    """Wait until ``parties`` processes run a ``meet`` of ``folder``, then run ``task``'s body
    with ``kwargs`` here and return what it returns (or raise what it raises)."""
    _arrive(folder)
    deadline = time.time() + timeout
    while True:
        arrived = len(os.listdir(folder))
        if arrived >= parties:
            break
        if time.time() > deadline:
            raise MeetError('{0} of {1} processes met within {2} s pid={3}'.format(
                arrived, parties, timeout, os.getpid()))
        time.sleep(0.01)
    return app.tasks[task].run(**(kwargs or {}))
