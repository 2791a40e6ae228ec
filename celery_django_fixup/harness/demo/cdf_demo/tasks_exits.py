"""Tasks that keep a pool process busy after a query, so that the pool grows (autoscale)."""
from __future__ import absolute_import

import os
import time

from django.db import connections

from cdf_demo.celeryapp import app, backend_id


@app.task(name='cdf_demo.touch_sleep')
def touch_sleep(seconds=3.0, alias='default'):
    """One query, then ``seconds`` of sleep with the connection kept."""
    backend = backend_id(connections[alias])
    time.sleep(seconds)
    return {'pid': os.getpid(), 'alias': alias, 'backend': backend}
