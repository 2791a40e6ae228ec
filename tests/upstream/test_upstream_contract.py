"""Celery's own contract for ``DjangoWorkerFixup``: its unit tests, run against our class.

The installed Celery release's ``t/unit/fixups/test_django.py`` (see conftest.py) runs twice in
a pytest subprocess:

- against Celery's own class: every test must pass, or the machinery itself is broken;
- with celery-django-fixup installed before the file is imported: every test must pass except
  the deviations listed for that release in ``upstream_deviations.py`` (the rules where the
  README deliberately differs from Celery), which must fail (strict expected failures: a listed
  test that passes fails the run, and so does a listed test the release does not have).
"""
from __future__ import absolute_import

import io
import json
import os

import pytest

import upstream_deviations


def _outcomes(results_file):
    if not os.path.isfile(results_file):
        return {}
    with io.open(results_file, encoding='utf-8') as fh:
        return json.load(fh)


def _report(title, outcomes, output):
    lines = [title]
    for test_id in sorted(outcomes):
        lines.append('  {0:<16} {1}'.format(outcomes[test_id], test_id))
    lines.append('--- pytest output (last 6000 characters) ---')
    lines.append(output[-6000:])
    return '\n'.join(lines)


@pytest.mark.parametrize('variant', ['upstream', 'patched'])
def test_celery_unit_tests_of_the_django_fixup(upstream_tests, variant, tmp_path):
    results_file = str(tmp_path / 'outcomes.json')
    status, output = upstream_tests.run(variant, results_file)
    outcomes = _outcomes(results_file)
    title = 'Celery {0} t/unit/fixups/test_django.py against the {1} class: exit status {2}'.format(
        upstream_tests.release, variant, status)
    print(_report(title, outcomes, output))
    assert outcomes, _report(title + ': no test ran', outcomes, output)

    expected = {}
    if variant == 'patched':
        expected = dict((test_id, 'xfailed') for test_id in
                        upstream_deviations.DEVIATIONS[upstream_tests.release])
    wrong = dict((test_id, outcome) for test_id, outcome in outcomes.items()
                 if outcome != expected.get(test_id, 'passed'))
    assert not wrong and status == 0, _report(
        title + ': not as expected: ' + ', '.join(
            '{0} {1}'.format(test_id, outcome) for test_id, outcome in sorted(wrong.items())),
        outcomes, output)
    assert set(expected) <= set(outcomes)
