"""pytest plugin for the run of Celery's own ``t/unit/fixups/test_django.py`` (a subprocess).

Loaded with ``-p cdf_upstream_plugin`` by ``test_upstream_contract.py``; the environment says
what to do:

``CDF_UPSTREAM_VARIANT``
    ``upstream``: Celery's ``DjangoWorkerFixup`` as released (proves the machinery: every test
    must pass). ``patched``: celery-django-fixup's patch is installed before the test module is
    imported, so ``from celery.fixups.django import DjangoWorkerFixup`` in it, and every
    ``DjangoWorkerFixup`` Celery's ``DjangoFixup`` creates, is the patched class.
``CDF_UPSTREAM_RELEASE``
    the Celery release whose tests run; with ``patched``, the deviations listed for it in
    ``upstream_deviations.py`` are marked as strict expected failures, with their reasons.
``CDF_UPSTREAM_RESULTS``
    a file to write each test's outcome to (JSON), for the calling test's report.
"""
from __future__ import absolute_import

import json
import os
import warnings

import pytest

import upstream_deviations

#: The markers of Celery's own pytest configuration that test_django.py uses.
MARKERS = (
    'masked_modules: modules that cannot be imported during the test',
    'patched_module: modules replaced by mocks during the test',
    'patched_environ: an environment variable set during the test',
    'sleepdeprived_patched_module: a module whose sleep() does nothing',
    'flaky: retried upstream',
    'timeout: time limit upstream',
    'amqp: needs an AMQP broker upstream',
)

_outcomes = {}


def _variant():
    variant = os.environ.get('CDF_UPSTREAM_VARIANT', '')
    if variant not in ('upstream', 'patched'):
        raise pytest.UsageError(
            'CDF_UPSTREAM_VARIANT must be "upstream" or "patched", not {0!r}'.format(variant))
    return variant


def pytest_configure(config):
    for line in MARKERS:
        config.addinivalue_line('markers', line)
    if _variant() != 'patched':
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        import celery_django_fixup
        installed = celery_django_fixup.install()
    if not installed or not celery_django_fixup.is_patched():
        reasons = []
        for warning in caught:
            if str(warning.message) not in reasons:
                reasons.append(str(warning.message))
        raise pytest.UsageError(
            'celery-django-fixup did not install its patch, so the patched class cannot be '
            'tested: {0}'.format(' '.join(reasons) or 'no reason given'))


@pytest.fixture(autouse=True)
def cdf_settings_in_app_conf(request):
    """Patched variant: the two settings of the patched class, at their defaults, in the test's
    app configuration.

    The patched class reads ``CELERY_DB_REUSE_MAX`` and ``CELERY_DB_HEALTH_CHECKS`` from the
    app's configuration, then from Django's settings, and validates them in ``__init__``.
    Celery's tests replace Django's settings by a ``MagicMock`` (they patch ``symbol_by_name``),
    whose every attribute is a ``MagicMock``: an invalid value. Set in the app's configuration,
    the defaults (``None``, ``True``) are found first and the mock is never read. Tests that
    assign ``app.conf`` themselves get no such help.
    """
    if _variant() == 'patched' and request.instance is not None:
        app = request.getfixturevalue('app')
        app.conf['CELERY_DB_REUSE_MAX'] = None
        app.conf['CELERY_DB_HEALTH_CHECKS'] = True
    yield


def _short_id(item):
    """``test_DjangoWorkerFixup::test_install``: the node id without the file part."""
    return item.nodeid.split('::', 1)[1]


def _deviation(entry):
    """(reason, exception classes) of an entry of ``upstream_deviations.DEVIATIONS``."""
    if isinstance(entry, tuple):
        reason, names = entry[0], entry[1:]
    else:
        reason, names = entry, ()
    from celery_django_fixup import exceptions
    raises = (AssertionError, pytest.fail.Exception) + tuple(
        getattr(exceptions, name) for name in names)
    return reason, raises


def pytest_collection_modifyitems(session, config, items):
    if _variant() != 'patched':
        return
    release = os.environ.get('CDF_UPSTREAM_RELEASE', '')
    expected = upstream_deviations.DEVIATIONS.get(release)
    if expected is None:
        raise pytest.UsageError(
            'no deviation list for Celery {0!r} in upstream_deviations.py'.format(release))
    collected = set()
    for item in items:
        test_id = _short_id(item)
        collected.add(test_id)
        if test_id in expected:
            reason, raises = _deviation(expected[test_id])
            item.add_marker(pytest.mark.xfail(reason=reason, raises=raises, strict=True))
    stale = sorted(set(expected) - collected)
    if stale:
        raise pytest.UsageError(
            'upstream_deviations.py lists tests that Celery {0} does not have: {1}'.format(
                release, ', '.join(stale)))


def pytest_runtest_logreport(report):
    test_id = report.nodeid.split('::', 1)[-1]
    if report.when == 'call':
        if hasattr(report, 'wasxfail'):
            outcome = 'xpassed' if report.passed else 'xfailed'
        elif report.failed and 'XPASS(strict)' in str(report.longrepr):
            outcome = 'xpassed(strict)'
        else:
            outcome = report.outcome
        _outcomes.setdefault(test_id, outcome)
    elif report.skipped:
        _outcomes[test_id] = 'skipped'
    elif report.failed:
        _outcomes[test_id] = 'error in ' + report.when


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get('CDF_UPSTREAM_RESULTS')
    if path:
        with open(path, 'w') as fh:
            json.dump(_outcomes, fh, indent=1, sort_keys=True)
