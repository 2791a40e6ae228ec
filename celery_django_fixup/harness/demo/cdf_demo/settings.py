"""Django settings of the demo project, read from the environment only.

=============================  ===========================================================
``CDF_DATABASE_URL``           the ``default`` database (see ``dburl``); required
``CDF_DATABASES_JSON``         more aliases, or changes to ``default``: ``{"alias": URL}`` or
                               ``{"alias": {"url": URL, "CONN_MAX_AGE": 0, "OPTIONS": {}}}``
                               (keys other than ``url`` are Django's and win over the URL's)
``CDF_CONN_MAX_AGE``           ``CONN_MAX_AGE`` of every alias that does not set its own
                               (a number of seconds, or ``None``); Django's default 0 if unset
``CDF_SETTINGS_JSON``          more settings, as a JSON object, given to Django's settings and
                               to the Celery app's configuration alike (``CELERY_DB_REUSE_MAX``,
                               ``CELERY_DB_HEALTH_CHECKS``, ``worker_prefetch_multiplier``...)
=============================  ===========================================================

The Celery app (``celeryapp``) reads the rest: ``CDF_MODE``, ``CDF_BROKER_URL``,
``CDF_RESULT_BACKEND``, ``CDF_BROKER_TRANSPORT_OPTIONS``, ``CDF_PARENT_QUERY`` and
``CDF_READY_FILE``. ``CDF_RESULT_BACKEND=django-db`` (django-celery-results as the result
backend) also installs the app ``django_celery_results``, whose tables ``cdf_demo.createtables``
then creates; no other run needs the package.
"""
from __future__ import absolute_import

import collections
import json
import os

from cdf_demo import dburl


def _conn_max_age(value):
    return None if value.strip() in ('None', 'none', 'null') else int(value)


def _databases():
    # Ordered, 'default' first and the others by name: Django goes through the aliases in this
    # order, and on Python 2 a plain dict's order changes with the hash seed.
    databases = collections.OrderedDict([('default', dburl.parse(os.environ['CDF_DATABASE_URL']))])
    for alias, spec in sorted(json.loads(os.environ.get('CDF_DATABASES_JSON') or '{}').items()):
        if not isinstance(spec, dict):
            spec = {'url': spec}
        spec = dict(spec)
        url = spec.pop('url', None)
        entry = dburl.parse(url) if url else dict(databases.get(alias, {}))
        entry.update(spec)
        databases[alias] = entry
    if os.environ.get('CDF_CONN_MAX_AGE', '').strip():
        max_age = _conn_max_age(os.environ['CDF_CONN_MAX_AGE'])
        for entry in databases.values():
            entry.setdefault('CONN_MAX_AGE', max_age)
    return databases


DATABASES = _databases()

if any(entry['ENGINE'].endswith('mysql') for entry in DATABASES.values()):
    try:
        import MySQLdb  # noqa: F401 -- the driver Django prefers
    except ImportError:
        import pymysql
        pymysql.install_as_MySQLdb()
        # PyMySQL stands in for mysqlclient under the version of mysqlclient it mimics (1.4.6
        # in PyMySQL 1.x); Django 5.1+ asks for mysqlclient 2.2.1 or later.
        pymysql.version_info = max(tuple(pymysql.version_info), (2, 2, 1, 'final', 0))

SECRET_KEY = 'cdf-demo-only-not-a-secret'
# DEBUG would keep every query in memory: a long run would measure that, not the worker.
DEBUG = False
INSTALLED_APPS = ['cdf_demo']
#: Celery's name of django-celery-results' database backend.
DJANGO_DB_BACKEND = 'django-db'
if os.environ.get('CDF_RESULT_BACKEND') == DJANGO_DB_BACKEND:
    INSTALLED_APPS.append('django_celery_results')
USE_TZ = True
TIME_ZONE = 'UTC'
DEFAULT_AUTO_FIELD = 'django.db.models.AutoField'
LOGGING_CONFIG = None

globals().update(json.loads(os.environ.get('CDF_SETTINGS_JSON') or '{}'))
