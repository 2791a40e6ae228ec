"""A private, throwaway PostgreSQL server for tests that break database connections on purpose.

Restarting a server, terminating backends or timing out idle sessions cannot be done to a
shared database without hurting everyone else using it, so destructive tests, ``verify`` and
the TLS benchmark start their own server::

    with PgCluster(ssl=True, settings={'idle_session_timeout': '2s'}) as pg:
        pg.create_database('app')
        url = pg.url('app', sslmode='require')
        ...
        pg.restart()                 # every open connection breaks, new ones work

The server is built from the binaries of ``pg_config --bindir`` (or the newest
``/usr/lib/postgresql/*/bin``), lives in a temporary directory, listens only on 127.0.0.1 on a
free port (never 5432, never a Unix socket) with trust authentication, and trades durability
for speed (``fsync=off``). ``postmaster`` is run directly as a child process rather than
through ``pg_ctl``: its exact pid is known, readiness and shutdown are polled every 10 ms
instead of ``pg_ctl``'s 100 ms, and a server that will not stop can still be killed.

Nothing is left behind: :meth:`PgCluster.cleanup` (also run by the context manager and, as a
safety net, at interpreter exit) stops the server and removes the directory; on Linux the
server also shuts down by itself if the process that started it dies without cleaning up.

PostgreSQL 10 or newer is required (readiness is read from the status line of
``postmaster.pid``). Python 2.7 and 3.6+; psycopg2 is imported only by the methods that
connect.
"""
from __future__ import absolute_import, print_function

import atexit
import errno
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

try:
    from urllib.parse import quote, urlencode
except ImportError:  # Python 2
    from urllib import quote, urlencode

try:
    import pwd
except ImportError:  # not POSIX: is_available() says no
    pwd = None

__all__ = ('PgCluster', 'PgClusterError', 'find_bindir')

#: The port of a system-wide server; a private cluster never uses it.
SHARED_PORT = 5432

REQUIRED_BINARIES = ('initdb', 'postgres')

#: Settings the cluster manages itself: overriding them would expose or break it.
RESERVED_SETTINGS = frozenset((
    'port', 'listen_addresses', 'unix_socket_directories', 'unix_socket_directory',
    'data_directory', 'hba_file', 'ident_file', 'ssl', 'ssl_cert_file', 'ssl_key_file',
))

#: Speed over durability: the data is thrown away anyway.
DEFAULT_SETTINGS = (
    ('fsync', False),
    ('synchronous_commit', False),
    ('full_page_writes', False),
    ('shared_buffers', '16MB'),
    ('max_connections', 100),
    # No background sessions of its own that a test counting connections has to exclude.
    ('autovacuum', False),
    ('log_min_messages', 'warning'),
)

STOP_SIGNALS = {
    'smart': signal.SIGTERM,      # wait for clients to disconnect
    'fast': signal.SIGINT,        # terminate clients, then a clean shutdown
    'immediate': signal.SIGQUIT,  # kill everything now; crash recovery at the next start
}

POLL_INTERVAL = 0.01
LOG_TAIL_LINES = 40
PR_SET_PDEATHSIG = 1


class PgClusterError(RuntimeError):
    """The private server could not be created, started or stopped; the text says why."""


def _is_executable_dir(path):
    return bool(path) and all(os.access(os.path.join(path, name), os.X_OK)
                              for name in REQUIRED_BINARIES)


def _which(name):
    for folder in os.environ.get('PATH', '').split(os.pathsep):
        candidate = os.path.join(folder, name)
        if folder and os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def _version_key(path):
    # '/usr/lib/postgresql/9.6/bin' sorts below '/usr/lib/postgresql/15/bin'.
    match = re.search(r'/(\d+)(?:\.(\d+))?/bin$', path)
    return (int(match.group(1)), int(match.group(2) or 0)) if match else (-1, -1)


def find_bindir():
    """The folder holding ``initdb`` and ``postgres``, or ``None``.

    ``pg_config`` may come from a client-only package (libpq-dev) whose ``--bindir`` has no
    server, so every candidate is checked for the binaries before it is chosen.
    """
    candidates = []
    pg_config = _which('pg_config')
    if pg_config:
        try:
            with open(os.devnull, 'wb') as devnull:
                out = subprocess.Popen([pg_config, '--bindir'], stdout=subprocess.PIPE,
                                       stderr=devnull).communicate()[0]
            candidates.append(out.decode('utf-8', 'replace').strip())
        except OSError:
            pass
    candidates.extend(sorted(glob.glob('/usr/lib/postgresql/*/bin'), key=_version_key,
                             reverse=True))
    initdb = _which('initdb')
    if initdb:
        candidates.append(os.path.dirname(initdb))
    for candidate in candidates:
        if _is_executable_dir(candidate):
            return candidate
    return None


def _free_port():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]
    finally:
        sock.close()


def _conf_value(value):
    if isinstance(value, bool):
        return 'on' if value else 'off'
    if isinstance(value, (int, float)):
        return str(value)
    # Quoted strings are accepted for settings of every type ('5s', '16MB', 'on').
    return "'{0}'".format(str(value).replace("'", "''"))


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def _children_of(pid):
    """Pids whose parent is ``pid`` (Linux ``/proc``; empty elsewhere)."""
    found = []
    for stat in glob.glob('/proc/[0-9]*/stat'):
        try:
            with open(stat) as fh:
                # "pid (comm) state ppid ...": comm may hold spaces, so split after its ')'.
                fields = fh.read().rsplit(')', 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.split('/')[2]))
        except (IOError, OSError, IndexError, ValueError):
            continue
    return found


def _tail(path, lines=LOG_TAIL_LINES):
    try:
        with open(path, 'rb') as fh:
            text = fh.read().decode('utf-8', 'replace')
    except (IOError, OSError):
        return ''
    return '\n'.join(text.splitlines()[-lines:])


def _load_prctl():
    # Resolved here, in the parent: a preexec_fn must not import (the import lock may be held
    # by another thread at the moment of the fork).
    if not sys.platform.startswith('linux'):
        return None
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None


class PgCluster(object):
    """A PostgreSQL server of its own, in a temporary directory, for one test run.

    :param ssl: serve TLS with a self-signed certificate made by the ``openssl`` command
        (``sslmode=require`` works; :attr:`cert_file` can serve as ``sslrootcert`` for
        ``verify-full``, its CN being 127.0.0.1).
    :param ssl_only: refuse connections that are not TLS (``hostssl`` in ``pg_hba.conf``), so
        a benchmark cannot measure plain connections by mistake.
    :param settings: extra ``postgresql.conf`` settings, e.g. ``{'idle_session_timeout': '2s',
        'max_connections': 20}``; booleans become on/off. They override the defaults, but
        not the settings the cluster manages (port, addresses, sockets, TLS files).
    :param user: the database superuser (trust authentication, no password).
    :param os_user: the system account the server runs as when this process is root
        (PostgreSQL refuses to run as root); ignored otherwise.
    :param base_dir: where the temporary directory goes; default the system temp folder.
    :param timeout: seconds allowed to each step (initdb, start, stop) before it is killed.
    :param die_with_parent: on Linux, the server gets SIGQUIT (immediate shutdown) when the
        *thread* that started it ends, so even a killed test run leaves no server running.
        Turn it off to start a cluster from a short-lived thread.
    """

    def __init__(self, ssl=False, ssl_only=False, settings=None, user='postgres',
                 os_user='postgres', bindir=None, base_dir=None, timeout=60.0,
                 die_with_parent=True):
        settings = dict(settings or {})
        reserved = sorted(RESERVED_SETTINGS.intersection(settings))
        if reserved:
            raise ValueError('PgCluster manages these settings itself: {0}'.format(
                ', '.join(reserved)))
        self.ssl = bool(ssl or ssl_only)
        self.ssl_only = bool(ssl_only)
        self.settings = settings
        self.user = user
        self.host = '127.0.0.1'
        self.port = None
        self.bindir = bindir or find_bindir()
        self.timeout = float(timeout)
        self.die_with_parent = die_with_parent
        self.base_dir = None
        self.data_dir = None
        self.log_file = None
        self.cert_file = None
        self._requested_base = base_dir
        self._os_user = os_user
        self._proc = None
        self._initialized = False
        self._owner_pid = os.getpid()
        self._prctl = _load_prctl() if die_with_parent else None

    # -- availability -----------------------------------------------------------------------

    @classmethod
    def why_unavailable(cls, bindir=None, os_user='postgres'):
        """Why no cluster can be started here, or ``None`` when one can."""
        if os.name != 'posix' or pwd is None:
            return 'PgCluster needs a POSIX system'
        if bindir and not _is_executable_dir(bindir):
            return 'no PostgreSQL server binaries (initdb, postgres) in {0}'.format(bindir)
        if not (bindir or find_bindir()):
            return ('no PostgreSQL server binaries (initdb, postgres) found: not in '
                    '`pg_config --bindir`, /usr/lib/postgresql/*/bin or on PATH')
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(os_user)
            except KeyError:
                return ('running as root, and PostgreSQL will not: the system user {0!r} to '
                        'run it as does not exist'.format(os_user))
        return None

    @classmethod
    def is_available(cls, bindir=None, os_user='postgres'):
        """Whether a cluster can be started here (server binaries found, a user to run as)."""
        return cls.why_unavailable(bindir, os_user) is None

    # -- addresses --------------------------------------------------------------------------

    @property
    def running(self):
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self):
        """The postmaster's pid while it runs."""
        return self._proc.pid if self.running else None

    @property
    def dsn(self):
        """Connection pieces: ``{'host', 'port', 'user'}``."""
        return {'host': self.host, 'port': self.port, 'user': self.user}

    def url(self, dbname='postgres', user=None, **params):
        """``postgresql://user@127.0.0.1:port/dbname``; keyword arguments become query
        parameters understood by libpq (``sslmode='require'``, ``connect_timeout=5``...)."""
        self._require_port()
        url = 'postgresql://{0}@{1}:{2}/{3}'.format(
            quote(user or self.user, safe=''), self.host, self.port, quote(dbname, safe=''))
        if params:
            url += '?' + urlencode(sorted(params.items()))
        return url

    def django_settings(self, dbname='postgres', user=None, **options):
        """A ``DATABASES`` entry for this server; ``options`` go to ``OPTIONS`` (libpq's)."""
        self._require_port()
        return {
            'ENGINE': 'django.db.backends.postgresql',
            'NAME': dbname,
            'USER': user or self.user,
            'PASSWORD': '',
            'HOST': self.host,
            'PORT': str(self.port),
            'OPTIONS': dict(options),
        }

    def _require_port(self):
        if self.port is None:
            raise PgClusterError('the cluster has not been started yet: it has no port')

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.cleanup()

    def start(self):
        """Create the cluster the first time, then start the server; a no-op when running.

        Raises :class:`PgClusterError` with the server log's tail when a step fails or takes
        longer than ``timeout``; a first start that fails leaves nothing behind.
        """
        if self.running:
            return self
        first = not self._initialized
        try:
            if first:
                self._create()
            self._start_server()
        except BaseException:
            if first:
                self.cleanup()
            raise
        return self

    def stop(self, mode='fast'):
        """Stop the server (``smart``, ``fast`` or ``immediate``) and wait until it has exited.

        A server still running after ``timeout`` is killed, with its children.
        """
        if mode not in STOP_SIGNALS:
            raise ValueError('mode must be one of {0}'.format(', '.join(sorted(STOP_SIGNALS))))
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return self
        try:
            proc.send_signal(STOP_SIGNALS[mode])
        except OSError:
            pass
        if not self._wait_exit(proc, self.timeout):
            self._kill(proc)
            raise PgClusterError('the PostgreSQL server (pid {0}) did not stop within {1:g}s '
                                 '({2} shutdown) and was killed\n{3}'.format(
                                     proc.pid, self.timeout, mode, self.log_tail()))
        return self

    def restart(self, mode='fast'):
        """Stop (``fast`` by default: clients are disconnected) and start again on the same
        port: every open connection breaks, new ones work. ``immediate`` skips the shutdown
        checkpoint and runs a crash recovery at start instead, as after a server crash."""
        self.stop(mode)
        return self.start()

    def cleanup(self):
        """Stop the server at once and delete its directory; safe to call at any time."""
        try:
            proc, self._proc = self._proc, None
            if proc is not None and proc.poll() is None:
                try:
                    proc.send_signal(STOP_SIGNALS['immediate'])
                except OSError:
                    pass
                if not self._wait_exit(proc, min(self.timeout, 15.0)):
                    self._kill(proc)
        finally:
            _LIVE.pop(id(self), None)
            base, self.base_dir = self.base_dir, None
            self._initialized = False
            self.port = None  # a later start() makes a new cluster, on a newly chosen port
            if base and os.path.isdir(base):
                shutil.rmtree(base, ignore_errors=True)
                if os.path.exists(base):
                    shutil.rmtree(base)  # raise: something is left on disk
        return self

    def log_tail(self, lines=LOG_TAIL_LINES):
        """The last lines of the server log, for error messages."""
        return _tail(self.log_file, lines) if self.log_file else ''

    # -- database helpers (psycopg2, imported here only) ------------------------------------

    def connect(self, dbname='postgres', user=None, **kwargs):
        """A psycopg2 connection to this server; ``kwargs`` go to ``psycopg2.connect``."""
        import psycopg2
        self._require_port()
        kwargs.setdefault('connect_timeout', 10)
        if self.ssl_only:
            kwargs.setdefault('sslmode', 'require')
        return psycopg2.connect(host=self.host, port=self.port, user=user or self.user,
                                dbname=dbname, **kwargs)

    def fetchall(self, sql, params=None, dbname='postgres'):
        """Run one statement in autocommit on a short-lived connection; its rows (or [])."""
        conn = self.connect(dbname)
        try:
            conn.autocommit = True
            cursor = conn.cursor()
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description is not None else []
        finally:
            conn.close()

    def create_database(self, name, owner=None):
        """``CREATE DATABASE name``; returns ``name``."""
        sql = 'CREATE DATABASE {0}'.format(_ident(name))
        if owner:
            sql += ' OWNER {0}'.format(_ident(owner))
        self.fetchall(sql)
        return name

    def count_connections(self, dbname=None):
        """Client sessions open on the server (or on ``dbname``), not counting the one that
        asks. Counted server-side, so connections a client believes open but the server has
        dropped are not counted, and the reverse."""
        rows = self.fetchall(_BACKENDS_SQL.format(select='count(*)', where=_db_filter(dbname)),
                             (dbname,) if dbname else None)
        return int(rows[0][0])

    def terminate_backends(self, dbname=None):
        """``pg_terminate_backend`` every client session (or those on ``dbname``), as a
        failover or an administrator would; returns how many were signalled."""
        rows = self.fetchall(_BACKENDS_SQL.format(select='pg_terminate_backend(pid)',
                                                  where=_db_filter(dbname)),
                             (dbname,) if dbname else None)
        return sum(1 for row in rows if row[0])

    # -- internals --------------------------------------------------------------------------

    def _run_as(self):
        """``(uid, gid, name)`` of the account the server runs as, or None for this process'."""
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(self._os_user)
        except KeyError:
            raise PgClusterError(
                'PostgreSQL refuses to run as root and there is no system user {0!r} to run '
                'it as (pass os_user=...)'.format(self._os_user))
        return entry.pw_uid, entry.pw_gid, entry.pw_name, entry.pw_dir

    def _choose_base(self, run_as):
        if self._requested_base:
            return self._requested_base
        if run_as is None:
            return tempfile.gettempdir()
        # The server's account must be able to reach its directory: a TMPDIR under /root
        # is not reachable, /tmp is.
        for candidate in (tempfile.gettempdir(), '/tmp', '/var/tmp'):
            if _traversable_by(candidate, run_as[0], run_as[1]):
                return candidate
        raise PgClusterError('no temporary folder reachable by the {0!r} account; pass '
                             'base_dir='.format(run_as[2]))

    def _create(self):
        if not self.bindir or not _is_executable_dir(self.bindir):
            raise PgClusterError(self.why_unavailable(self.bindir, self._os_user)
                                 or 'no PostgreSQL server binaries in {0}'.format(self.bindir))
        run_as = self._run_as()
        self.base_dir = tempfile.mkdtemp(prefix='pgcluster-', dir=self._choose_base(run_as))
        _LIVE[id(self)] = self
        if run_as is not None:
            os.chown(self.base_dir, run_as[0], run_as[1])
        self.data_dir = os.path.join(self.base_dir, 'data')
        self.log_file = os.path.join(self.base_dir, 'server.log')
        self._run('initdb', [
            os.path.join(self.bindir, 'initdb'), '-D', self.data_dir, '-U', self.user,
            '--auth=trust', '--encoding=UTF8', '--locale=C',
            '-N',  # --no-sync: nothing here has to survive a power cut
        ], as_server=True)
        if self.ssl:
            self._make_certificate(run_as)
        hba = 'hostssl' if self.ssl_only else 'host'
        with open(os.path.join(self.data_dir, 'pg_hba.conf'), 'w') as fh:
            fh.write('# TCP on loopback only; no Unix socket is created.\n')
            fh.write('{0}  all  all  127.0.0.1/32  trust\n'.format(hba))
        with open(os.path.join(self.data_dir, 'postgresql.conf'), 'a') as fh:
            fh.write("\ninclude 'pgcluster.conf'\n")
        self._initialized = True

    def _make_certificate(self, run_as):
        openssl = _which('openssl')
        if not openssl:
            raise PgClusterError('ssl=True needs the openssl command (Debian package openssl)')
        key = os.path.join(self.data_dir, 'server.key')
        self.cert_file = os.path.join(self.data_dir, 'server.crt')
        # An EC key is generated in milliseconds where RSA takes a noticeable fraction of a
        # second, and every supported libpq accepts it.
        self._run('openssl', [
            openssl, 'req', '-new', '-x509', '-nodes', '-days', '30',
            '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
            '-subj', '/CN=127.0.0.1', '-keyout', key, '-out', self.cert_file,
        ], as_server=False)
        # The server refuses a key readable by others or not owned by its account.
        os.chmod(key, 0o600)
        if run_as is not None:
            for path in (key, self.cert_file):
                os.chown(path, run_as[0], run_as[1])

    def _write_settings(self):
        conf = [('listen_addresses', self.host), ('port', self.port),
                ('unix_socket_directories', '')]
        conf.extend(DEFAULT_SETTINGS)
        if self.ssl:
            conf.extend([('ssl', True), ('ssl_cert_file', 'server.crt'),
                         ('ssl_key_file', 'server.key')])
        conf.extend(sorted(self.settings.items()))
        path = os.path.join(self.data_dir, 'pgcluster.conf')
        with open(path, 'w') as fh:
            fh.write('# Written by celery_django_fixup.harness.pgcluster; later lines win.\n')
            for name, value in conf:
                fh.write('{0} = {1}\n'.format(name, _conf_value(value)))
        run_as = self._run_as()
        if run_as is not None:
            os.chown(path, run_as[0], run_as[1])

    def _start_server(self):
        # The port is chosen once and kept, so a restart keeps every URL valid. Another
        # process may take a free port between the check and the bind: try a few.
        attempts = 3 if self.port is None else 1
        for attempt in range(attempts):
            if attempts > 1:  # a first start: pick a port (again, after a clash)
                self.port = _free_port()
                while self.port == SHARED_PORT:
                    self.port = _free_port()
            self._write_settings()
            try:
                self._launch()
                return
            except _PortTaken:
                if attempt + 1 == attempts:
                    raise PgClusterError('port {0} was taken by another process\n{1}'.format(
                        self.port, self.log_tail()))

    def _launch(self):
        pidfile = os.path.join(self.data_dir, 'postmaster.pid')
        log_offset = os.path.getsize(self.log_file) if os.path.exists(self.log_file) else 0
        with open(self.log_file, 'ab') as log, open(os.devnull, 'rb') as devnull:
            self._proc = subprocess.Popen(
                [os.path.join(self.bindir, 'postgres'), '-D', self.data_dir],
                stdin=devnull, stdout=log, stderr=subprocess.STDOUT, cwd=self.base_dir,
                env=self._env(), preexec_fn=self._preexec(as_server=True), close_fds=True)
        proc = self._proc
        deadline = time.time() + self.timeout
        while True:
            if proc.poll() is not None:
                self._proc = None
                with open(self.log_file, 'rb') as fh:
                    fh.seek(log_offset)
                    this_start = fh.read().decode('utf-8', 'replace')
                if 'could not bind' in this_start or 'Address already in use' in this_start:
                    raise _PortTaken()
                raise PgClusterError('the PostgreSQL server exited at start (code {0})\n{1}'
                                     .format(proc.returncode, self.log_tail()))
            if _status(pidfile, proc.pid) == 'ready':
                return
            if time.time() > deadline:
                self._proc = None
                self._kill(proc)
                raise PgClusterError('the PostgreSQL server was not ready within {0:g}s and '
                                     'was killed\n{1}'.format(self.timeout, self.log_tail()))
            time.sleep(POLL_INTERVAL)

    def _wait_exit(self, proc, timeout):
        deadline = time.time() + timeout
        while proc.poll() is None:
            if time.time() > deadline:
                return False
            time.sleep(POLL_INTERVAL)
        return True

    def _kill(self, proc):
        """SIGKILL the postmaster and what it forked (they are their own process groups)."""
        children = _children_of(proc.pid)
        for pid in [proc.pid] + children:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        proc.wait()
        deadline = time.time() + 5
        while any(_pid_alive(pid) for pid in children) and time.time() < deadline:
            time.sleep(POLL_INTERVAL)
        if self.data_dir:
            # Dead for sure: a stale lock file must not make the next start hesitate.
            try:
                os.remove(os.path.join(self.data_dir, 'postmaster.pid'))
            except OSError:
                pass

    def _env(self):
        # Nothing from this process' PG* variables (PGDATA, PGPORT, PGOPTIONS...) may steer
        # the private server; messages in English so failures can be recognised.
        env = dict((k, v) for k, v in os.environ.items() if not k.startswith('PG'))
        env.update(LC_ALL='C', LANG='C')
        run_as = self._run_as()
        if run_as is not None:
            env.update(HOME=run_as[3], USER=run_as[2], LOGNAME=run_as[2])
        return env

    def _preexec(self, as_server):
        run_as = self._run_as() if as_server else None
        prctl = self._prctl if as_server else None
        parent = os.getpid()

        def preexec():
            # Own session: a Ctrl-C meant for the test run must not reach the server, and a
            # step that times out can be killed with everything it started.
            os.setsid()
            if run_as is not None:
                os.setgid(run_as[1])
                os.initgroups(run_as[2], run_as[1])
                os.setuid(run_as[0])
            if prctl is not None:
                # After setuid, which clears the parent-death signal.
                prctl(PR_SET_PDEATHSIG, int(signal.SIGQUIT), 0, 0, 0)
                if os.getppid() != parent:  # the parent died before prctl took effect
                    os._exit(1)
        return preexec

    def _run(self, what, args, as_server):
        """Run a setup command (initdb, openssl) within ``timeout``; its output on failure.

        Python 2.7 has no subprocess timeouts: poll the process and kill its session.
        """
        output = tempfile.TemporaryFile()
        try:
            with open(os.devnull, 'rb') as devnull:
                try:
                    proc = subprocess.Popen(
                        args, stdin=devnull, stdout=output, stderr=subprocess.STDOUT,
                        cwd=self.base_dir, env=self._env(), close_fds=True,
                        preexec_fn=self._preexec(as_server) if as_server else os.setsid)
                except OSError as exc:
                    raise PgClusterError('could not run {0}: {1}'.format(what, exc))
            if not self._wait_exit(proc, self.timeout):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                proc.wait()
                raise PgClusterError('{0} did not finish within {1:g}s and was killed'.format(
                    what, self.timeout))
            if proc.returncode != 0:
                output.seek(0)
                text = output.read().decode('utf-8', 'replace')
                raise PgClusterError('{0} failed (exit code {1}): {2}\n{3}'.format(
                    what, proc.returncode, ' '.join(args),
                    '\n'.join(text.splitlines()[-LOG_TAIL_LINES:])))
        finally:
            output.close()

    def __repr__(self):
        return '<PgCluster {0}:{1} {2} {3}>'.format(
            self.host, self.port, 'running' if self.running else 'stopped', self.base_dir)


class _PortTaken(Exception):
    pass


_BACKENDS_SQL = ("SELECT {select} FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                 "AND backend_type = 'client backend'{where}")


def _db_filter(dbname):
    return ' AND datname = %s' if dbname else ''


def _ident(name):
    return '"{0}"'.format(name.replace('"', '""'))


def _status(pidfile, pid):
    """The postmaster's status line (PostgreSQL 10+): 'starting', 'ready', 'stopping'..."""
    try:
        with open(pidfile) as fh:
            lines = fh.read().splitlines()
    except (IOError, OSError):
        return None
    if len(lines) < 8 or lines[0].strip() != str(pid):
        return None
    return lines[7].strip()


def _traversable_by(path, uid, gid):
    path = os.path.abspath(path)
    while True:
        try:
            st = os.stat(path)
        except OSError:
            return False
        if st.st_uid == uid:
            allowed = st.st_mode & 0o100
        elif st.st_gid == gid:
            allowed = st.st_mode & 0o010
        else:
            allowed = st.st_mode & 0o001
        if not allowed:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


#: Clusters started and not yet cleaned up, for the exit-time safety net.
_LIVE = {}


def _cleanup_all():
    # A forked child (multiprocessing, a worker started by fork) inherits this handler and
    # the registry: only the process that started a cluster may take it down.
    for cluster in list(_LIVE.values()):
        if cluster._owner_pid == os.getpid():
            try:
                cluster.cleanup()
            except Exception:  # noqa: B902 -- exiting: clean up the others regardless
                pass


atexit.register(_cleanup_all)
