"""Tasks whose outcome the worker's main process stores, not the pool process that ran them.

With a database result backend (``CDF_RESULT_BACKEND=django-db``) the main process writes
through Django itself when a pool process cannot: the failure of a task killed by its hard
time limit (``Request.on_timeout``) and of a task whose process died (``WorkerLostError``).
Neither task touches the database.
"""
from __future__ import absolute_import

import os
import signal
import time

from cdf_demo.celeryapp import app


@app.task(name='cdf_demo.hard_limited', time_limit=1)
def hard_limited(seconds=3.0):
    """Outlives its hard time limit (1 s): the pool kills its process."""
    time.sleep(seconds)
    return {'pid': os.getpid()}


@app.task(name='cdf_demo.lost')
def lost():
    """Kills its own process: the main process records a ``WorkerLostError``."""
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)
