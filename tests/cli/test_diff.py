"""``celery-django-fixup diff``: the carried upstream changes, against the installed Celery or a
release given with ``--celery``."""
from __future__ import absolute_import

import json

import pytest

from celery_django_fixup import cli, upstream_patches, versions

from clihelpers import assert_one_line_error, run_cli

INSTALLED = versions.celery_version()
INSTALLED_TEXT = '.'.join(str(part) for part in INSTALLED)
NEEDS_PATCH = INSTALLED < upstream_patches.CARRIED_SINCE


def main(capsys, *argv):
    """Run the command in this process (fast); ``(status, stdout, stderr)``."""
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_installed_celery_as_a_user_runs_it():
    result = run_cli(['diff'])
    assert result.status == 0, result
    path, source = upstream_patches.installed_source()
    if NEEDS_PATCH:
        patch = upstream_patches.patch_for()
        assert result.out.startswith(patch.text.rstrip('\n')), result
        assert '# Installed {0}: applies cleanly'.format(path) in result.out
        # What the diff promises is what applying it gives: the two upstream changes.
        assert upstream_patches.carries_upstream_changes(patch.apply(source))
    else:
        assert result.out.startswith('# Celery {0} already carries'.format(INSTALLED_TEXT))
        assert '# Installed {0}: needs none'.format(path) in result.out
    assert '#   on_worker_process_init: ' in result.out


def test_installed_celery_json(capsys):
    status, out, _ = main(capsys, 'diff', '--json')
    assert status == 0
    report = json.loads(out)
    assert report['celery'] == INSTALLED_TEXT
    assert report['installed_file'] == upstream_patches.installed_source()[0]
    if NEEDS_PATCH:
        assert report['applies'] is True
        assert report['patch'] == upstream_patches.patch_for().name
        assert report['diff'].startswith('From ') or '--- a/celery/fixups/django.py' in \
            report['diff']
    else:
        assert report['applies'] is None and report['carries_upstream_changes'] is True
        assert report['diff'] is None and report['patch'] is None
    assert 'on_worker_process_init' in report['overrides']


def test_modified_installed_file_is_reported(capsys, monkeypatch):
    """A locally edited celery/fixups/django.py: the answer changes, the command says so."""
    path, source = upstream_patches.installed_source()
    if NEEDS_PATCH:
        # A line the diff removes, edited: the diff no longer applies.
        removed = next(text for hunk in upstream_patches.patch_for().hunks
                       for tag, text, _ in hunk.lines if tag == '-')
        edited = source.replace(removed, removed + '  # edited', 1)
    else:
        # The forced close after fork, taken out again.
        edited = source.replace('self._close_database(force=True)', 'self._close_database()')
    assert edited != source
    monkeypatch.setattr(upstream_patches, 'installed_source', lambda: (path, edited))
    status, out, _ = main(capsys, 'diff')
    if NEEDS_PATCH:
        assert status == 1
        assert '# Installed {0}: DOES NOT APPLY (modified?)'.format(path) in out
    else:
        assert status == 0
        assert 'needs none, but the installed file does not carry the changes' in out


@pytest.mark.parametrize('release', ['4.4.4', '4.4.5', '4.4.7'])
def test_releases_that_carry_the_changes_need_none(release, capsys):
    status, out, _ = main(capsys, 'diff', '--celery', release)
    assert status == 0
    assert out.startswith('# Celery {0} already carries celery#4292 and celery#6134: '
                          'no patch.'.format(release))
    status, out, _ = main(capsys, 'diff', '--celery', release, '--json')
    report = json.loads(out)
    assert (report['diff'], report['patch']) == (None, None)


@pytest.mark.parametrize('release,name', [
    ('4.0.2', 'celery-4.0.0-4.1.0.diff'), ('4.1.1', 'celery-4.1.1.diff'),
    ('4.2.1', 'celery-4.2.0-4.2.2.diff'), ('4.3.0', 'celery-4.3.0-4.3.1.diff'),
    ('4.4.0', 'celery-4.4.0-4.4.3.diff'), ('4.4.3', 'celery-4.4.0-4.4.3.diff'),
])
def test_each_release_gets_its_own_diff(release, name, capsys):
    status, out, _ = main(capsys, 'diff', '--celery', release, '--json')
    assert status == 0
    report = json.loads(out)
    assert report['patch'] == name
    assert '--- a/celery/fixups/django.py' in report['diff']
    assert '+                    conn.close()' in report['diff'] or \
        'force=True' in report['diff'], report['diff']


@pytest.mark.parametrize('release,fragment', [
    ('5.0.0', 'no patch for Celery 5.0.0'),
    ('3.1.26', 'no patch for Celery 3.1.26'),
    ('garbage', "--celery takes a release such as 4.3.0, not 'garbage'"),
    ('4.x', "--celery takes a release such as 4.3.0, not '4.x'"),
])
def test_bad_release_is_one_line_and_status_2(release, fragment):
    assert_one_line_error(run_cli(['diff', '--celery', release]), fragment)
