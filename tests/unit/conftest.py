"""Fixtures for the unit tests: a configured Django (SQLite) and no leaked global state."""
from __future__ import absolute_import

import atexit
import os
import shutil
import tempfile
import warnings
import weakref

import pytest

import sys

from celery import Celery, _state, signals
from celery.fixups import django as upstream

from celery_django_fixup import patch

try:
    from unittest import mock
except ImportError:  # Python 2
    import mock  # noqa: F401


def _configure_django():
    from django.conf import settings
    if not settings.configured:
        # Files, not ':memory:': Django never closes an in-memory SQLite connection.
        folder = tempfile.mkdtemp(prefix='celery-django-fixup-')
        atexit.register(shutil.rmtree, folder, True)
        settings.configure(
            DEBUG=False,
            USE_TZ=True,
            INSTALLED_APPS=[],
            DATABASES={
                'default': {'ENGINE': 'django.db.backends.sqlite3',
                            'NAME': os.path.join(folder, 'default.sqlite3')},
                'other': {'ENGINE': 'django.db.backends.sqlite3',
                          'NAME': os.path.join(folder, 'other.sqlite3')},
            },
        )
        import django
        django.setup()


_configure_django()

_SIGNALS = ('worker_init', 'worker_ready', 'worker_process_init', 'beat_embedded_init',
            'task_prerun', 'task_postrun', 'import_modules')


def _upstream_fixup_receiver(entry):
    """A receiver Celery's own ``DjangoFixup`` connected for an app a test created (Celery
    5.7 connects them per app, with a dispatch_uid of its own): Celery's, not a leak of ours."""
    key, ref = entry[0], entry[1]
    uid = key[0] if isinstance(key, tuple) else key
    if isinstance(uid, tuple) and uid and str(uid[0]).startswith('celery.fixups.django'):
        return True
    target = ref() if isinstance(ref, weakref.ref) else ref
    owner = getattr(target, '__self__', None)
    return isinstance(owner, upstream.DjangoFixup)


def _receivers():
    return dict((name, [entry for entry in getattr(signals, name).receivers
                        if not _upstream_fixup_receiver(entry)])
                for name in _SIGNALS)


@pytest.fixture(autouse=True)
def no_global_state():
    """Every test leaves Celery's module, our saved originals and the signals as it found them."""
    bound = upstream.DjangoWorkerFixup
    saved = dict(patch._saved)
    receivers = _receivers()
    default_app, path = _state.default_app, list(sys.path)
    yield
    # DjangoFixup sets a default app and puts the working directory on sys.path.
    _state.default_app = default_app
    sys.path[:] = path
    after = _receivers()
    upstream.DjangoWorkerFixup = bound
    patch._saved.clear()
    patch._saved.update(saved)
    for name in _SIGNALS:
        signal = getattr(signals, name)
        signal.receivers[:] = receivers[name]
        if hasattr(signal, 'sender_receivers_cache'):
            signal.sender_receivers_cache.clear()
    assert after == receivers, 'a test left signal receivers connected'


@pytest.fixture
def app():
    app = Celery('tests', set_as_current=False, fixups=[])
    yield app
    app.close()


@pytest.fixture
def recwarnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        yield caught
