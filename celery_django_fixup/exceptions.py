"""Warnings and errors raised by celery-django-fixup.

Every warning is a :class:`celery.exceptions.FixupWarning`, so a project that already filters
Celery's fix-up warnings filters ours the same way, and every text says what to do.
"""
from __future__ import absolute_import

from celery.exceptions import FixupWarning, ImproperlyConfigured

__all__ = (
    'CeleryDjangoFixupWarning', 'UnsupportedVersionWarning', 'LateActivationWarning',
    'InvalidSetting',
)


class CeleryDjangoFixupWarning(FixupWarning):
    """Base class of the warnings this package emits."""


class UnsupportedVersionWarning(CeleryDjangoFixupWarning):
    """The installed Celery or Django is outside the supported range: nothing was patched."""


class LateActivationWarning(CeleryDjangoFixupWarning):
    """The worker created Celery's own worker fix-up before the patch was installed."""


class InvalidSetting(ImproperlyConfigured):
    """A setting read by the patched worker fix-up has a value it cannot use."""
