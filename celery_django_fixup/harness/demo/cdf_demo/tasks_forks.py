"""Demo tasks and hooks for processes forked from a worker's processes.

``cdf_demo.fork_query``: a task that forks (``os.fork()``, or a ``multiprocessing`` process
with the fork start method) *before* touching the database itself; the new process runs one
query and reports the server's id of its session through a pipe, then ends with
``os._exit``; once it has ended, the task queries in its own process. Its result says which
session each used (``kept``: the session the task's process held when it forked, read from
the driver with no round trip, or None), or the error each got. The task fails only when
something other than a query failed (the fork itself, the pipe).

``CDF_PARENT_PROBE`` (a file): the worker's main process runs one query on every alias every
``CDF_PARENT_PROBE_INTERVAL`` seconds (0.3 by default), from the worker's timer, in its main
thread (Django's connections are per thread), and appends one JSON line per probe to that
file: ``{"pid", "at", "thread", "backends": {alias: id}, "errors": {alias: "ExcType: message"}}``.
Before each query it does what Django does at the start of a request
(``close_if_unusable_or_obsolete()``), so a connection that failed is replaced, as a real
main process's next use (a result backend write...) would replace it.
"""
from __future__ import absolute_import

import json
import os
import select
import threading
import time

from celery import signals
from django.db import connections

from cdf_demo.celeryapp import app, backend_id


def _error(exc):
    return '{0}: {1}'.format(type(exc).__name__, str(exc).strip())


def kept_session(conn):
    """The server's id of the session ``conn`` holds, read from the driver without any round
    trip; None if it holds none (or the driver does not say)."""
    raw = conn.connection
    if raw is None:
        return None
    try:
        if conn.vendor == 'postgresql':
            info = getattr(raw, 'info', None)  # psycopg 3
            return info.backend_pid if info is not None else raw.get_backend_pid()
        if conn.vendor == 'mysql':
            return raw.thread_id()
    except Exception:  # noqa: B902 -- a dead connection: nothing kept worth naming
        return None
    return None


def _child(write_fd, alias):
    """In the forked process: one query, the answer down the pipe."""
    report = {'pid': os.getpid()}
    try:
        report['backend'] = backend_id(connections[alias])
    except Exception as exc:  # noqa: B902 -- reported whatever it is
        report['error'] = _error(exc)
    data = (json.dumps(report) + '\n').encode('utf-8')
    while data:
        data = data[os.write(write_fd, data):]


def _child_main(write_fd, alias):
    # The end every forked process of a real program meets sooner or later: no Django
    # cleanup, no atexit handlers.
    code = 0
    try:
        _child(write_fd, alias)
    except BaseException:  # noqa: B902 -- nothing may escape a forked process
        code = 1
    finally:
        os._exit(code)


def _read_report(read_fd, timeout):
    deadline = time.time() + timeout
    chunks = []
    while True:
        remaining = deadline - time.time()
        if remaining <= 0:
            return None
        readable, _, _ = select.select([read_fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(read_fd, 4096)
        if not chunk:
            break
        chunks.append(chunk)
        if chunk.endswith(b'\n'):
            break
    text = b''.join(chunks).decode('utf-8', 'replace').strip()
    return json.loads(text) if text else None


def _start_multiprocessing(write_fd, alias):
    import multiprocessing
    if hasattr(multiprocessing, 'get_context'):
        context = multiprocessing.get_context('fork')
    else:  # Python 2: fork is the only start method on POSIX
        context = multiprocessing
    process = context.Process(target=_child_main, args=(write_fd, alias))
    # A pool process is a daemon process to multiprocessing, which then refuses to start
    # children; clearing the flag for the start is the usual way round it.
    config = multiprocessing.current_process()._config
    daemon = config.get('daemon')
    config['daemon'] = False
    try:
        process.start()
    finally:
        config['daemon'] = daemon
    return process


@app.task(name='cdf_demo.fork_query')
def fork_query(method='fork', alias='default', timeout=30.0):
    """Fork, let the new process query, then query here; see the module's docstring."""
    conn = connections[alias]
    kept = kept_session(conn)
    read_fd, write_fd = os.pipe()
    process = child_pid = None
    try:
        if method == 'multiprocessing':
            process = _start_multiprocessing(write_fd, alias)
            child_pid = process.pid
        elif method == 'fork':
            child_pid = os.fork()
            if child_pid == 0:
                os.close(read_fd)
                _child_main(write_fd, alias)
        else:
            raise ValueError('method must be fork or multiprocessing, not {0!r}'.format(method))
        os.close(write_fd)
        write_fd = None
        child = _read_report(read_fd, timeout)
    finally:
        os.close(read_fd)
        if write_fd is not None:
            os.close(write_fd)
        if process is not None:
            process.join(timeout)
            if process.is_alive():
                process.terminate()
                process.join(5)
        elif child_pid:
            _reap(child_pid, timeout)
    if child is None:
        child = {'pid': child_pid, 'error': 'no report within {0} s'.format(timeout)}
    result = {'pid': os.getpid(), 'alias': alias, 'method': method, 'kept': kept,
              'child': child}
    try:
        result['backend'] = backend_id(conn)
    except Exception as exc:  # noqa: B902 -- reported: this is what the test measures
        result['error'] = _error(exc)
    return result


def _reap(pid, timeout):
    import signal
    deadline = time.time() + timeout
    while time.time() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.01)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    os.waitpid(pid, 0)


# -- the main process's own queries (CDF_PARENT_PROBE) -------------------------------------------

def _probe(path):
    entry = {'pid': os.getpid(), 'at': time.time(), 'thread': threading.current_thread().name,
             'backends': {}, 'errors': {}}
    for conn in connections.all():
        try:
            conn.close_if_unusable_or_obsolete()
            entry['backends'][conn.alias] = backend_id(conn)
        except Exception as exc:  # noqa: B902 -- reported: this is what the test measures
            entry['errors'][conn.alias] = _error(exc)
    with open(path, 'a') as fh:
        fh.write(json.dumps(entry) + '\n')


def _start_probe(sender=None, **kwargs):
    path = os.environ.get('CDF_PARENT_PROBE')
    timer = getattr(sender, 'timer', None)
    if not path or timer is None:
        return
    interval = float(os.environ.get('CDF_PARENT_PROBE_INTERVAL') or 0.3)
    # The worker's timer runs in the main thread's event loop (prefork): the probe uses the
    # main process's own connections, the ones its pool processes were forked with.
    timer.call_repeatedly(interval, _probe, (path,))


if os.environ.get('CDF_PARENT_PROBE'):
    signals.worker_ready.connect(_start_probe, weak=False,
                                 dispatch_uid='cdf_demo.tasks_forks.parent_probe')

