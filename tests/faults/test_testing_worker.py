"""Celery's testing worker (``celery.contrib.testing.worker.start_worker``, what pytest's
``celery_worker`` fixture runs) started inside a Django ``TestCase``.

The worker is built in the test's thread, inside the ``TestCase``'s transaction, and its
Django fix-up is installed there: whatever the fix-up's ``install()`` closes is the test's own
connection. The test (``cdf_demo.testingworker``, in a subprocess, against a scratch
PostgreSQL database) writes a row, runs a task on the worker, writes another row, and a later
test writes a third; every row must be rolled back.

- Stock Celery, every 4.x line: ``install()`` closes the connection inside the ``atomic``
  block; Django then refuses it (``InterfaceError: connection already closed``) for the rest of
  the test; nothing is committed.
- A fix-up that resets the connection there (a forced close that drops the wrapper's
  transaction state) lets the test go on in autocommit on a new connection: its later rows are
  committed, and leaving the block raises ``TransactionManagementError``.
- What must happen: the connection inside a live ``atomic`` block is left alone; nothing is
  committed and no test errors.
"""
from __future__ import absolute_import

import json
import subprocess
import sys

import pytest

from celery_django_fixup.harness import run

pytestmark = pytest.mark.faults

TIMEOUT = 120.0


def run_testcase(url, mode):
    environ = run.demo_environ(url, mode=mode, conn_max_age=600)
    proc = subprocess.Popen([sys.executable, '-m', 'cdf_demo.testingworker'], env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # pytest's timeout is not installed here: a hung subprocess is killed by the deadline.
    output = run._communicate(proc, TIMEOUT)
    errors = proc.stderr.read().decode('utf-8', 'replace')
    lines = [line for line in output.splitlines() if line.startswith('{')]
    assert proc.returncode == 0 and lines, 'exit {0}\n{1}\n{2}'.format(
        proc.returncode, output, errors[-3000:])
    return json.loads(lines[-1]), errors


def test_testing_worker_in_testcase(variant, pg_db, record):
    report, log = run_testcase(pg_db.url, 'stock' if variant == 'stock' else 'fixups')
    errors = [error['error'] for error in report['errors']]
    facts = record('testing_worker', variant, database='postgresql',
                   committed=len(report['committed']),
                   transaction_errors=sum('TransactionManagementError' in e for e in errors),
                   interface_errors=sum('InterfaceError' in e for e in errors),
                   failed=len(errors), task_ok=report.get('task') == 1)
    context = 'facts: {0}\nreport: {1}\nstderr:\n{2}'.format(
        json.dumps(facts, sort_keys=True), json.dumps(report, sort_keys=True), log[-3000:])

    expected = ('celery_django_fixup.worker.DjangoWorkerFixup' if variant == 'patched'
                else 'celery.fixups.django.DjangoWorkerFixup')
    assert report.get('worker_fixup') == expected, context
    assert report['tests_run'] == 2, context
    # Whatever the fix-up, no row may outlive the TestCase: the other outcomes differ.
    if variant == 'patched':
        assert report.get('task') == 1, context
        assert not errors, context
        assert report['committed'] == [], context
        assert report['after_worker'] == {'in_atomic_block': True, 'rows_seen': 2}, context
        assert report['later'] == {'in_atomic_block': True, 'autocommit': False}, context
    else:
        # Every stock line closes the test's connection in install(): the test fails on its next
        # query (psycopg2: InterfaceError; psycopg 3: OperationalError, "the connection is
        # closed"), and nothing is committed.
        assert any('InterfaceError' in error or 'connection is closed' in error
                   for error in errors), context
        assert report['committed'] == [], context
