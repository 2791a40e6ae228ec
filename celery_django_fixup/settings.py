"""The settings the patched worker fix-up reads, and their validation.

Each is looked up in the Celery app's configuration first (as upstream reads
``CELERY_DB_REUSE_MAX``), then in Django's settings module, under the same name.

==========================  =======  ==========================================================
setting                     default  effect
==========================  =======  ==========================================================
``CELERY_DB_REUSE_MAX``     None     Upstream's setting: keep connections for this many tasks,
                                     then close them. Our close at that point is a forced one.
``CELERY_DB_HEALTH_CHECKS`` True     Check a connection kept from an earlier task the first
                                     time the next task uses it, and reconnect if it is broken.
==========================  =======  ==========================================================
"""
from __future__ import absolute_import

import numbers

from .exceptions import InvalidSetting

__all__ = ('DB_REUSE_MAX', 'DB_HEALTH_CHECKS', 'WorkerSettings')

DB_REUSE_MAX = 'CELERY_DB_REUSE_MAX'
DB_HEALTH_CHECKS = 'CELERY_DB_HEALTH_CHECKS'

_MISSING = object()


def _lookup(app, django_settings, name, default):
    value = app.conf.get(name, _MISSING)
    if value is _MISSING:
        value = getattr(django_settings, name, _MISSING)
    return default if value is _MISSING else value


def _whole_number_or_none(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise InvalidSetting(
            '{0} must be a whole number of tasks (or None to leave it off), not {1!r}.'
            .format(name, value))
    return value


def _boolean(name, value):
    if not isinstance(value, bool):
        raise InvalidSetting(
            '{0} must be True or False, not {1!r}.'.format(name, value))
    return value


class WorkerSettings(object):
    """The validated settings of one worker; an invalid value raises :class:`InvalidSetting`."""

    def __init__(self, app, django_settings):
        self.db_reuse_max = _whole_number_or_none(
            DB_REUSE_MAX, _lookup(app, django_settings, DB_REUSE_MAX, None))
        self.health_checks = _boolean(
            DB_HEALTH_CHECKS, _lookup(app, django_settings, DB_HEALTH_CHECKS, True))
