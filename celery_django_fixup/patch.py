"""Installing the patched class into ``celery.fixups.django``, and taking it out again.

``install()`` rebinds ``celery.fixups.django.DjangoWorkerFixup``: Celery's ``DjangoFixup``
creates its worker fix-up from that module global when the worker starts, so the rebinding
takes effect for every app whose worker has not started yet. The original is saved once; a
second ``install()`` changes nothing and ``uninstall()`` puts the original back.
"""
from __future__ import absolute_import

import warnings

from celery import _state, signals
from celery.fixups import django as upstream

from . import versions
from .exceptions import InvalidSetting, LateActivationWarning, UnsupportedVersionWarning
from .worker import MARKER, DjangoWorkerFixup, installed

__all__ = ('install', 'uninstall', 'is_patched', 'get_original', 'fixup')

#: Names of ``celery.fixups.django`` whose originals were replaced, and those originals.
_saved = {}

_RECEIVER_UID = 'celery_django_fixup.patch.on_worker_init'
_PROCESS_RECEIVER_UID = 'celery_django_fixup.patch.on_worker_process_init'

#: How a ``Celery(fixups=[...])`` entry may name Celery's own Django fix-up.
_UPSTREAM_FIXUP_NAMES = ('celery.fixups.django:fixup', 'celery.fixups.django.fixup')

LATE_ACTIVATION = (
    'celery-django-fixup was activated after Celery had created its own Django worker fix-up '
    'for {app!r}, so this worker keeps Celery\'s connection handling. Import '
    'celery_django_fixup at the top of the module that creates the Celery app (before '
    'Celery(...)), or create the app with Celery(..., fixups=["celery_django_fixup:fixup"]).'
)


def is_patched():
    """True while ``celery.fixups.django.DjangoWorkerFixup`` is the patched class."""
    return getattr(upstream.DjangoWorkerFixup, MARKER, False)


def get_original():
    """Celery's own ``DjangoWorkerFixup``, whether or not the patch is installed."""
    return _saved.get('DjangoWorkerFixup', upstream.DjangoWorkerFixup)


def install(stacklevel=2):
    """Install the patched worker fix-up; returns True if it is installed.

    ``stacklevel`` goes to :func:`warnings.warn` as is: the default, 2, names the caller.

    On an unsupported Celery or Django it patches nothing and emits an
    :class:`~celery_django_fixup.exceptions.UnsupportedVersionWarning` saying why.
    """
    reason = versions.unsupported_reason()
    if reason is not None:
        warnings.warn(UnsupportedVersionWarning(reason), stacklevel=stacklevel)
        return False
    if not is_patched():
        _saved.setdefault('DjangoWorkerFixup', upstream.DjangoWorkerFixup)
        upstream.DjangoWorkerFixup = DjangoWorkerFixup
    signals.worker_init.connect(on_worker_init, weak=False, dispatch_uid=_RECEIVER_UID)
    signals.worker_process_init.connect(on_worker_process_init, weak=False,
                                        dispatch_uid=_PROCESS_RECEIVER_UID)
    for app in list(_state._get_active_apps()):
        if _created_too_early(app):
            warnings.warn(LateActivationWarning(LATE_ACTIVATION.format(app=app)),
                          stacklevel=stacklevel)
    return True


def uninstall():
    """Put Celery's own ``DjangoWorkerFixup`` back; returns True if the patch was installed.

    Worker fix-ups already created keep the class they were created with.
    """
    signals.worker_init.disconnect(on_worker_init, dispatch_uid=_RECEIVER_UID)
    signals.worker_process_init.disconnect(on_worker_process_init,
                                           dispatch_uid=_PROCESS_RECEIVER_UID)
    if 'DjangoWorkerFixup' not in _saved:
        return False
    upstream.DjangoWorkerFixup = _saved.pop('DjangoWorkerFixup')
    return True


def _django_fixups(app):
    return [f for f in (getattr(app, '_fixups', None) or ())
            if isinstance(f, upstream.DjangoFixup)]


def _created_too_early(app):
    return any(f._worker_fixup is not None and
               not isinstance(f._worker_fixup, DjangoWorkerFixup)
               for f in _django_fixups(app))


def on_worker_init(sender=None, **kwargs):
    """Hand the starting worker (and with it the pool class) to the patched worker fix-up.

    Runs before or after ``DjangoFixup.on_worker_init`` depending on which was connected first;
    the worker fix-up only reads the pool when the first task ends, by which time both ran.
    """
    app = getattr(sender, 'app', None)
    for django_fixup in _django_fixups(app):
        try:
            worker_fixup = django_fixup.worker_fixup
        except InvalidSetting as exc:
            # Celery only logs what a signal handler raises: the worker would go on with no
            # Django fix-up at all. A setting we cannot use must stop it, with the reason.
            raise SystemExit('celery-django-fixup: {0}'.format(exc))
        if isinstance(worker_fixup, DjangoWorkerFixup):
            worker_fixup.on_worker_init(sender=sender, **kwargs)
        else:
            warnings.warn(LateActivationWarning(LATE_ACTIVATION.format(app=app)))


def on_worker_process_init(sender=None, **kwargs):
    """Install the patched worker fix-up in a pool process that was spawned, not forked.

    With ``worker_pool_start_method = 'spawn'`` (Celery 5.7), a pool process unpickles the app,
    imports the task modules and is sent ``worker_process_init`` but never ``worker_init``, so
    no Django worker fix-up, Celery's or ours, would handle its connections. Celery's
    ``import_modules`` handler may have created one already (to set Django up), without
    installing it. A forked pool process goes on with the one its parent installed, and is left
    to it. One fix-up per process: its handlers take every task, whatever the app.
    """
    if installed():
        return
    for app in list(_state._get_active_apps()):
        for django_fixup in _django_fixups(app):
            worker_fixup = django_fixup.worker_fixup
            if isinstance(worker_fixup, DjangoWorkerFixup):
                worker_fixup.install()
                # install() connected the handler to the signal being sent: too late for it.
                # And this is a pool process, although install() ran in it (see the solo
                # pool's case there).
                worker_fixup._install_pid = None
                worker_fixup.on_worker_process_init(sender=sender, **kwargs)
                return


def _names_upstream_fixup(entry):
    return entry is upstream.fixup or entry in _UPSTREAM_FIXUP_NAMES


def fixup(app, env='DJANGO_SETTINGS_MODULE'):
    """Celery fix-up entry point: ``Celery('proj', fixups=['celery_django_fixup:fixup'])``.

    ``fixups=`` replaces Celery's built-in list, so this installs the patch and then Celery's
    own Django fix-up (only when ``env`` names a settings module, as Celery does). When the
    list also names Celery's own entry, that one installs it: an app ends with exactly one
    ``DjangoFixup`` whatever the order of the list or set.
    """
    # On unsupported versions this only warns, and the app gets Celery's own fix-up below.
    install(stacklevel=3)
    if _django_fixups(app) or any(_names_upstream_fixup(f) for f in (app.fixups or ())):
        return None
    return upstream.fixup(app, env=env)
