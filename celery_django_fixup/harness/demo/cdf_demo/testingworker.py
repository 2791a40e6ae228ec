"""Celery's testing worker inside a Django ``TestCase``, as pytest's ``celery_worker`` fixture
and ``celery.contrib.testing.worker.start_worker`` are used in projects' test suites.

``python -m cdf_demo.testingworker``, with the environment a demo worker gets
(``CDF_DATABASE_URL``...; ``CDF_MODE`` ``stock`` or ``fixups``). It runs, on the configured
database itself (no test database is created: the demo table must exist), one ``TestCase``:

1. ``test_1_worker`` writes a row, starts the testing worker (solo pool, in a thread, memory
   broker; the worker is built in the test's thread, inside the test's transaction), runs one
   task that queries, stops the worker and writes a second row;
2. ``test_2_later`` checks it is still inside the ``TestCase``'s transaction and writes a
   third row.

Every row the tests write must be rolled back. It prints one JSON line: ``errors`` (each
test's error, ``ExcType: message`` of its last exception, and where it was raised),
``committed`` (rows of the tests found in the table afterwards, from a new connection; they
are deleted then), and what the tests saw (``task``, ``after_worker``, ``later``).
"""
from __future__ import absolute_import, print_function

import json
import os
import sys
import traceback
import unittest

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'cdf_demo.settings')

import django  # noqa: E402

django.setup()

from celery import Celery  # noqa: E402
from django.db import connection, connections  # noqa: E402
from django.test import TestCase  # noqa: E402

import celery.contrib.testing.tasks  # noqa: E402,F401 -- celery.ping, which start_worker needs
from celery.contrib.testing.worker import start_worker  # noqa: E402
from cdf_demo.models import Item  # noqa: E402
from cdf_demo.whichfixup import worker_fixup_class  # noqa: E402

MARK = 'cdf-testing-worker'
MODE = os.environ.get('CDF_MODE', 'fixups')

if MODE == 'fixups':
    app = Celery('cdf_testing', fixups=['celery_django_fixup:fixup'], set_as_current=False)
elif MODE == 'stock':
    if 'celery_django_fixup' in sys.modules:
        raise RuntimeError('CDF_MODE=stock but celery_django_fixup was imported')
    app = Celery('cdf_testing', set_as_current=False)
else:
    raise ValueError('CDF_MODE must be stock or fixups, not {0!r}'.format(MODE))
app.conf.update(broker_url='memory://', result_backend='cache+memory://',
                worker_hijack_root_logger=False)

SEEN = {}


@app.task(name='cdf_testing.query')
def query():
    with connection.cursor() as cursor:
        cursor.execute('SELECT 1')
        return cursor.fetchone()[0]


class WorkerInTestCase(TestCase):

    def test_1_worker(self):
        Item.objects.create(name=MARK, value=1)
        with start_worker(app, perform_ping_check=False):
            SEEN['task'] = query.delay().get(timeout=30)
        SEEN['worker_fixup'] = worker_fixup_class(app)
        SEEN['after_worker'] = {'in_atomic_block': connection.in_atomic_block}
        Item.objects.create(name=MARK, value=2)
        SEEN['after_worker']['rows_seen'] = Item.objects.filter(name=MARK).count()

    def test_2_later(self):
        SEEN['later'] = {'in_atomic_block': connection.in_atomic_block,
                         'autocommit': connection.get_autocommit()}
        Item.objects.create(name=MARK, value=3)


class Result(unittest.TextTestResult):
    """Keeps each error's last exception line and where it was raised."""

    def __init__(self, *args, **kwargs):
        super(Result, self).__init__(*args, **kwargs)
        self.found = []

    def _keep(self, test, err):
        exc_type, exc, tb = err
        where = traceback.extract_tb(tb)[-1] if tb is not None else None
        self.found.append({
            # An error of setUpClass/tearDownClass comes with a description, not a test id.
            'test': getattr(test, 'description', None) or test.id().rsplit('.', 1)[-1],
            'error': '{0}: {1}'.format(exc_type.__name__, str(exc).strip()),
            'where': '{0}:{1}'.format(os.path.basename(where[0]), where[1]) if where else None,
        })

    def addError(self, test, err):
        super(Result, self).addError(test, err)
        self._keep(test, err)

    def addFailure(self, test, err):
        super(Result, self).addFailure(test, err)
        self._keep(test, err)


def main():
    suite = unittest.TestLoader().loadTestsFromTestCase(WorkerInTestCase)
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2, resultclass=Result)
    result = runner.run(suite)
    for conn in connections.all():
        try:
            conn.close()
        except Exception:  # noqa: B902 -- a broken one is replaced below all the same
            pass
        conn.connection = None
        conn.in_atomic_block = False
        conn.needs_rollback = False
    committed = sorted(Item.objects.filter(name=MARK).values_list('value', flat=True))
    Item.objects.filter(name=MARK).delete()
    report = {'errors': result.found, 'tests_run': result.testsRun, 'committed': committed,
              'mode': MODE}
    report.update(SEEN)
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == '__main__':
    sys.exit(main())
