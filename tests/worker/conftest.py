"""Fixtures of the worker tests: real workers of the demo project, always stopped."""
from __future__ import absolute_import

import pytest

PATCHED = 'celery_django_fixup.worker.DjangoWorkerFixup'
STOCK = 'celery.fixups.django.DjangoWorkerFixup'


@pytest.fixture
def start_worker(pg_db, broker):
    """``start_worker(**Worker kwargs)``: a started worker on the scratch database.

    Checks that the worker really runs the fix-up its mode stands for, so that a test of the
    patched worker cannot pass on Celery's own class or the other way round.
    """
    from celery_django_fixup.harness import run
    workers = []

    def start(**kwargs):
        kwargs.setdefault('broker', broker)
        worker = run.Worker(pg_db.url, **kwargs)
        workers.append(worker)
        worker.start(timeout=60)
        expected = STOCK if worker.mode == 'stock' else PATCHED
        assert worker.info['worker_fixup'] == expected, worker.info
        return worker

    yield start
    for worker in workers:
        worker.close()


@pytest.fixture
def line():
    """The Celery line installed (``celery_django_fixup.versions.CeleryLine``)."""
    from celery_django_fixup import versions
    found = versions.line_for()
    assert found is not None, 'the worker tests need a supported Celery'
    return found
