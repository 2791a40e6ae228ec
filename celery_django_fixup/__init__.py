"""Make Celery workers reuse Django database connections safely.

Usage, either of (both together are fine; each is idempotent)::

    # proj/celery.py
    import celery_django_fixup  # noqa: F401 -- installs the patch
    app = Celery('proj')

    # or, with no import side effect:
    app = Celery('proj', fixups=['celery_django_fixup:fixup'])

Ordering rules:

- The patch must be installed before the worker starts: import this package in the module that
  creates the Celery app (not in a tasks module, which the worker imports too late). A late
  activation is reported with a :class:`LateActivationWarning`.
- ``fixups=[...]`` replaces Celery's built-in list; ``celery_django_fixup:fixup`` installs
  Celery's Django fix-up itself, and exactly one, with or without Celery's own entry beside it.
- On an unsupported Celery or Django, importing only warns (:class:`UnsupportedVersionWarning`)
  and nothing is patched; it never raises into the application.

:func:`install`, :func:`uninstall`, :func:`is_patched` and :func:`get_original` manage the patch
explicitly; the settings it reads are listed in :mod:`celery_django_fixup.settings`.
"""
from __future__ import absolute_import

import warnings as _warnings

from .exceptions import (CeleryDjangoFixupWarning, InvalidSetting, LateActivationWarning,
                         UnsupportedVersionWarning)
from .patch import fixup, get_original, install, is_patched, uninstall
from .worker import DjangoWorkerFixup

__version__ = '1.0.0'

__all__ = (
    'DjangoWorkerFixup', 'fixup', 'install', 'uninstall', 'is_patched', 'get_original',
    'CeleryDjangoFixupWarning', 'UnsupportedVersionWarning', 'LateActivationWarning',
    'InvalidSetting',
)

try:
    install(stacklevel=3)
except Exception as exc:  # noqa: B902 -- never raise into the importing application
    _warnings.warn(CeleryDjangoFixupWarning(
        'celery-django-fixup could not install its patch ({0!r}); Celery keeps its own Django '
        'fix-up. Please report this with your Celery and Django versions.'.format(exc)),
        stacklevel=2)
