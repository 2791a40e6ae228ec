"""A beat scheduler that uses the database on every tick, as database-backed schedulers do.

``celery worker -B --scheduler cdf_demo.beat:QueryingScheduler`` runs it as embedded beat: a
process forked from the worker's main process, so it starts with whatever connection the main
process held. Schedulers that keep their schedule in the database (django-celery-beat's
``DatabaseScheduler`` checks for changes on every tick) query through Django's connection in
that process; this one does the same with one query per tick.

Environment:

``CDF_BEAT_LOG``     a file that gets one JSON line per tick: ``{"pid", "backend"}`` (the
                     server's id of the session that answered) or ``{"pid", "error"}``.
                     Queries run only when it is set.
``CDF_BEAT_QUEUE``   where a ``cdf_demo.noop`` task is sent every second, so that the beat
                     process also opens a broker connection, as a real one does; by default
                     the queue the worker consumes (``-Q``), when it consumes exactly one.
``CDF_BEAT_TICK``    seconds between ticks at most (default 0.2).
"""
from __future__ import absolute_import

import json
import os

from celery.beat import PersistentScheduler


def _backend_id(conn):
    # Not cdf_demo.celeryapp's backend_id: the tests import this module outside the worker,
    # where the demo app is not importable.
    with conn.cursor() as cursor:
        if conn.vendor == 'mysql':
            cursor.execute('SELECT CONNECTION_ID()')
        else:
            cursor.execute('SELECT pg_backend_pid()')
        return cursor.fetchone()[0]


class QueryingScheduler(PersistentScheduler):

    def __init__(self, *args, **kwargs):
        kwargs['max_interval'] = float(os.environ.get('CDF_BEAT_TICK') or 0.2)
        super(QueryingScheduler, self).__init__(*args, **kwargs)

    def setup_schedule(self):
        super(QueryingScheduler, self).setup_schedule()
        queue = os.environ.get('CDF_BEAT_QUEUE') or self._worker_queue()
        if queue:
            self.update_from_dict({'cdf-beat-noop': {
                'task': 'cdf_demo.noop', 'schedule': 1.0, 'options': {'queue': queue}}})

    def _worker_queue(self):
        # Embedded beat runs on the worker's app, whose queues -Q has narrowed.
        consumed = list(getattr(self.app.amqp.queues, 'consume_from', None) or ())
        return consumed[0] if len(consumed) == 1 else None

    def tick(self, *args, **kwargs):
        self.query_database()
        return super(QueryingScheduler, self).tick(*args, **kwargs)

    def query_database(self):
        path = os.environ.get('CDF_BEAT_LOG')
        if not path:
            return
        from django.db import connections
        entry = {'pid': os.getpid()}
        try:
            entry['backend'] = _backend_id(connections['default'])
        except Exception as exc:  # noqa: B902 -- a scheduler logs and goes on, as real ones do
            entry['error'] = '{0}: {1}'.format(type(exc).__name__, exc)
        # One short append per tick: a line is never split between two writers.
        with open(path, 'a') as fh:
            fh.write(json.dumps(entry) + '\n')


def read_log(path):
    """The entries a :class:`QueryingScheduler` wrote to ``CDF_BEAT_LOG`` (none if no file)."""
    if not os.path.exists(path):
        return []
    entries = []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line:
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    pass  # the last line of a process killed while writing
    return entries


class FilesScheduler(QueryingScheduler):
    """A :class:`QueryingScheduler` that also keeps files and a socket open, as schedulers do
    (their schedule file, a log, a connection to a lock or cache server), opened in
    ``setup_schedule``: in embedded beat that is after Celery closed every inherited file
    descriptor and before ``beat_embedded_init``, so they take the numbers the sockets of the
    worker's main process had.

    The numbers the main process's database sockets had (``CDF_BEAT_TAKE_FDS``, a JSON list,
    or ``cdf_demo.celeryapp.PARENT_FDS``) are taken on purpose: the first by a file, the
    second (if any) by a socket to the Redis server of ``CDF_BEAT_REDIS``
    (``host:port``, default 127.0.0.1:6379), every other free number below them by a file.
    Whatever then closes or writes to an inherited database socket by its number hits them.

    Each tick writes ``tick N pid P`` to every file (unbuffered: one ``write()``) and sends
    ``PING`` on the socket; the tick's ``CDF_BEAT_LOG`` line gets ``files_ok`` (writes that
    succeeded), ``file_errors`` and ``socket_error``. The first line of the log (``setup``)
    names every file (``files``: ``{fd: path}``), ``socket_fd`` and ``targets``.
    ``CDF_BEAT_FILES`` is the folder of the files (required).

    With ``CDF_BEAT_FREE_POLLERS`` set, the event-loop pollers beat inherited (kombu's
    ``epoll`` wrappers) that still hold a number are freed right after the files took those
    numbers too, as the garbage collector frees them at a moment of its choosing (measured on
    Celery 5.7: while beat opened its broker connection). The setup line records how many
    pollers there were (``pollers``) and the numbers of those still open (``pollers_open``).
    """

    #: Never more open files than this, whatever the numbers to take.
    MAX_FILES = 200

    def setup_schedule(self):
        self._files = []
        self._socket = None
        self._ticks = 0
        folder = os.environ.get('CDF_BEAT_FILES')
        if folder:
            pollers = _inherited_pollers() if os.environ.get('CDF_BEAT_FREE_POLLERS') else []
            self._take_numbers(folder, pollers)
        super(FilesScheduler, self).setup_schedule()

    def _take_numbers(self, folder, pollers=()):
        targets = sorted(fd for fd in self._targets() if fd is not None)
        still_open = sorted(fd for fd in (_poller_number(poller) for poller in pollers)
                            if fd is not None)
        setup = {'setup': True, 'pid': os.getpid(), 'targets': targets, 'files': {},
                 'socket_fd': None, 'pollers': len(pollers), 'pollers_open': still_open}
        socket_target = targets[1] if len(targets) > 1 else None
        last = max(targets + still_open) if targets or still_open else None
        # Standard streams Celery closed stay taken by /dev/null, as a daemon's would.
        self._standard = []
        while _lowest_free_fd() < 3:
            self._standard.append(os.open(os.devnull, os.O_RDWR))
        # At least one file, even with nothing to take.
        while len(self._files) < self.MAX_FILES:
            number = _lowest_free_fd()
            if self._files and (last is None or number > last):
                break
            if number == socket_target and self._socket is None:
                self._socket = self._open_socket()
                setup['socket_fd'] = self._socket.fileno()
                continue
            path = os.path.join(folder, 'file-{0}.log'.format(len(self._files)))
            fh = open(path, 'ab', 0)
            self._files.append(fh)
            setup['files'][fh.fileno()] = path
        # What the garbage collector does when it frees them: select.epoll closes its number.
        for poller in pollers:
            poller.close()
        self._write_log(setup)

    @staticmethod
    def _targets():
        value = os.environ.get('CDF_BEAT_TAKE_FDS')
        if value:
            return json.loads(value)
        try:
            from cdf_demo import celeryapp
        except ImportError:
            return []
        return list(celeryapp.PARENT_FDS.values())

    @staticmethod
    def _open_socket():
        import socket
        host, _, port = (os.environ.get('CDF_BEAT_REDIS') or '127.0.0.1:6379').partition(':')
        sock = socket.create_connection((host, int(port or 6379)), timeout=5)
        sock.settimeout(5)
        return sock

    def query_database(self):
        if not os.environ.get('CDF_BEAT_FILES'):
            return super(FilesScheduler, self).query_database()
        path = os.environ.get('CDF_BEAT_LOG')
        self._ticks += 1
        entry = {'pid': os.getpid(), 'tick': self._ticks, 'files_ok': 0, 'file_errors': []}
        line = 'tick {0} pid {1}\n'.format(self._ticks, os.getpid()).encode('ascii')
        for fh in self._files:
            try:
                # os.write: one write() call, and its count (Python 2's file.write returns
                # None).
                if os.write(fh.fileno(), line) != len(line):
                    entry['file_errors'].append('short write')
                else:
                    entry['files_ok'] += 1
            except Exception as exc:  # noqa: B902 -- what a scheduler would log
                entry['file_errors'].append('{0}: {1}'.format(type(exc).__name__, exc))
        if self._socket is not None:
            try:
                self._socket.sendall(b'PING\r\n')
                answer = self._socket.recv(64)
                if answer != b'+PONG\r\n':
                    entry['socket_error'] = 'answer {0!r}'.format(answer)
            except Exception as exc:  # noqa: B902
                entry['socket_error'] = '{0}: {1}'.format(type(exc).__name__, exc)
        if path:
            from django.db import connections
            try:
                entry['backend'] = _backend_id(connections['default'])
            except Exception as exc:  # noqa: B902
                entry['error'] = '{0}: {1}'.format(type(exc).__name__, exc)
        self._write_log(entry)

    @staticmethod
    def _write_log(entry):
        path = os.environ.get('CDF_BEAT_LOG')
        if path:
            with open(path, 'a') as fh:
                fh.write(json.dumps(entry) + '\n')


def _inherited_pollers():
    """kombu's event-loop pollers (``epoll`` wrappers) in this process. In the scheduler's
    ``setup_schedule`` beat has opened no broker connection yet: all of them were inherited
    from the worker's main process (its event loop, its Redis transports)."""
    import gc
    try:
        from kombu.utils.eventio import _epoll
    except ImportError:
        return []
    return [obj for obj in gc.get_objects() if isinstance(obj, _epoll)]


def _poller_number(poller):
    """The number ``poller`` would close when freed, or None if it is closed already."""
    epoll = getattr(poller, '_epoll', None)
    return None if epoll is None or epoll.closed else epoll.fileno()


def _lowest_free_fd():
    """The number the next file or socket opened will get."""
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    return fd


def check_files(setup, ticks):
    """What is wrong with the files a :class:`FilesScheduler` wrote (``setup``: its first log
    line; ``ticks``: how many ticks it logged). Each must hold exactly ``tick 1 ...`` to
    ``tick N ...``, N being ``ticks`` (or one more: a tick cut short by the worker's stop may
    have written its files and not its log line), and nothing else: a missing line was written
    somewhere else, or not at all. Returns ``{path: problem}``."""
    problems = {}
    pid = setup.get('pid')
    for path in setup.get('files', {}).values():
        try:
            with open(path, 'rb') as fh:
                data = fh.read()
        except (IOError, OSError) as exc:
            problems[path] = 'unreadable: {0}'.format(exc)
            continue
        lines = data.split(b'\n')
        tail = lines.pop()
        expected = ['tick {0} pid {1}'.format(number, pid).encode('ascii')
                    for number in range(1, len(lines) + 1)]
        if tail or lines != expected:
            wrong = [line for line, want in zip(lines, expected) if line != want]
            problems[path] = 'foreign or missing lines, first {0!r}'.format(
                (wrong[:1] or [tail])[0][:80])
        elif len(lines) not in (ticks, ticks + 1):
            problems[path] = '{0} lines for {1} ticks'.format(len(lines), ticks)
    return problems
