"""The ``celery-django-fixup`` command (also ``python -m celery_django_fixup``).

Exit status: 0 success, 1 the answer is "no" (verify failed, patch not active), 2 bad input.
"""
from __future__ import absolute_import, print_function

import argparse
import json
import os
import sys

__all__ = ('main',)


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


def _print_json(data):
    print(json.dumps(data, indent=2, sort_keys=True))


def cmd_check(args):
    from .check import CheckError, format_report, inspect_project
    try:
        facts = inspect_project(args.app, pool=args.pool, concurrency=args.concurrency)
    except CheckError as exc:
        raise UsageError(str(exc))
    if args.json:
        _print_json(facts)
    else:
        print('\n'.join(format_report(facts)))
    return 0 if facts['patch_active'] else 1


def diff_report(version=None):
    """What this fork changes against the installed (or given) Celery, as a dict."""
    from . import upstream_patches
    from .versions import celery_version
    from .worker import OVERRIDES
    version = tuple(version or celery_version())
    try:
        patch = upstream_patches.patch_for(version)
    except LookupError as exc:
        raise UsageError(str(exc))
    except upstream_patches.PatchError as exc:
        raise UsageError(str(exc))
    installed = version == celery_version()
    report = {
        'celery': '.'.join(str(part) for part in version),
        'patch': os.path.basename(patch.path) if patch is not None and patch.path else None,
        'diff': patch.text if patch is not None else None,
        'overrides': OVERRIDES,
    }
    if installed:
        path, source = upstream_patches.installed_source()
        report['installed_file'] = path
        if patch is None:
            report['applies'] = None
            report['carries_upstream_changes'] = upstream_patches.carries_upstream_changes(source)
        else:
            report['applies'] = patch.applies_to(source)
    return report


def cmd_diff(args):
    version = None
    if args.celery:
        try:
            version = tuple(int(part) for part in args.celery.split('.')[:3])
        except ValueError:
            raise UsageError('--celery takes a release such as 4.3.0, not {0!r}'.format(
                args.celery))
    report = diff_report(version)
    if args.json:
        _print_json(report)
        return 0 if report.get('applies') is not False else 1
    if report['diff'] is None:
        print('# Celery {0} already carries celery#4292 and celery#6134: no patch.'.format(
            report['celery']))
    else:
        print(report['diff'].rstrip('\n'))
    if 'applies' in report:
        if report['applies'] is None:
            state = 'needs none' if report['carries_upstream_changes'] else \
                'needs none, but the installed file does not carry the changes (modified?)'
        else:
            state = 'applies cleanly' if report['applies'] else 'DOES NOT APPLY (modified?)'
        print('\n# Installed {0}: {1}'.format(report['installed_file'], state))
    print('\n# Methods the patched DjangoWorkerFixup overrides, and why:')
    for name in sorted(report['overrides']):
        print('#   {0}: {1}'.format(name, report['overrides'][name]))
    return 0 if report.get('applies') is not False else 1


def build_parser():
    parser = argparse.ArgumentParser(
        prog='celery-django-fixup',
        description='Celery workers that reuse Django database connections safely.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True

    check = sub.add_parser(
        'check', help="what your project's worker will do with its database connections")
    check.add_argument('-A', '--app', required=True,
                       help='the Celery app, as for "celery -A" (e.g. proj)')
    check.add_argument('-P', '--pool', help='the pool the worker runs (default: the app\'s)')
    check.add_argument('-c', '--concurrency', type=int,
                       help='the worker concurrency (default: the app\'s, or the CPU count)')
    check.add_argument('--json', action='store_true', help='print JSON')
    check.set_defaults(func=cmd_check)

    diff = sub.add_parser(
        'diff', help='what this fork changes against the installed Celery (unified diff)')
    diff.add_argument('--celery', metavar='VERSION',
                      help='show the patch for this Celery release instead of the installed one')
    diff.add_argument('--json', action='store_true', help='print JSON')
    diff.set_defaults(func=cmd_diff)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print('celery-django-fixup {0}: error: {1}'.format(args.command, exc), file=sys.stderr)
        return 2
