"""Real workers against real servers: the harness behind the worker tests, ``verify``, the fault
suite and the benchmark.

- :mod:`.run`: start a ``celery worker`` on the demo project (``demo/``) in a mode (``stock``,
  ``import``, ``fixups``, ``unsafe``), send it tasks, collect their outcomes with a deadline,
  and stop it, telling a clean stop from a hung worker.
- :mod:`.dbstats`: what the database server counted: sessions opened, sessions open, and
  ending them (PostgreSQL, MySQL/MariaDB).
- :mod:`.pgcluster`: a throwaway PostgreSQL server, for tests that restart it or break its
  connections.

Nothing here is imported by ``celery_django_fixup`` itself; the harness needs a broker, a
database server and its driver, which the library does not.
"""
from __future__ import absolute_import
