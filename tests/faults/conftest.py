"""Fixtures of the fault suite: each scenario runs on the stock and on the patched fix-up.

Every scenario reports what it measured with ``record(scenario, variant, **facts)``. With
``CDF_RESULTS_DIR`` set, each record is appended as one JSON line to
``$CDF_RESULTS_DIR/<celery version>-<python>.jsonl``; ``scripts/reliability_table.py`` turns
those files into the README's Reliability table. Records are facts measured on the servers and
processes (failed tasks, sessions opened, whether the worker hung), never the package's own
counters.
"""
from __future__ import absolute_import

import json
import os
import platform

import pytest

from celery_django_fixup import versions

#: The fix-ups each scenario runs on: Celery's own, and ours.
VARIANTS = ('stock', 'patched')


@pytest.fixture(params=VARIANTS)
def variant(request):
    return request.param


def mode_of(variant):
    """The demo worker's mode for a variant."""
    return 'stock' if variant == 'stock' else 'fixups'


@pytest.fixture
def line():
    found = versions.line_for()
    assert found is not None, 'the fault suite needs a supported Celery'
    return found


@pytest.fixture(scope='session')
def record():
    folder = os.environ.get('CDF_RESULTS_DIR')
    celery_version = '.'.join(str(part) for part in versions.celery_version())
    path = None
    if folder:
        if not os.path.isdir(folder):
            os.makedirs(folder)
        path = os.path.join(folder, 'celery-{0}-py{1}.jsonl'.format(
            celery_version, '.'.join(platform.python_version_tuple()[:2])))

    def write(scenario, variant, **facts):
        facts.update(scenario=scenario, variant=variant, celery=celery_version,
                     python=platform.python_version())
        if path is not None:
            with open(path, 'a') as fh:
                fh.write(json.dumps(facts, sort_keys=True) + '\n')
        return facts

    return write
