#!/usr/bin/env python
"""Regenerate patches/upstream-backports/*.diff: Celery 4.4.4's own fix-up, backported.

Each diff turns a release's ``celery/fixups/django.py`` into what Celery 4.4.4 ships: celery#4292
(``close_if_unusable_or_obsolete()`` at task boundaries) and celery#6134 (a forced close in the
prefork child after fork). They are a record of upstream's fix, not what celery-django-fixup
does: its patched class is shown by ``celery-django-fixup diff``. The diffs are made by a fixed
source transformation of the published files, never by hand, and the transformation stops with
an error if the text it rewrites is not exactly what it expects.

Usage (run from the repository root; Python 2.7 or 3.6+)::

    # every supported release, fetched from PyPI with pip (needs network):
    python scripts/make_patches.py --download /tmp/celery-wheels
    # the same from wheels fetched before with ``pip download --no-deps celery==X -d DIR``:
    python scripts/make_patches.py --wheels DIR
    # only the diff for the Celery installed in this interpreter:
    python scripts/make_patches.py --installed --out /tmp/out
    # compare instead of writing (exit status 1 on a difference):
    python scripts/make_patches.py --wheels DIR --check

With every supported release at hand (``--wheels``/``--download``) the script also checks the
table below: the releases sharing a diff produce identical diffs, 4.4.4 to 4.4.7 need none, and
each patched result holds the two methods exactly as Celery 4.4.4 has them.
"""
from __future__ import absolute_import, print_function, unicode_literals

import argparse
import difflib
import glob
import io
import os
import subprocess
import sys
import zipfile

TARGET = 'celery/fixups/django.py'

#: Every Celery release the project supports, oldest first.
RELEASES = (
    '4.0.0', '4.0.1', '4.0.2', '4.1.0', '4.1.1', '4.2.0', '4.2.1', '4.2.2', '4.3.0', '4.3.1',
    '4.4.0', '4.4.1', '4.4.2', '4.4.3', '4.4.4', '4.4.5', '4.4.6', '4.4.7',
)

#: One diff per distinct result, so every release gets a diff that applies at its stated line
#: numbers: releases whose django.py differs only outside the hunks (4.0.x and 4.1.0) share one;
#: 4.1.1 and 4.2.x moved the code by two lines (an import clean-up), so they get their own.
PATCHES = (
    ('celery-4.0.0-4.1.0.diff', ('4.0.0', '4.0.1', '4.0.2', '4.1.0')),
    ('celery-4.1.1.diff', ('4.1.1',)),
    ('celery-4.2.0-4.2.2.diff', ('4.2.0', '4.2.1', '4.2.2')),
    ('celery-4.3.0-4.3.1.diff', ('4.3.0', '4.3.1')),
    ('celery-4.4.0-4.4.3.diff', ('4.4.0', '4.4.1', '4.4.2', '4.4.3')),
)

#: Releases that already ship both changes.
CARRIED = ('4.4.4', '4.4.5', '4.4.6', '4.4.7')

# The rewrites, each (what it is, exact old text, new text). Old texts must occur exactly once.
AFTER_FORK = (
    'forced close after fork (celery#6134)',
    '        # use the _ version to avoid DB_REUSE preventing the conn.close() call\n'
    '        self._close_database()\n',
    '        # use the _ version to avoid DB_REUSE preventing the conn.close() call\n'
    '        self._close_database(force=True)\n',
)
SIGNATURE = (
    'force argument of _close_database (celery#6134)',
    '    def _close_database(self):\n'
    '        for conn in self._db.connections.all():\n'
    '            try:\n',
    '    def _close_database(self, force=False):\n'
    '        for conn in self._db.connections.all():\n'
    '            try:\n'
    '                if force:\n'
    '                    conn.close()\n'
    '                else:\n'
    '                    conn.close_if_unusable_or_obsolete()\n',
)
# What follows the ``try:`` of _close_database: close() in 4.0-4.1 and 4.4.0-4.4.3,
# close_if_unusable_or_obsolete() (celery#4292) in 4.2-4.3. Either is replaced.
CLOSE_CALLS = (
    '                conn.close()\n',
    '                conn.close_if_unusable_or_obsolete()\n',
)
EXCEPT = '            except self.interface_errors:\n'

#: The two methods as Celery 4.4.4 has them: a patched file must contain exactly these.
METHODS_4_4_4 = (
    '    def on_worker_process_init(self, **kwargs):\n',
    '        # use the _ version to avoid DB_REUSE preventing the conn.close() call\n'
    '        self._close_database(force=True)\n'
    '        self.close_cache()\n',
    '    def _close_database(self, force=False):\n'
    '        for conn in self._db.connections.all():\n'
    '            try:\n'
    '                if force:\n'
    '                    conn.close()\n'
    '                else:\n'
    '                    conn.close_if_unusable_or_obsolete()\n'
    '            except self.interface_errors:\n'
    '                pass\n',
)

LICENSE_LINES = (
    'License: the code changed is Celery\'s, BSD-3-Clause, Copyright (c) Ask Solem & '
    'contributors;',
    '  its full notice is in the LICENSE file of celery-django-fixup, distributed with these '
    'patches.',
)


class TransformError(Exception):
    """The upstream text is not what the transformation was written for."""


def _once(source, old, what, release):
    count = source.count(old)
    if count != 1:
        raise TransformError(
            'celery {0}: expected the text for the {1} exactly once in {2}, found it {3} times;'
            ' this release is not one the transformation knows:\n{4}'.format(
                release, what, TARGET, count, old))


def carries_changes(source):
    """True if the source already has both changes exactly as Celery 4.4.4 has them."""
    return all(part in source for part in METHODS_4_4_4)


def transform(source, release):
    """``source`` with both changes applied, or None if it already has them."""
    if carries_changes(source):
        return None
    if 'force=' in source:
        raise TransformError('celery {0}: {1} mentions force= but not in the 4.4.4 form; '
                             'refusing to guess'.format(release, TARGET))
    what, old, new = AFTER_FORK
    _once(source, old, what, release)
    result = source.replace(old, new)
    what, old, new = SIGNATURE
    matches = [call for call in CLOSE_CALLS if (old + call + EXCEPT) in result]
    if len(matches) != 1:
        raise TransformError(
            'celery {0}: _close_database() does not call exactly one of {1} in its try: block'
            .format(release, ', '.join(call.strip() for call in CLOSE_CALLS)))
    _once(result, old + matches[0] + EXCEPT, what, release)
    result = result.replace(old + matches[0] + EXCEPT, new + EXCEPT)
    if not carries_changes(result):
        raise TransformError('celery {0}: the transformed file does not hold the two methods '
                             'as Celery 4.4.4 has them'.format(release))
    return result


def header(name, releases, source):
    """The text before the diff: what it is for, where the changes come from, the licence."""
    lines = [
        'Upstream backport for {0}: Celery 4.4.4\'s own fix-up, which is NOT what '
        'celery-django-fixup does'.format(TARGET),
        'Applies-To: celery {0}'.format(', '.join(releases)),
    ]
    if 'conn.close_if_unusable_or_obsolete()' in source:
        lines.append('Upstream: celery/celery#4292 close_if_unusable_or_obsolete() at task '
                     'boundaries (already in these releases)')
    else:
        lines.append('Upstream: celery/celery#4292 close_if_unusable_or_obsolete() instead of '
                     'close() at task boundaries')
    lines += [
        'Upstream: celery/celery#6134 _close_database(force=True) in the prefork child after '
        'fork',
        'Result: _close_database() and on_worker_process_init() exactly as in Celery 4.4.4, '
        'which needs no patch',
        'Record only: Celery 4.4.4 still loses connections in the ways the celery-django-fixup '
        'README lists;',
        '  "celery-django-fixup diff" shows the package\'s own change, method by method.',
        'To apply it anyway, from the site-packages directory that holds celery/:',
        '  patch -p1 --dry-run < {0} && patch -p1 < {0}'.format(name),
    ]
    lines += list(LICENSE_LINES)
    lines.append('Generated by scripts/make_patches.py from the published release; '
                 'regenerate it, do not edit it.')
    return '\n'.join(lines) + '\n'


def make_diff(name, releases, source, release):
    """The diff file text for ``releases``, generated from one of them (``release``)."""
    patched = transform(source, release)
    if patched is None:
        raise TransformError('celery {0} already carries both changes, yet {1} lists it'
                             .format(release, name))
    body = ''.join(difflib.unified_diff(
        source.splitlines(True), patched.splitlines(True),
        'a/' + TARGET, 'b/' + TARGET, n=3))
    return header(name, releases, source) + body


def group_of(release):
    for name, releases in PATCHES:
        if release in releases:
            return name, releases
    if release in CARRIED:
        return None, None
    raise TransformError('celery {0} is not in the table of this script; supported: {1}'
                         .format(release, ', '.join(RELEASES)))


def _decode(data):
    return data.decode('utf-8')


def sources_from_wheels(directory):
    """{release: django.py text} from ``celery-X-*.whl`` files in ``directory``."""
    sources = {}
    for path in sorted(glob.glob(os.path.join(directory, 'celery-*.whl'))):
        release = os.path.basename(path).split('-')[1]
        with zipfile.ZipFile(path) as wheel:
            sources[release] = _decode(wheel.read(TARGET))
    if not sources:
        raise TransformError('no celery-*.whl in {0}'.format(directory))
    return sources


def source_installed():
    """{release: django.py text} for the Celery importable by this interpreter."""
    import celery
    release = '.'.join(str(part) for part in celery.VERSION[:3])
    path = os.path.join(os.path.dirname(os.path.abspath(celery.__file__)), 'fixups', 'django.py')
    with io.open(path, encoding='utf-8', newline='') as fh:
        return {release: fh.read()}


def download(directory):
    if not os.path.isdir(directory):
        os.makedirs(directory)
    for release in RELEASES:
        if glob.glob(os.path.join(directory, 'celery-{0}-*.whl'.format(release))):
            continue
        subprocess.check_call([sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps',
                               '--only-binary', ':all:', 'celery==' + release,
                               '-d', directory])


def generate(sources):
    """{file name: text} for every group with a release in ``sources``; checks the table."""
    results = {}
    origin = {}
    for release in sorted(sources, key=lambda r: tuple(int(p) for p in r.split('.'))):
        name, releases = group_of(release)
        if name is None:
            if transform(sources[release], release) is not None:
                raise TransformError('celery {0} is listed as carrying both changes, but its '
                                     '{1} does not'.format(release, TARGET))
            continue
        text = make_diff(name, releases, sources[release], release)
        if name in results and results[name] != text:
            raise TransformError(
                'celery {0} and {1} share {2} in the table, but their diffs differ; give them '
                'separate entries'.format(origin[name], release, name))
        results.setdefault(name, text)
        origin.setdefault(name, release)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument('--wheels', metavar='DIR', help='directory of pip-downloaded wheels')
    where.add_argument('--download', metavar='DIR',
                       help='pip download every supported release into DIR, then use it')
    where.add_argument('--installed', action='store_true',
                       help='only the diff for the Celery installed in this interpreter')
    parser.add_argument('--out', metavar='DIR',
                        default=os.path.join(os.path.dirname(os.path.dirname(
                            os.path.abspath(__file__))), 'patches', 'upstream-backports'),
                        help='where the .diff files go (default: the repository\'s '
                             'patches/upstream-backports/)')
    parser.add_argument('--check', action='store_true',
                        help='compare with the files in --out instead of writing them')
    args = parser.parse_args(argv)

    if args.download:
        download(args.download)
    try:
        sources = source_installed() if args.installed else sources_from_wheels(
            args.wheels or args.download)
        results = generate(sources)
    except TransformError as exc:
        print('make_patches: error: {0}'.format(exc), file=sys.stderr)
        return 2
    complete = set(RELEASES) <= set(sources)
    if not args.installed and not complete:
        missing = sorted(set(RELEASES) - set(sources))
        print('make_patches: note: not checked, no wheel for celery {0}'.format(
            ', '.join(missing)), file=sys.stderr)

    status = 0
    if not results:
        print('celery {0}: already carries both changes, no diff needed'.format(
            ', '.join(sorted(sources))))
    for name in sorted(results):
        path = os.path.join(args.out, name)
        if args.check:
            try:
                with io.open(path, encoding='utf-8', newline='') as fh:
                    current = fh.read()
            except IOError:
                current = None
            if current != results[name]:
                print('{0}: differs from the generated diff'.format(path))
                status = 1
            else:
                print('{0}: up to date'.format(path))
            continue
        if not os.path.isdir(args.out):
            os.makedirs(args.out)
        with io.open(path, 'w', encoding='utf-8', newline='\n') as fh:
            fh.write(results[name])
        print('wrote {0}'.format(path))
    if complete and os.path.isdir(args.out):
        expected = set(name for name, _ in PATCHES)
        for stale in sorted(set(os.listdir(args.out)) - expected):
            if stale.endswith('.diff'):
                print('{0}: not generated by this script; remove it'.format(
                    os.path.join(args.out, stale)))
                status = 1
    return status


if __name__ == '__main__':
    sys.exit(main())
