"""Activation: install/uninstall, the fixups= entry point, version guard, late activation."""
from __future__ import absolute_import

import os
import subprocess
import sys
import warnings

import pytest

from celery import Celery, signals
from celery.fixups import django as upstream

import celery_django_fixup
from celery_django_fixup import versions
from celery_django_fixup.worker import upstream_class
from celery_django_fixup import (DjangoWorkerFixup, LateActivationWarning,
                                 UnsupportedVersionWarning, patch)

try:
    from unittest import mock
except ImportError:  # Python 2
    import mock


@pytest.fixture
def clean():
    """Start from Celery's own class, as a process that never imported us would."""
    patch.uninstall()
    assert upstream.DjangoWorkerFixup is patch.get_original()
    yield
    patch.uninstall()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # apps the test made early would warn: not the point
        patch.install()


@pytest.fixture
def django_env():
    with mock.patch.dict(os.environ, {'DJANGO_SETTINGS_MODULE': 'proj.settings'}):
        yield


def django_fixups(app):
    return [f for f in app._fixups if isinstance(f, upstream.DjangoFixup)]


class test_install(object):

    def test_import_installs(self):
        assert celery_django_fixup.is_patched()
        assert upstream.DjangoWorkerFixup is DjangoWorkerFixup

    def test_install_twice_then_uninstall_restores(self, clean):
        original = upstream.DjangoWorkerFixup
        assert not patch.is_patched()
        assert patch.install() is True
        assert patch.install() is True
        assert patch.is_patched()
        assert upstream.DjangoWorkerFixup is DjangoWorkerFixup
        # The original was saved once: the second install did not save the patched class.
        assert patch.get_original() is original
        assert patch.uninstall() is True
        assert upstream.DjangoWorkerFixup is original
        assert not patch.is_patched()
        assert patch.uninstall() is False

    def test_worker_init_receiver_connected_once(self, clean):
        before = len(signals.worker_init.receivers)
        patch.install()
        patch.install()
        assert len(signals.worker_init.receivers) == before + 1
        patch.uninstall()
        assert len(signals.worker_init.receivers) == before

    def test_marker_on_patched_class_only(self):
        assert getattr(DjangoWorkerFixup, '__celery_django_fixup__') is True
        assert not hasattr(patch.get_original(), '__celery_django_fixup__')

    @pytest.mark.parametrize('celery_version,django_version,text', [
        ((3, 1, 26), (1, 11), 'Celery 3.1.26 is installed'),
        ((5, 8, 0), (5, 2), 'Celery 5.8.0 is installed'),
        ((4, 4, 7), (1, 10), 'Django 1.10 is installed'),
        ((4, 4, 7), (6, 2), 'Django 6.2 is installed'),
        ((4, 4, 7), None, 'Django is not installed'),
    ])
    def test_unsupported_versions_warn_and_patch_nothing(self, clean, recwarnings,
                                                         celery_version, django_version, text):
        with mock.patch('celery_django_fixup.versions.celery_version',
                        return_value=celery_version), \
                mock.patch('celery_django_fixup.versions.django_version',
                           return_value=django_version):
            assert patch.install() is False
        assert not patch.is_patched()
        [caught] = [w for w in recwarnings if issubclass(w.category, UnsupportedVersionWarning)]
        message = str(caught.message)
        assert text in message and 'nothing was patched' in message
        assert 'pip install' in message  # says what to do
        # stacklevel points at the caller
        assert os.path.splitext(caught.filename)[0] == os.path.splitext(__file__)[0]


class test_fixup_entry_point(object):

    def test_alone_installs_the_patch_and_one_django_fixup(self, clean, django_env):
        app = Celery('proj', set_as_current=False, fixups=['celery_django_fixup:fixup'])
        assert patch.is_patched()
        [django_fixup] = django_fixups(app)
        assert isinstance(django_fixup.worker_fixup, DjangoWorkerFixup)
        _disconnect(django_fixup)

    @pytest.mark.parametrize('order', [
        ['celery_django_fixup:fixup', 'celery.fixups.django:fixup'],
        ['celery.fixups.django:fixup', 'celery_django_fixup:fixup'],
        ['celery_django_fixup:fixup', upstream.fixup],
    ])
    def test_with_celerys_own_entry_exactly_one_django_fixup(self, clean, django_env, order):
        before = len(signals.worker_init.receivers)
        app = Celery('proj', set_as_current=False, fixups=order)
        [django_fixup] = django_fixups(app)
        # DjangoFixup's worker_init handler plus our receiver: each connected once.
        assert len(signals.worker_init.receivers) == before + 2
        assert isinstance(django_fixup.worker_fixup, DjangoWorkerFixup)
        _disconnect(django_fixup)

    def test_without_django_settings_installs_no_django_fixup(self, clean):
        with mock.patch.dict(os.environ, clear=False):
            os.environ.pop('DJANGO_SETTINGS_MODULE', None)
            app = Celery('proj', set_as_current=False, fixups=['celery_django_fixup:fixup'])
        assert django_fixups(app) == []
        assert patch.is_patched()


def _disconnect(django_fixup):
    signals.import_modules.disconnect(django_fixup.on_import_modules)
    signals.worker_init.disconnect(django_fixup.on_worker_init)


class test_worker_init(object):

    def test_hands_the_worker_to_the_patched_fixup(self, clean, django_env):
        app = Celery('proj', set_as_current=False, fixups=['celery_django_fixup:fixup'])
        [django_fixup] = django_fixups(app)
        worker = mock.Mock(app=app, pool_cls='eventlet')
        patch.on_worker_init(sender=worker)
        assert django_fixup.worker_fixup.worker is worker
        assert django_fixup.worker_fixup.is_green_pool
        _disconnect(django_fixup)

    def test_invalid_setting_stops_the_worker(self, clean, django_env):
        # Celery swallows a signal handler's exception; the worker must not start without a
        # Django fix-up because of a typo in a setting.
        app = Celery('proj', set_as_current=False, fixups=['celery_django_fixup:fixup'])
        app.conf.CELERY_DB_REUSE_MAX = 'ten'
        [django_fixup] = django_fixups(app)
        with pytest.raises(SystemExit) as excinfo:
            patch.on_worker_init(sender=mock.Mock(app=app, pool_cls='prefork'))
        assert 'CELERY_DB_REUSE_MAX' in str(excinfo.value)
        _disconnect(django_fixup)

    @pytest.mark.skipif(bool(versions.upstream_init_kwargs(upstream_class())),
                        reason="Celery 5.6.1's own DjangoWorkerFixup builds a WorkController when "
                               'given no worker, which builds the fix-up again (celery#10045)')
    def test_late_activation_warns_at_install(self, clean, django_env, recwarnings):
        app = Celery('proj', set_as_current=False)
        [django_fixup] = django_fixups(app)
        assert type(django_fixup.worker_fixup) is patch.get_original()  # created too early
        patch.install()
        late = [w for w in recwarnings if issubclass(w.category, LateActivationWarning)]
        assert late, 'no LateActivationWarning'
        message = str(late[0].message)
        assert 'fixups=["celery_django_fixup:fixup"]' in message
        assert 'Import celery_django_fixup at the top' in message
        _disconnect(django_fixup)

    @pytest.mark.skipif(bool(versions.upstream_init_kwargs(upstream_class())),
                        reason="Celery 5.6.1's own DjangoWorkerFixup builds a WorkController when "
                               'given no worker, which builds the fix-up again (celery#10045)')
    def test_late_activation_warns_at_worker_init(self, clean, django_env, recwarnings):
        app = Celery('proj', set_as_current=False)
        [django_fixup] = django_fixups(app)
        django_fixup.worker_fixup  # created with Celery's class
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            patch.install()
        del recwarnings[:]
        patch.on_worker_init(sender=mock.Mock(app=app, pool_cls='prefork'))
        assert any(issubclass(w.category, LateActivationWarning) for w in recwarnings)
        _disconnect(django_fixup)


def test_import_never_raises_into_the_application():
    # A fresh interpreter whose install() fails: importing must only warn.
    code = (
        'import warnings; warnings.simplefilter("always")\n'
        'from celery import _state\n'
        'def boom(*a, **k): raise RuntimeError("boom")\n'
        '_state._get_active_apps = boom\n'
        'with warnings.catch_warnings(record=True) as w:\n'
        '    warnings.simplefilter("always")\n'
        '    import celery_django_fixup\n'
        'print([str(x.message) for x in w])\n'
    )
    out = subprocess.check_output([sys.executable, '-c', code])
    assert b'could not install its patch' in out and b'boom' in out


def test_import_on_unsupported_celery_only_warns():
    code = (
        'import celery; celery.VERSION = celery.VERSION.__class__(5, 8, 0, "", "")\n'
        'import warnings\n'
        'with warnings.catch_warnings(record=True) as w:\n'
        '    warnings.simplefilter("always")\n'
        '    import celery_django_fixup\n'
        'print(celery_django_fixup.is_patched(), [w_.category.__name__ for w_ in w])\n'
    )
    out = subprocess.check_output([sys.executable, '-c', code])
    assert b'False' in out and b'UnsupportedVersionWarning' in out
