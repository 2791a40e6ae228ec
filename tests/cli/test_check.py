"""``celery-django-fixup check -A proj``: on a real Django project made for each test.

The project has a SQLite ``default`` database and a ``pg`` alias on the PostgreSQL server the
worker tests use, so the server's ``max_connections`` the command reports can be checked
against the server itself.
"""
from __future__ import absolute_import

import json
import textwrap

import pytest

from celery_django_fixup import versions
from celery_django_fixup.harness.demo.cdf_demo import dburl

from clihelpers import assert_one_line_error

APP_MODULES = {
    # The README's two ways to activate the patch, and an app that does neither.
    'import': '''
        import celery_django_fixup  # noqa: F401
        from celery import Celery
        app = Celery('proj')
    ''',
    'fixups': '''
        from celery import Celery
        app = Celery('proj', fixups=['celery_django_fixup:fixup'])
    ''',
    'none': '''
        from celery import Celery
        app = Celery('proj')
    ''',
}


def make_project(folder, postgres_url, activation='import', settings_env=True, extra=''):
    """Write the package ``proj`` (``proj.settings``, ``proj.celery``) under ``folder``."""
    package = folder.mkdir('proj')
    package.join('__init__.py').write('')
    pg = dburl.parse(postgres_url)
    pg['CONN_MAX_AGE'] = 600
    package.join('settings.py').write(textwrap.dedent('''
        SECRET_KEY = 'check-test'
        INSTALLED_APPS = []
        DATABASES = {{
            'default': {{'ENGINE': 'django.db.backends.sqlite3',
                         'NAME': {sqlite!r}, 'CONN_MAX_AGE': 600}},
            'pg': {pg!r},
        }}
    ''').format(sqlite=str(folder.join('db.sqlite3')), pg=pg) + extra)
    head = 'from __future__ import absolute_import\nimport os\n'
    if settings_env:
        head += "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'proj.settings')\n"
    package.join('celery.py').write(head + textwrap.dedent(APP_MODULES[activation]))
    return str(folder)


def check(cli, project, *args, **kwargs):
    # The project's settings module is named by the app module, as in a real project.
    return cli(['check', '-A', 'proj'] + list(args), cwd=project,
               drop_env=('DJANGO_SETTINGS_MODULE',), **kwargs)


def max_connections(postgres):
    return int(postgres._query('SHOW max_connections')[0][0])


@pytest.mark.parametrize('activation', ['import', 'fixups'])
def test_activated_project(activation, cli, tmpdir, postgres):
    project = make_project(tmpdir, postgres.server_url, activation)
    result = check(cli, project, '-c', '3', '--json')
    assert result.status == 0, result
    facts = json.loads(result.out)
    assert facts['patch_active'] is True, facts
    assert facts['celery_line'] == versions.line_for().name
    assert (facts['pool'], facts['concurrency']) == ('prefork', 3)
    aliases = dict((alias['alias'], alias) for alias in facts['aliases'])
    assert sorted(aliases) == ['default', 'pg']
    assert aliases['pg']['vendor'] == 'postgresql'
    assert aliases['pg']['max_connections'] == max_connections(postgres)
    assert aliases['default']['max_connections'] is None  # SQLite: no server to ask
    for alias in aliases.values():
        assert alias['plan'] == 'kept for up to 600 s' and alias['reuses'], alias
    # Three pool processes, each keeping one connection per alias.
    assert facts['connections_held'] == 6


def test_project_that_does_not_activate_the_patch(cli, tmpdir, postgres):
    """The command itself imports the package: that must not make the app look patched."""
    project = make_project(tmpdir, postgres.server_url, 'none')
    result = check(cli, project, '--json')
    assert result.status == 1, result
    facts = json.loads(result.out)
    assert facts['patch_active'] is False
    assert 'not activated by the app module' in facts['patch_reason']
    line = versions.line_for()
    expected = ('kept for up to 600 s' if line.reuses else
                'closed after every task (Celery {0})'.format(line.name))
    assert [alias['plan'] for alias in facts['aliases']] == [expected, expected]


def test_report_for_people(cli, tmpdir, postgres):
    project = make_project(tmpdir, postgres.server_url, 'import')
    result = check(cli, project, '-P', 'solo', '-c', '4')
    assert result.status == 0, result
    lines = result.out.splitlines()
    assert 'Patch active: yes (the worker will use the patched DjangoWorkerFixup)' in lines
    assert 'Pool: solo, concurrency 1; health checks on' in lines
    assert ('  pg (postgresql, CONN_MAX_AGE=600): kept for up to 600 s; server '
            'max_connections: {0}'.format(max_connections(postgres))) in lines
    # The solo pool runs tasks in the main process: one connection per alias, whatever -c.
    assert lines[-1].startswith('Connections held by the worker between tasks: 2 '), lines


@pytest.mark.parametrize('case', ['no-such-app', 'app-module-raises', 'no-settings-module',
                                  'invalid-reuse-max'])
def test_bad_input_is_one_line_and_status_2(case, cli, tmpdir, postgres):
    if case == 'no-such-app':
        project = make_project(tmpdir, postgres.server_url)
        result = cli(['check', '-A', 'no_such_project_module'], cwd=project)
        assert_one_line_error(result, "cannot load the Celery app 'no_such_project_module'")
    elif case == 'app-module-raises':
        project = make_project(tmpdir, postgres.server_url)
        tmpdir.join('proj', 'celery.py').write('import no_such_module_anywhere\n')
        assert_one_line_error(check(cli, project), "cannot load the Celery app 'proj'",
                              'no_such_module_anywhere')
    elif case == 'no-settings-module':
        project = make_project(tmpdir, postgres.server_url, settings_env=False)
        assert_one_line_error(check(cli, project), 'DJANGO_SETTINGS_MODULE is not set')
    else:
        project = make_project(tmpdir, postgres.server_url,
                               extra="CELERY_DB_REUSE_MAX = 'ten'\n")
        assert_one_line_error(check(cli, project), 'CELERY_DB_REUSE_MAX must be a whole number',
                              "'ten'")
