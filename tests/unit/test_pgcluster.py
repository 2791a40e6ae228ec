"""The throwaway PostgreSQL cluster used by destructive tests, ``verify`` and the TLS benchmark.

Every test here runs a real server. They are skipped when no PostgreSQL server binaries or no
psycopg2 are installed, and fail instead when ``CI=true``: a CI job must not pass by skipping.
"""
from __future__ import absolute_import, print_function

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from celery_django_fixup.harness import pgcluster
from celery_django_fixup.harness.pgcluster import SHARED_PORT, PgCluster, PgClusterError

IN_CI = os.environ.get('CI', '').strip().lower() in ('1', 'true', 'yes')
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _missing(reason):
    if IN_CI:
        pytest.fail('CI=true and ' + reason)
    pytest.skip(reason)


@pytest.fixture(scope='module')
def psycopg2():
    reason = PgCluster.why_unavailable()
    if reason:
        _missing(reason)
    try:
        import psycopg2
    except ImportError:
        _missing('psycopg2 is not installed')
    return psycopg2


@pytest.fixture(scope='module')
def shared(psycopg2):
    """One cluster for the tests that do not break it."""
    with PgCluster(settings={'max_connections': 17, 'statement_timeout': '7s'}) as pg:
        yield pg


def _alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # A zombie still answers kill(0); it is not running.
    try:
        with open('/proc/{0}/stat'.format(pid)) as fh:
            return fh.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (IOError, OSError):
        return True


def _wait_until(predicate, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _accepts(port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(1)
    try:
        sock.connect(('127.0.0.1', port))
        return True
    except (socket.error, OSError):
        return False
    finally:
        sock.close()


def _setting(pg, name, **kwargs):
    conn = pg.connect(**kwargs)
    try:
        cursor = conn.cursor()
        cursor.execute('SELECT current_setting(%s)', (name,))
        return cursor.fetchone()[0]
    finally:
        conn.close()


def _backend_pid(conn):
    cursor = conn.cursor()
    cursor.execute('SELECT pg_backend_pid()')
    return cursor.fetchone()[0]


# -- no server needed ----------------------------------------------------------------------

def test_reserved_settings_are_refused():
    with pytest.raises(ValueError) as info:
        PgCluster(settings={'port': SHARED_PORT})
    assert 'port' in str(info.value)


def test_missing_binaries_are_reported():
    assert not PgCluster.is_available(bindir='/nonexistent')
    assert '/nonexistent' in PgCluster.why_unavailable(bindir='/nonexistent')


def test_url_before_start_is_an_error():
    with pytest.raises(PgClusterError):
        PgCluster().url()


# -- one running server --------------------------------------------------------------------

def test_private_server_with_requested_settings(shared, psycopg2):
    assert shared.running
    assert shared.port != SHARED_PORT
    assert shared.dsn == {'host': '127.0.0.1', 'port': shared.port, 'user': 'postgres'}
    assert _setting(shared, 'max_connections') == '17'
    assert _setting(shared, 'statement_timeout') == '7s'
    assert _setting(shared, 'fsync') == 'off'
    assert _setting(shared, 'listen_addresses') == '127.0.0.1'
    assert _setting(shared, 'unix_socket_directories') == ''
    assert _setting(shared, 'data_directory', dbname='template1') == shared.data_dir
    assert not shared.ssl and _setting(shared, 'ssl') == 'off'


def test_url_and_django_settings_reach_the_server(shared, psycopg2):
    name = shared.create_database('url_db')
    url = shared.url(name, connect_timeout=5)
    assert url == 'postgresql://postgres@127.0.0.1:{0}/url_db?connect_timeout=5'.format(
        shared.port)
    conn = psycopg2.connect(url)
    try:
        cursor = conn.cursor()
        cursor.execute('SELECT current_database(), current_user, inet_server_port()')
        assert cursor.fetchone() == ('url_db', 'postgres', shared.port)
    finally:
        conn.close()
    django = shared.django_settings(name, sslmode='disable')
    assert django['ENGINE'] == 'django.db.backends.postgresql'
    assert (django['HOST'], django['PORT'], django['NAME']) == (
        '127.0.0.1', str(shared.port), 'url_db')
    assert django['OPTIONS'] == {'sslmode': 'disable'}


def test_count_and_terminate_client_sessions(shared, psycopg2):
    name = shared.create_database('count_db')
    conns = [shared.connect(name) for _ in range(3)]
    try:
        for conn in conns:
            _backend_pid(conn)
        assert shared.count_connections(name) == 3
        assert shared.count_connections() >= 3
        assert shared.terminate_backends(name) == 3
        assert _wait_until(lambda: shared.count_connections(name) == 0)
        for conn in conns:
            with pytest.raises((psycopg2.OperationalError, psycopg2.InterfaceError)):
                _backend_pid(conn)
    finally:
        for conn in conns:
            conn.close()


# -- destructive: a server each ------------------------------------------------------------

@pytest.mark.parametrize('mode', ['fast', 'immediate'])
def test_restart_breaks_open_connections_and_new_ones_work(psycopg2, mode):
    with PgCluster() as pg:
        port, pid = pg.port, pg.pid
        old = pg.connect()
        old_backend = _backend_pid(old)
        started = time.time()
        pg.restart(mode)
        elapsed = time.time() - started
        assert pg.running and pg.port == port and pg.pid != pid
        assert not _alive(pid) and not _alive(old_backend)
        with pytest.raises((psycopg2.OperationalError, psycopg2.InterfaceError)):
            _backend_pid(old)
        old.close()
        new = pg.connect()
        try:
            assert _backend_pid(new) != old_backend
        finally:
            new.close()
        assert elapsed < 10, 'restart took {0:.2f}s'.format(elapsed)


def test_stop_then_start_keeps_data_and_port(psycopg2):
    with PgCluster() as pg:
        pg.create_database('kept')
        port = pg.port
        pg.stop()
        assert not pg.running and not _accepts(port)
        pg.start()
        assert pg.port == port
        assert pg.fetchall('SELECT 1', dbname='kept') == [(1,)]


def test_ssl_require_works(psycopg2):
    with PgCluster(ssl=True) as pg:
        conn = psycopg2.connect(pg.url(sslmode='require'))
        try:
            cursor = conn.cursor()
            cursor.execute('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')
            assert cursor.fetchone() == (True,)
        finally:
            conn.close()
        # Not ssl_only: a plain connection is still accepted, and is plain.
        conn = pg.connect(sslmode='disable')
        try:
            cursor = conn.cursor()
            cursor.execute('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')
            assert cursor.fetchone() == (False,)
        finally:
            conn.close()


def test_ssl_only_refuses_plain_and_verifies_against_its_certificate(psycopg2):
    with PgCluster(ssl_only=True) as pg:
        with pytest.raises(psycopg2.OperationalError) as info:
            psycopg2.connect(pg.url(sslmode='disable'))
        assert 'no encryption' in str(info.value) or 'pg_hba.conf' in str(info.value)
        conn = psycopg2.connect(pg.url(sslmode='verify-full', sslrootcert=pg.cert_file))
        try:
            cursor = conn.cursor()
            cursor.execute('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')
            assert cursor.fetchone() == (True,)
        finally:
            conn.close()


def test_cleanup_leaves_no_process_and_no_directory(psycopg2):
    pg = PgCluster().start()
    base, port, postmaster = pg.base_dir, pg.port, pg.pid
    conn = pg.connect()
    backend = _backend_pid(conn)
    children = pgcluster._children_of(postmaster)
    assert backend in children
    pg.cleanup()
    conn.close()
    assert not os.path.exists(base)
    assert not _alive(postmaster)
    assert not [pid for pid in children if _alive(pid)]
    assert not _accepts(port)
    assert not pg.running and pg.base_dir is None
    pg.cleanup()  # idempotent


def test_a_port_taken_before_the_server_binds_it_is_replaced(psycopg2, monkeypatch):
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.bind(('127.0.0.1', 0))
    squatter.listen(1)
    taken = squatter.getsockname()[1]
    ports = [taken, pgcluster._free_port()]
    monkeypatch.setattr(pgcluster, '_free_port', lambda: ports.pop(0))
    try:
        with PgCluster() as pg:
            assert pg.port != taken and not ports
            assert 'Address already in use' in pg.log_tail()
            assert pg.fetchall('SELECT inet_server_port()') == [(pg.port,)]
    finally:
        squatter.close()


def test_failed_start_raises_with_the_log_and_leaves_nothing(psycopg2, monkeypatch):
    made = []
    real_mkdtemp = pgcluster.tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        made.append(real_mkdtemp(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(pgcluster.tempfile, 'mkdtemp', mkdtemp)
    pg = PgCluster(settings={'max_connections': -5})
    with pytest.raises(PgClusterError) as info:
        pg.start()
    assert 'max_connections' in str(info.value)  # the server's own complaint, from its log
    assert len(made) == 1 and not os.path.exists(made[0])
    assert not pg.running


def test_a_step_over_its_time_limit_is_killed(psycopg2, monkeypatch):
    made = []
    real_mkdtemp = pgcluster.tempfile.mkdtemp
    monkeypatch.setattr(pgcluster.tempfile, 'mkdtemp',
                        lambda *a, **k: made.append(real_mkdtemp(*a, **k)) or made[-1])
    started = time.time()
    with pytest.raises(PgClusterError) as info:
        PgCluster(timeout=0.05).start()
    assert 'initdb did not finish within' in str(info.value)
    assert time.time() - started < 5
    assert len(made) == 1 and not os.path.exists(made[0])


# -- the safety nets, in a separate interpreter ---------------------------------------------

SCRIPT = textwrap.dedent('''
    import sys, time
    from celery_django_fixup.harness.pgcluster import PgCluster
    pg = PgCluster().start()
    sys.stdout.write('%d %s\\n' % (pg.pid, pg.base_dir))
    sys.stdout.flush()
    if sys.argv[1] == 'hang':
        time.sleep(60)
''')


def _spawn(mode):
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [REPO_ROOT, env.get('PYTHONPATH')]))
    proc = subprocess.Popen([sys.executable, '-c', SCRIPT, mode], stdout=subprocess.PIPE,
                            env=env)
    line = proc.stdout.readline().decode('ascii').split()
    assert len(line) == 2, 'the script did not start a cluster'
    return proc, int(line[0]), line[1]


def test_exit_without_cleanup_stops_and_removes_the_cluster(psycopg2):
    proc, postmaster, base = _spawn('exit')
    proc.wait()
    assert proc.returncode == 0
    assert not _alive(postmaster)
    assert not os.path.exists(base)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='parent-death signal: Linux')
def test_server_stops_when_its_parent_is_killed(psycopg2):
    proc, postmaster, base = _spawn('hang')
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _wait_until(lambda: not _alive(postmaster)), 'server outlived its killed parent'
    finally:
        if _alive(postmaster):
            os.kill(postmaster, signal.SIGKILL)
        # No exit handler ran in a killed process: its directory is ours to remove.
        subprocess.call(['rm', '-rf', base])
