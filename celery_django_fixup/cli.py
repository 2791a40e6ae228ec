"""The ``celery-django-fixup`` command (also ``python -m celery_django_fixup``).

Exit status: 0 success, 1 the answer is "no" (verify failed, patch not active), 2 bad input.
"""
from __future__ import absolute_import, print_function

import argparse
import json
import os
import signal
import sys

__all__ = ('main',)


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """Argument errors in one line, like every other bad input (argparse prints the usage
    first); ``--help`` still shows it."""

    def error(self, message):
        self.exit(2, '{0}: error: {1} (see {0} --help)\n'.format(self.prog, message))


def _positive(kind):
    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError('not a number: {0!r}'.format(text))
        if value <= 0:
            raise argparse.ArgumentTypeError('must be positive, not {0!r}'.format(text))
        return value
    convert.__name__ = kind.__name__
    return convert


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


def cmd_verify(args):
    from .verify import Options, Progress, RunError, VerifyError, format_report, run_verify
    options = Options(tasks=args.tasks, concurrency=args.concurrency, pool=args.pool,
                      database=args.database, broker=args.broker, hang_after=args.hang_after,
                      progress=not args.no_progress)

    def terminated(signum, frame):
        # A plain SIGTERM would end this process without its clean-up: the workers (each in
        # a session of its own) would be left running.
        raise KeyboardInterrupt()

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        report = run_verify(options, Progress(options.progress))
    except VerifyError as exc:
        raise UsageError(str(exc))
    except RunError as exc:
        print('celery-django-fixup verify: FAILED: {0}'.format(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('celery-django-fixup verify: interrupted; the workers and the throwaway server '
              'were stopped', file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        _print_json(report)
    else:
        print('\n'.join(format_report(report)))
    return 0 if report['ok'] else 1


def build_parser():
    parser = _Parser(
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

    from .verify import DEFAULT_CONCURRENCY, DEFAULT_HANG_AFTER, DEFAULT_TASKS, POOLS
    verify = sub.add_parser(
        'verify', help='run real workers with Celery\'s fix-up and the patched one, and compare',
        description='Run a real worker with Celery\'s own Django fix-up, then one with the '
                    'patched fix-up, the same tasks each, and print what the database saw. '
                    'With no --database and --broker nothing needs to be set up: a throwaway '
                    'PostgreSQL server (or SQLite) and a filesystem broker are used. Exit '
                    'status 0 when the patched worker reused connections with no failed task.')
    verify.add_argument('--tasks', type=_positive(int), default=DEFAULT_TASKS, metavar='N',
                        help='tasks per run (default %(default)s)')
    verify.add_argument('-c', '--concurrency', type=_positive(int), default=DEFAULT_CONCURRENCY,
                        metavar='N', help='worker concurrency (default %(default)s)')
    verify.add_argument('-P', '--pool', choices=POOLS, default='prefork',
                        help='worker pool (default %(default)s; the fork scenario needs prefork)')
    verify.add_argument('--database', metavar='URL',
                        help='your own database instead of a throwaway one: postgresql://, '
                             'mysql:// or sqlite:///path; nothing is created in it')
    verify.add_argument('--broker', metavar='URL',
                        help='your own broker (redis://, amqp://) instead of a folder')
    verify.add_argument('--hang-after', type=_positive(float), default=DEFAULT_HANG_AFTER,
                        metavar='SECONDS',
                        help='a worker that finishes no task for this long is reported as '
                             'hung (default %(default)s)')
    verify.add_argument('--json', action='store_true', help='print JSON')
    verify.add_argument('--no-progress', action='store_true',
                        help='print nothing on stderr while the workers run')
    verify.set_defaults(func=cmd_verify)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print('celery-django-fixup {0}: error: {1}'.format(args.command, exc), file=sys.stderr)
        return 2
