"""The ``celery-django-fixup`` command (also ``python -m celery_django_fixup``).

Exit status: 0 success, 1 the answer is "no" (verify failed, patch not active), 2 bad input.
"""
from __future__ import absolute_import, print_function

import argparse
import json
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
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print('celery-django-fixup {0}: error: {1}'.format(args.command, exc), file=sys.stderr)
        return 2
