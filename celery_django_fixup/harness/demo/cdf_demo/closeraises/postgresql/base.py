"""Django's postgresql backend whose close raises (see ``cdf_demo.closeraises``)."""
from __future__ import absolute_import

from django.db.backends.postgresql import base as _base
from django.db.backends.postgresql.base import *  # noqa: F401,F403 -- a backend module's names

from cdf_demo.closeraises import wrapper_class

DatabaseWrapper = wrapper_class(_base.DatabaseWrapper)
