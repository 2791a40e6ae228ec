"""The ``celery-django-fixup`` command (also ``python -m celery_django_fixup``).

Exit status: 0 success, 1 the answer is "no" (verify failed, patch not active), 2 bad input.
"""
from __future__ import absolute_import, print_function

import argparse
import json
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


def cmd_diff(args):
    if args.celery is not None:
        raise UsageError(
            '--celery is no longer taken: the diff is read from the Celery installed with '
            'this package, so run it where Celery {0} is installed'.format(args.celery))
    from .showdiff import DiffError, format_report, report
    try:
        data = report()
    except DiffError as exc:
        raise UsageError(str(exc))
    if args.json:
        _print_json(data)
    else:
        print('\n'.join(format_report(data)))
    return 0


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
        'diff', help="what the patched fix-up changes in the installed Celery's, method by "
                     'method, and why',
        description="Every method the patched DjangoWorkerFixup overrides or adds, with its "
                    "reason, a unified diff of the installed Celery's source against the code "
                    'that runs instead, and the source of the celery-django-fixup helpers it '
                    'calls.')
    # Taken only to say why it is not: the upstream side is the installed Celery's own source.
    diff.add_argument('--celery', metavar='VERSION', help=argparse.SUPPRESS)
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
