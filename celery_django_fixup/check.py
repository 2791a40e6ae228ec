"""``celery-django-fixup check``: what a worker of the user's project does with its connections."""
from __future__ import absolute_import, print_function

import os
import platform
import sys

from . import patch, versions
from .processes import FORK_HOOKS
from .settings import WorkerSettings

__all__ = ('CheckError', 'inspect_project', 'format_report')

GREEN = 'closed after every task (greenlet pool)'


class CheckError(Exception):
    """The project cannot be inspected (bad -A, no settings): one line for the user."""


def _load_app(app_name):
    """Load the user's app as the worker would, seeing whether *it* activates the patch.

    This command runs inside ``celery_django_fixup``, whose import has installed the patch
    already: left as is, every app would look patched, and the app module's own ``import
    celery_django_fixup`` would be a no-op. So the patch is taken out and the package's
    top-level module forgotten first; an app that imports it (or names
    ``celery_django_fixup:fixup``) runs its ``__init__`` again, which installs the patch
    through the same, still loaded, submodules.
    """
    from celery.app.utils import find_app
    name = __name__.rpartition('.')[0]
    package = sys.modules.pop(name, None)
    patch.uninstall()
    try:
        return find_app(app_name)
    except Exception as exc:  # noqa: B902 -- anything the user's module raises
        raise CheckError('cannot load the Celery app {0!r}: {1}'.format(
            app_name, _why_not_loaded(app_name, exc)))
    finally:
        reloaded = sys.modules.get(name)
        if reloaded is None:
            if package is not None:
                sys.modules[name] = package
        elif package is not None:
            # A re-executed package module only gets the submodules it imports by name.
            for attr, value in vars(package).items():
                if attr not in vars(reloaded):
                    setattr(reloaded, attr, value)


def _one_line(exc):
    return ' '.join(str(exc).split()) or type(exc).__name__


def _why_not_loaded(app_name, exc):
    """The real error when ``-A proj`` failed inside ``proj/celery.py``.

    Celery's ``find_app`` tries ``proj.celery`` and, when importing it raises ImportError,
    reports only that ``proj`` has no attribute ``celery``: the missing module the user has to
    fix is lost. If ``proj.celery`` exists, import it again to say what it raised.
    """
    if ':' in app_name or app_name.endswith('.celery'):
        return _one_line(exc)
    import importlib
    import pkgutil
    from celery.utils.imports import cwd_in_path
    candidate = app_name + '.celery'
    with cwd_in_path():
        try:
            exists = pkgutil.find_loader(candidate) is not None
        except Exception:  # noqa: B902 -- no such package: the first error says it
            exists = False
        if exists:
            try:
                importlib.import_module(candidate)
            except Exception as inner:  # noqa: B902 -- whatever the user's module raises
                return '{0}: {1}: {2}'.format(candidate, type(inner).__name__,
                                              _one_line(inner))
    return _one_line(exc)


def _django_fixups(app):
    from celery.fixups.django import DjangoFixup
    return [f for f in (getattr(app, '_fixups', None) or ()) if isinstance(f, DjangoFixup)]


def _activation(app):
    """Whether a worker of ``app`` will run the patched fix-up, and why not if it won't."""
    reason = versions.unsupported_reason()
    if reason is not None:
        return False, reason
    fixups = _django_fixups(app)
    if not fixups:
        return False, ('the app has no Django fix-up: set DJANGO_SETTINGS_MODULE, and keep '
                       'Celery\'s entry or add "celery_django_fixup:fixup" if you pass fixups=')
    if not patch.is_patched():
        return False, ('celery_django_fixup is not activated by the app module: import it there, '
                       'or pass fixups=["celery_django_fixup:fixup"]')
    created = [f._worker_fixup for f in fixups if f._worker_fixup is not None]
    if any(not isinstance(w, patch.DjangoWorkerFixup) for w in created):
        return False, patch.LATE_ACTIVATION.format(app=app)
    return True, 'the worker will use the patched DjangoWorkerFixup'


def _pool_and_concurrency(app, pool, concurrency):
    from celery.concurrency import get_implementation
    pool = pool or app.conf.worker_pool or 'prefork'
    if concurrency is None:
        concurrency = app.conf.worker_concurrency
    if not concurrency:
        from multiprocessing import cpu_count
        concurrency = cpu_count()
    try:
        pool_cls = get_implementation(pool)
    except Exception:  # noqa: B902 -- a pool we cannot import: report the name
        pool_cls = pool
    if pool == 'solo' or getattr(pool_cls, '__module__', None) == 'celery.concurrency.solo':
        # The solo pool runs tasks in the main process, one at a time, whatever -c says.
        concurrency = 1
    return pool, pool_cls, concurrency


def _alias_plan(conn, green, active, reuse_max):
    max_age = conn.settings_dict.get('CONN_MAX_AGE', 0)
    if not active:
        line = versions.line_for()
        if line is not None and not line.reuses:
            return 'closed after every task (Celery {0})'.format(line.name)
    if green:
        return GREEN
    if reuse_max:
        return 'kept for {0} tasks, then closed'.format(reuse_max)
    if (conn.settings_dict.get('OPTIONS') or {}).get('pool'):
        return 'kept in its Django connection pool (returned to it after every task)'
    if max_age == 0:
        return 'closed after every task (CONN_MAX_AGE=0; set it to reuse connections)'
    if max_age is None:
        return 'kept for the life of the worker process'
    return 'kept for up to {0} s'.format(max_age)


def _server_limit(conn):
    vendor = conn.vendor
    query = {'postgresql': 'SHOW max_connections',
             'mysql': 'SELECT @@max_connections'}.get(vendor)
    if query is None:
        return None
    try:
        with conn.cursor() as cursor:
            cursor.execute(query)
            return int(cursor.fetchone()[0])
    except Exception:  # noqa: B902 -- unreachable server: reported as unknown
        return None
    finally:
        conn.close()


def inspect_project(app_name, pool=None, concurrency=None):
    """Facts about the user's project as a dict (what ``check`` prints, and ``--json``)."""
    import celery
    import django
    app = _load_app(app_name)
    if not os.environ.get('DJANGO_SETTINGS_MODULE'):
        raise CheckError('DJANGO_SETTINGS_MODULE is not set: set it as the worker has it')
    try:
        django.setup()
        from django.conf import settings
        from django.db import connections
        worker_settings = WorkerSettings(app, settings)
    except Exception as exc:  # noqa: B902 -- bad settings: one line
        raise CheckError('Django settings: {0}'.format(exc))
    active, why = _activation(app)
    pool, pool_cls, concurrency = _pool_and_concurrency(app, pool, concurrency)
    from .policy import is_green_pool
    green = is_green_pool(pool_cls)
    line = versions.line_for()
    aliases = []
    for conn in connections.all():
        plan = _alias_plan(conn, green, active, worker_settings.db_reuse_max)
        aliases.append({
            'alias': conn.alias, 'vendor': conn.vendor,
            'conn_max_age': conn.settings_dict.get('CONN_MAX_AGE', 0),
            'plan': plan, 'reuses': plan.startswith('kept'),
            'max_connections': _server_limit(conn),
        })
    held = concurrency * len([a for a in aliases if a['reuses']])
    return {
        'python': platform.python_version(),
        'celery': celery.__version__,
        'django': django.get_version(),
        'celery_line': line.name if line else None,
        'celery_problem': line.problem if line else None,
        'patch_active': active,
        'patch_reason': why,
        'pool': pool if isinstance(pool, str) else getattr(pool, '__name__', str(pool)),
        'concurrency': concurrency,
        'health_checks': worker_settings.health_checks,
        # Python 3.7+: every fork of a worker process drops what it inherited.
        'fork_hooks': FORK_HOOKS,
        'db_reuse_max': worker_settings.db_reuse_max,
        'aliases': aliases,
        'connections_held': held,
    }


def format_report(facts):
    """The human-readable ``check`` report, as a list of lines."""
    out = [
        'Python {python}, Celery {celery}, Django {django}'.format(**facts),
        'Celery line: {0}'.format(facts['celery_line'] or 'not supported'),
    ]
    if facts['celery_problem']:
        out.append('  stock Celery {0}'.format(facts['celery_problem']))
    out.append('Patch active: {0} ({1})'.format('yes' if facts['patch_active'] else 'NO',
                                                facts['patch_reason']))
    out.append('Pool: {pool}, concurrency {concurrency}; health checks {0}'.format(
        'on' if facts['health_checks'] else 'off', **facts))
    if facts['patch_active']:
        out.append('Outside tasks: {0}; every process closes its connections when it exits'
                   .format('checked before every use' if facts['health_checks'] else
                           'not checked (CELERY_DB_HEALTH_CHECKS = False)'))
        out.append('Forks: {0}'.format(
            'every forked process drops what it inherited, with no IO' if facts['fork_hooks']
            else 'pool processes and embedded beat drop what they inherited; a process a task '
                 'forks does not (Python < 3.7 has no fork hook)'))
    for alias in facts['aliases']:
        limit = alias['max_connections']
        out.append('  {alias} ({vendor}, CONN_MAX_AGE={conn_max_age!r}): {plan}; server '
                   'max_connections: {0}'.format('unknown' if limit is None else limit, **alias))
    limits = [a['max_connections'] for a in facts['aliases'] if a['max_connections']]
    summary = 'Connections held by the worker between tasks: {0}'.format(
        facts['connections_held'])
    if limits:
        summary += ' (server allows {0} in all, for every client)'.format(min(limits))
        if facts['connections_held'] >= min(limits):
            summary += ' -- TOO MANY: lower the concurrency or CONN_MAX_AGE'
    out.append(summary)
    return out
