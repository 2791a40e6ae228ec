"""A result backend for the demo whose store is interrupted once.

Set ``result_backend`` (``CDF_SETTINGS_JSON``) to
``cdf_demo.results_policy:InterruptedStoreBackend+redis://HOST:PORT/DB``: Celery's Redis
backend, except that storing the success of a task whose result carries
``tasks_policy.INTERRUPT_STORE`` raises ``SoftTimeLimitExceeded``, as a soft time limit that
fires while a database result backend (django-celery-results) writes does. The task's body has
returned: ``task_postrun`` says ``SUCCESS``, then Celery reports an internal error and stores the
task's failure (that store goes through).
"""
from __future__ import absolute_import

import os

from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import SoftTimeLimitExceeded

#: Must match ``cdf_demo.tasks_policy.INTERRUPT_STORE`` (not imported: this module is loaded
#: when the app creates its backend, which may be before Django is set up).
INTERRUPT_STORE = 'cdf-interrupt-store'


class InterruptedStoreBackend(RedisBackend):

    def store_result(self, task_id, result, state, *args, **kwargs):
        if state == states.SUCCESS and isinstance(result, dict) and \
                result.get('marker') == INTERRUPT_STORE:
            raise SoftTimeLimitExceeded('result store interrupted, backend={0} pid={1}'.format(
                result.get('backend'), os.getpid()))
        return super(InterruptedStoreBackend, self).store_result(
            task_id, result, state, *args, **kwargs)
