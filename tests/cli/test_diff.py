"""``celery-django-fixup diff``: every method the patched class overrides or adds, against the
installed Celery's own source, with its reason and the helpers it calls.

The expected methods are taken from the patched class itself (``vars()``), so the tests follow
the class as it changes; the upstream side is checked against the installed
``celery/fixups/django.py`` line by line.
"""
from __future__ import absolute_import

import inspect
import io
import json
import os
import textwrap

import celery
import pytest

from celery_django_fixup import cli, upstream_patches, versions
from celery_django_fixup.worker import DjangoWorkerFixup, upstream_class

from clihelpers import assert_one_line_error, run_cli

INSTALLED_TEXT = '.'.join(str(part) for part in versions.celery_version())
CELERY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(celery.__file__)))


def main(capsys, *argv):
    """Run the command in this process (fast); ``(status, stdout, stderr)``."""
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def expected_methods():
    """``{name: 'changed' | 'added'}`` for every method, static or class method and property
    of the patched class, read from the class with no help from the code under test."""
    upstream = upstream_class()
    upstream_names = set(name for klass in inspect.getmro(upstream) if klass is not object
                         for name in vars(klass))
    found = {}
    for name, value in vars(DjangoWorkerFixup).items():
        if inspect.isfunction(value) or isinstance(value, (property, staticmethod, classmethod)):
            found[name] = 'changed' if name in upstream_names else 'added'
    assert found, 'the patched class defines no method?'
    return found


def sides(diff):
    """The two texts a whole-method unified diff holds: (old, new)."""
    old, new = [], []
    for line in diff.splitlines(True)[3:]:       # ---, +++ and the one @@ line
        assert line[:1] in (' ', '-', '+'), line
        if line[0] in ' -':
            old.append(line[1:])
        if line[0] in ' +':
            new.append(line[1:])
    return ''.join(old), ''.join(new)


def installed_lines(location, count):
    """``count`` lines of the installed Celery file at ``location`` ([path, line]), dedented."""
    path, line = location
    with io.open(os.path.join(CELERY_ROOT, path), encoding='utf-8') as fh:
        lines = fh.read().splitlines(True)
    return textwrap.dedent(''.join(lines[line - 1:line - 1 + count]))


def json_report(capsys):
    status, out, err = main(capsys, 'diff', '--json')
    assert status == 0, err
    return json.loads(out)


def test_every_method_with_both_sides_as_a_user_runs_it(capsys):
    result = run_cli(['diff'])
    assert result.status == 0, result
    assert result.err == '', result
    out = result.out
    assert out.startswith("# What celery-django-fixup changes in Celery {0}'s Django worker "
                          "fix-up\n".format(INSTALLED_TEXT)), result
    assert '# WARNING' not in out, result
    data = json_report(capsys)
    by_name = dict((method['name'], method) for method in data['methods'])
    for name, status in sorted(expected_methods().items()):
        method = by_name[name]
        reason = method['reason']
        if reason is None:      # an internal member: the members using it instead
            assert method['used_by'], name
            reason = 'used by {0}'.format(', '.join(method['used_by']))
        assert reason.strip(), name
        assert '\n## {0} ({1}): {2}\n'.format(name, status, reason) in out, name
        patched = 'celery_django_fixup.worker.DjangoWorkerFixup.{0}'.format(name)
        assert '\n+++ {0} (celery_django_fixup/worker.py:'.format(patched) in out, name
        if status == 'changed':
            assert method['upstream'].startswith('celery.fixups.django.'), name
            assert '\n--- {0} ({1}:{2})\n+++ {3} '.format(
                method['upstream'], method['upstream_location'][0],
                method['upstream_location'][1], patched) in out, name
        else:
            assert '\n--- /dev/null\n+++ {0} '.format(patched) in out, name
        # Both sides whole, as the text shows them.
        assert method['diff'].rstrip('\n') in out, name
        for line in method['patched_source'].splitlines():
            assert line.strip() == '' or (' ' + line in out or '+' + line in out), (name, line)
        for line in (method['upstream_source'] or '').splitlines():
            assert line.strip() == '' or (' ' + line in out or '-' + line in out), (name, line)
    for helper in data['helpers']:
        assert '\n### {0} ('.format(helper) in out, helper


def test_json_has_every_method_with_both_sides_reason_and_helpers(capsys):
    data = json_report(capsys)
    assert data['celery'] == INSTALLED_TEXT
    assert data['problems'] == []
    assert data['upstream_class'] == 'celery.fixups.django.DjangoWorkerFixup'
    assert data['patched_class'] == 'celery_django_fixup.worker.DjangoWorkerFixup'
    assert data['upstream_file'] == os.path.abspath(inspect.getsourcefile(upstream_class()))
    expected = expected_methods()
    assert sorted(method['name'] for method in data['methods']) == sorted(expected)
    for method in data['methods']:
        name = method['name']
        assert set(method) >= set(['name', 'status', 'reason', 'upstream_source',
                                   'patched_source', 'diff', 'helpers']), name
        assert method['status'] == expected[name], name
        # A reason for what replaces Celery's code and every public function added; other
        # members added (private helpers, properties) say which members use them.
        if method['status'] == 'changed' or (
                inspect.isfunction(vars(DjangoWorkerFixup)[name]) and not name.startswith('_')):
            assert method['reason'] and method['reason'].strip(), name
        else:
            assert (method['reason'] or '').strip() or method['used_by'], name
        # The code that runs: the patched class's member, whole.
        value = vars(DjangoWorkerFixup)[name]
        functions = [value.fget] if isinstance(value, property) else \
            [getattr(value, '__func__', value)]
        assert method['patched_source'].startswith(
            textwrap.dedent(inspect.getsource(functions[0]))), name
        if method['status'] == 'added':
            assert method['upstream_source'] is None and method['upstream'] is None, name
            assert method['diff'].startswith('--- /dev/null\n'), name
        else:
            # Read from the installed celery/fixups/django.py, at the line it names.
            assert method['upstream_location'][0] == 'celery/fixups/django.py', name
            assert method['upstream_source'] == installed_lines(
                method['upstream_location'], len(method['upstream_source'].splitlines())), name
            assert method['upstream_source'].lstrip().startswith(('def ', '@')), name
        # The diff holds both sides whole.
        assert sides(method['diff']) == (method['upstream_source'] or '',
                                         method['patched_source']), name
        for helper in method['helpers']:
            assert helper.startswith('celery_django_fixup.'), helper
            assert helper.rsplit('.', 1)[1] in method['patched_source'], (name, helper)
            assert helper in data['helpers'], (name, helper)
    for name, helper in data['helpers'].items():
        module, attr = name.rsplit('.', 1)
        obj = getattr(__import__(module, fromlist=[attr]), attr)
        assert helper['source'] == textwrap.dedent(inspect.getsource(obj)), name
        for other in helper['helpers']:
            assert other in data['helpers'], (name, other)


def test_the_upstream_backport_is_named_as_such(capsys):
    data = json_report(capsys)
    backport = upstream_patches.patch_for()
    _, out, _ = main(capsys, 'diff')
    assert "\n## Upstream backport (a record of Celery's own fix, not this package's " \
           "change)\n" in out
    if backport is None:
        assert data['upstream_backport'] is None
        assert '# None shipped for Celery {0}'.format(INSTALLED_TEXT) in out
    else:
        assert data['upstream_backport']['file'] == backport.path
        assert os.path.basename(os.path.dirname(backport.path)) == 'upstream-backports'
        assert '\n# {0}\n'.format(backport.path) in out
        assert 'the change celery-django-fixup makes is the one above' in out


@pytest.mark.parametrize('release', ['4.3.0', 'garbage'])
def test_celery_option_is_refused_in_one_line(release):
    assert_one_line_error(run_cli(['diff', '--celery', release]),
                          '--celery is no longer taken', 'Celery {0} is installed'.format(release))
