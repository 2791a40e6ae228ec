"""Helpers of the fault scenarios whose tasks check what their session returns and how Django
set it up (``cdf_demo.token``)."""
from __future__ import absolute_import

import os
import uuid

from celery_django_fixup.harness.run import TIMEOUT

#: What Django 2.0+ sets in ``init_connection_state`` (``OPTIONS['isolation_level']``), as
#: MariaDB names it; Django 1.11 sets no isolation level (the server's default stays).
READ_COMMITTED = 'READ-COMMITTED'


def django_sets_isolation():
    import django
    return django.VERSION >= (2, 0)


def mysql_databases():
    """``databases`` for a worker on MariaDB: the isolation level said explicitly (Django's
    default from 2.0), so that a session Django did not set up shows."""
    if not django_sets_isolation():
        return None
    return {'default': {'OPTIONS': {'isolation_level': 'read committed'}}}


def mysql_driver():
    """The MySQL driver the demo worker uses: mysqlclient if installed, else PyMySQL."""
    try:
        import MySQLdb
    except ImportError:
        return 'PyMySQL'
    return 'PyMySQL' if 'pymysql' in getattr(MySQLdb, '__name__', '') else 'mysqlclient'


def postgresql_driver():
    """The PostgreSQL driver Django uses: psycopg 3 from Django 4.2 when it is installed (as in
    the envs of Django 5.1+), else psycopg2."""
    import django
    if django.VERSION >= (4, 2):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            pass
        else:
            return 'psycopg 3'
    return 'psycopg2'


def case_name(vendor):
    """``mysql (PyMySQL)``, ``postgresql``: the row of the Reliability table. The PostgreSQL
    driver differs between envs of one row (the table's introduction says which)."""
    if vendor == 'mysql':
        return '{0} ({1})'.format(vendor, mysql_driver())
    return vendor


def not_set_up_count(pairs, vendor, created, reported):
    """The ``not_set_up`` fact: tasks that ran at another isolation level than Django sets
    (Django 2.0+ on MariaDB), else how many more sessions the tasks saw than Django opened."""
    if vendor == 'mysql' and django_sets_isolation():
        return len(not_set_up(pairs, vendor))
    return max(0, len(reported) - created)


def send_tokens(worker, count, timeout=60.0):
    """``count`` ``token`` tasks, each with a value of its own; returns ``[(token, outcome)]``."""
    tokens = [uuid.uuid4().hex for _ in range(count)]
    outcomes = []
    for token in tokens:
        outcomes.extend(worker.send('token', args=[token]))
    worker.collect(outcomes, timeout=timeout, stall=20)
    return list(zip(tokens, outcomes))


def stale(pairs):
    """The tasks that succeeded but did not read back their own value."""
    return [outcome for token, outcome in pairs
            if outcome.ok and (outcome.result.get('row') or [None])[0] != token]


def failed(pairs):
    return [outcome for _, outcome in pairs if not outcome.ok and outcome.state != TIMEOUT]


def timed_out(pairs):
    return [outcome for _, outcome in pairs if outcome.state == TIMEOUT]


def not_set_up(pairs, vendor):
    """Tasks that ran on a session at another isolation level than Django sets (MariaDB on
    Django 2.0+ only: elsewhere nothing tells)."""
    if vendor != 'mysql' or not django_sets_isolation():
        return []
    return [outcome for _, outcome in pairs
            if outcome.ok and outcome.result.get('isolation') != READ_COMMITTED]


def connections_created(path, vendor, worker):
    """How many connections Django opened in the pool processes of ``worker``
    (``CDF_CONNECTIONS_FILE``). The main process's are left out: no task runs on them, and
    Django 6.1's system checks, run by Celery in the main process at start, open and close one
    on MySQL to read the server's version."""
    if not os.path.exists(path):
        return 0
    main = str(worker.info['pid'])
    with open(path) as fh:
        return sum(1 for line in fh
                   if line.split()[-1:] == [vendor] and line.split()[:1] != [main])


def set_up_by_django(created, reported, vendor):
    """Whether every session the tasks reported was opened by Django: as many connections
    created as sessions seen, plus the one Django 1.11's MySQL backend opens and closes once per
    process to read the server's version (``mysql_version``), which no task sees."""
    import django
    probe = 1 if vendor == 'mysql' and django.VERSION < (2, 0) else 0
    return len(reported) <= created <= len(reported) + probe
