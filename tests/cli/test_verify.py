"""``celery-django-fixup verify``: real stock and patched workers, compared by what the database
server counted, on the embedded default (nothing set up) and on servers given by URL."""
from __future__ import absolute_import

import json
import os
import re
import socket

import pytest

from celery_django_fixup import cli, verify, versions
from celery_django_fixup.harness.pgcluster import PgCluster

from clihelpers import assert_one_line_error, run_cli

TASKS = 30
#: Seconds without a task finishing before verify calls a worker hung: only the stock worker of
#: 4.2-4.3 in the fork scenario hangs; a healthy worker finishes a task well within it, even
#: on a loaded machine.
HANG_AFTER = 8


def _free_port():
    sock = socket.socket()
    try:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]
    finally:
        sock.close()


def _refused(port):
    sock = socket.socket()
    sock.settimeout(2)
    try:
        sock.connect(('127.0.0.1', port))
    except socket.error:
        return True
    finally:
        sock.close()
    return False


def _cluster_possible():
    if PgCluster.why_unavailable() is not None:
        return False
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return False
    return True


def assert_reuse(report, line, sessions_key):
    """The reuse scenario: stock as its Celery line behaves, the patched worker reusing."""
    entry = report['scenarios']['reuse']
    stock, patched = entry['stock'], entry['patched']
    processes = report['concurrency']
    assert (stock['ok'], patched['ok']) == (TASKS, TASKS), entry
    assert stock['worker_fixup'] == verify.STOCK_CLASS
    assert patched['worker_fixup'] == verify.PATCHED_CLASS
    if line.reuses:
        assert 1 <= stock[sessions_key] <= processes, entry
        assert entry['stock_problem_shown'] is False
    else:
        # Celery 4.0-4.1 and 4.4.0-4.4.3: CONN_MAX_AGE ignored, one session per task.
        assert stock[sessions_key] >= TASKS, entry
        assert entry['stock_problem_shown'] is True
    assert 1 <= patched[sessions_key] <= processes, entry
    assert patched['stop'] == 'stopped', entry


def assert_fork(report, line, sessions_key):
    entry = report['scenarios']['fork']
    stock, patched = entry['stock'], entry['patched']
    if line.after_fork == 'close_if_unusable_or_obsolete':
        # Celery 4.2-4.3: the pool's children use the connection inherited at fork.
        assert stock['failed'] or stock['unfinished'] or stock['stop'] == 'hung', entry
        assert entry['stock_problem_shown'] is True
    else:
        assert stock['ok'] == TASKS and stock['stop'] == 'stopped', entry
    assert patched['ok'] == TASKS and patched['failed'] == 0, entry
    # The parent's session, then one per pool process at most.
    assert 2 <= patched[sessions_key] <= report['concurrency'] + 1, entry
    assert patched['stop'] == 'stopped', entry


@pytest.mark.worker
def test_embedded_default_needs_no_service():
    """The README's command: a throwaway PostgreSQL server (or SQLite) and a folder broker."""
    line = versions.line_for()
    result = run_cli(['verify', '--tasks', str(TASKS), '--json', '--hang-after',
                      str(HANG_AFTER)], timeout=240)
    assert result.status == 0, result
    assert 'Traceback' not in result.err, result
    report = json.loads(result.out)
    assert report['ok'] is True, report['reason']
    assert report['celery_line'] == line.name
    assert report['database']['embedded'] is True
    assert report['broker'].startswith('filesystem')
    # Progress and status go to stderr, so that stdout stays JSON.
    assert 'stock reuse' in result.err and 'patched reuse' in result.err, result
    if not _cluster_possible():
        if os.environ.get('CI', '').strip().lower() in ('true', '1', 'yes'):
            pytest.fail('CI=true: PostgreSQL server binaries and psycopg2 are required, so '
                        'that verify is tested on its throwaway server', pytrace=False)
        assert report['database']['vendor'] == 'sqlite'
        assert_reuse(report, line, 'worker_connections')
        return
    assert report['database']['vendor'] == 'postgresql'
    for entry in report['scenarios'].values():
        for run in (entry['stock'], entry['patched']):
            # A database per run on a private server: the server's count is this worker's,
            # and must agree with the count made inside the worker.
            assert run['server_sessions'] == run['worker_connections'], entry
    assert_reuse(report, line, 'server_sessions')
    assert_fork(report, line, 'server_sessions')
    # The throwaway server is gone.
    port = int(re.search(r'127\.0\.0\.1:(\d+)', report['database']['description']).group(1))
    assert _refused(port)


@pytest.mark.worker
def test_given_database_and_broker(postgres, broker):
    """On the user's servers: sessions counted by the server on their database, whose other
    clients would be counted too (none here: a scratch database), and nothing left in it."""
    line = versions.line_for()
    name = postgres.create_database(prefix='cdf_cli')
    try:
        url = postgres.url(name)
        # The solo pool keeps this test short; the fork scenario runs in the embedded test.
        result = run_cli(['verify', '--tasks', str(TASKS), '--json', '--database', url,
                          '--broker', broker.url, '-P', 'solo', '--no-progress'], timeout=180)
        assert result.status == 0, result
        assert result.err == '', result
        report = json.loads(result.out)
        database = report['database']
        assert (database['vendor'], database['embedded']) == ('postgresql', False)
        assert "other clients' too" in database['server_counter']
        assert report['concurrency'] == 1
        assert 'needs the prefork pool' in report['scenarios']['fork']['skipped']
        for run in (report['scenarios']['reuse']['stock'],
                    report['scenarios']['reuse']['patched']):
            assert run['server_sessions'] == run['worker_connections'], report
        assert_reuse(report, line, 'server_sessions')
        # verify creates nothing in a database it is given.
        tables = postgres.__class__(url, admin_database=name)
        try:
            assert tables._query("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON "
                                 "n.oid = c.relnamespace WHERE n.nspname NOT IN "
                                 "('pg_catalog', 'information_schema', 'pg_toast')")[0][0] == 0
        finally:
            tables.close()
    finally:
        postgres.drop_database(name)


@pytest.mark.worker
def test_sqlite_when_no_postgresql_server_binaries(monkeypatch):
    """Without PostgreSQL's server binaries: SQLite, counted in the worker, and said so."""
    monkeypatch.setattr(PgCluster, 'why_unavailable',
                        classmethod(lambda cls, *args, **kwargs: 'no server binaries (test)'))
    line = versions.line_for()
    report = verify.run_verify(verify.Options(tasks=TASKS, hang_after=HANG_AFTER, progress=False))
    assert report['ok'] is True, report['reason']
    assert report['database']['vendor'] == 'sqlite'
    assert 'no server binaries (test)' in report['database']['description']
    assert 'needs PostgreSQL or MySQL' in report['scenarios']['fork']['skipped']
    assert report['scenarios']['reuse']['patched']['server_sessions'] is None
    assert_reuse(report, line, 'worker_connections')
    text = '\n'.join(verify.format_report(report))
    assert '"sessions (server)": n/a, SQLite has no server' in text
    assert '"connections (worker)": counted in the worker' in text
    assert text.endswith('OK: {0}.'.format(report['reason']))


# -- bad input: one line, exit status 2, before any worker starts ----------------------------

def test_unreachable_database_as_a_user_sees_it():
    url = 'postgresql://postgres@127.0.0.1:{0}/nowhere'.format(_free_port())
    assert_one_line_error(run_cli(['verify', '--database', url]),
                          '--database {0}: cannot connect'.format(url))


@pytest.mark.parametrize('args,fragment', [
    (['--database', 'oracle://scott@db/orcl'], "unsupported database URL scheme 'oracle'"),
    (['--database', 'postgresql://postgres@127.0.0.1:notaport/x'], 'the port is not a number'),
    (['--database', 'postgresql://postgres:s3cret@127.0.0.1:{port}'], 'must name a database'),
    (['--database', 'sqlite://'], 'must be a file in an existing folder'),
    (['--broker', 'redis://127.0.0.1:{port}/0'], '--broker redis://127.0.0.1:{port}/0: cannot '
                                                 'connect'),
    (['--broker', 'nosuchtransport://x'], '--broker nosuchtransport://x: cannot connect'),
    (['--tasks', '3'], '--tasks must be at least 6 with 2 processes'),
    (['--tasks', 'many'], "argument --tasks: not a number: 'many'"),
    (['-P', 'gevent'], "argument -P/--pool: invalid choice: 'gevent'"),
])
def test_bad_input(args, fragment, capsys):
    port = str(_free_port())
    status = main_status(['verify'] + [arg.replace('{port}', port) for arg in args])
    out, err = capsys.readouterr()
    assert status == 2 and out == '', (status, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('celery-django-fixup verify: error: '), err
    assert fragment.replace('{port}', port) in lines[0], err
    assert 's3cret' not in err


def main_status(argv):
    """``cli.main`` in this process; argument errors leave argparse through SystemExit."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code


def test_database_that_does_not_exist(postgres, capsys):
    url = postgres.url('cdf_no_such_database')
    assert cli.main(['verify', '--database', url]) == 2
    err = capsys.readouterr()[1]
    assert len(err.strip().splitlines()) == 1, err
    assert 'database "cdf_no_such_database" does not exist' in err


def test_unsupported_celery(monkeypatch, capsys):
    first, newest = versions.SUPPORTED_CELERY
    unsupported = (newest[0] + 1, 0, 0)
    monkeypatch.setattr(versions, 'celery_version', lambda: unsupported)
    assert cli.main(['verify']) == 2
    err = capsys.readouterr()[1]
    assert len(err.strip().splitlines()) == 1, err
    assert 'supports Celery {0} to {1}; Celery {2} is installed'.format(
        *('.'.join(str(part) for part in version)
          for version in (first, newest, unsupported))) in err


def test_pool_the_installed_celery_lacks():
    """Celery 4.4 brought the ``threads`` pool: before it, -P threads is bad input."""
    try:  # Celery 4.4's threads pool also needs concurrent.futures (not on Python 2.7)
        import celery.concurrency.thread  # noqa: F401
        available = True
    except ImportError:
        available = False
    if available:
        verify.check_pool('threads')
    else:
        with pytest.raises(verify.VerifyError) as caught:
            verify.check_pool('threads')
        assert '-P threads' in str(caught.value)
    verify.check_pool('prefork')
    verify.check_pool('solo')
