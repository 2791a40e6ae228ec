"""The supported range and what each Celery line does."""
from __future__ import absolute_import

import pytest

from celery_django_fixup import versions


@pytest.mark.parametrize('version,reuses,after_fork', [
    ((4, 0, 0), False, 'close'), ((4, 1, 1), False, 'close'),
    ((4, 2, 0), True, 'close_if_unusable_or_obsolete'),
    ((4, 3, 1), True, 'close_if_unusable_or_obsolete'),
    ((4, 4, 0), False, 'close'), ((4, 4, 3), False, 'close'),
    ((4, 4, 4), True, 'close'), ((4, 4, 7), True, 'close'),
    ((5, 0, 0), True, 'close'), ((5, 5, 3), True, 'close'),
    ((5, 6, 0), False, 'close'), ((5, 7, 0), False, 'close'),
])
def test_every_supported_release_has_one_line(version, reuses, after_fork):
    line = versions.line_for(version)
    assert line is not None and line.reuses is reuses and line.after_fork == after_fork
    assert [l for l in versions.LINES if version in l] == [line]


@pytest.mark.parametrize('version', [(3, 1, 26), (4, 4, 8), (5, 5, 4), (5, 7, 1), (6, 0, 0)])
def test_outside_the_range_has_no_line(version):
    assert versions.line_for(version) is None


def test_lines_cover_the_declared_range():
    assert versions.LINES[0].first == versions.SUPPORTED_CELERY[0]
    assert versions.LINES[-1].last == versions.SUPPORTED_CELERY[1]


@pytest.mark.parametrize('django', [(1, 11), (2, 0), (2, 2), (3, 0), (3, 2), (4, 2), (5, 2),
                                    (6, 1)])
def test_supported_django(django):
    assert versions.unsupported_reason((4, 3, 0), django) is None


def test_installed_versions_are_supported():
    # The test matrix only installs supported stacks: the patch must be active in every env.
    assert versions.unsupported_reason() is None
    assert versions.line_for() is not None
