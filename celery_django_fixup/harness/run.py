"""Run a real ``celery worker`` on the demo project, send it tasks, and stop it.

::

    broker = Broker.redis()
    prepare_database(url)                      # the demo model's table
    with Worker(url, mode='fixups', pool='prefork', concurrency=2, broker=broker) as worker:
        outcomes = worker.run('touch', count=100, timeout=60)
        print(summarize(outcomes))
        print(worker.stop(timeout=10))         # 'stopped' or 'hung'

The worker is a subprocess (``python -m celery -A cdf_demo.celeryapp:app worker``) in a
process group of its own, with its own queue, so that runs in parallel never take each other's
tasks and nothing of it is left behind: :meth:`Worker.stop` kills the whole group after it has
seen whether SIGTERM was enough. Tasks are sent from a plain Celery client app in this process
(no Django needed here) and their outcomes are polled with one overall deadline, so a hung
worker gives ``TIMEOUT`` outcomes instead of a hung caller.
"""
from __future__ import absolute_import

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

from . import demo

__all__ = ('Broker', 'Worker', 'WorkerError', 'Outcome', 'summarize', 'prepare_database',
           'demo_environ', 'TIMEOUT')

#: The state of an outcome that had not come back by the deadline.
TIMEOUT = 'TIMEOUT'

DEFAULT_REDIS = 'redis://127.0.0.1:6379/15'
DEFAULT_AMQP = 'amqp://guest:guest@127.0.0.1:5672//'
#: The result backend of django-celery-results: results in the worker's own database, written
#: by the worker's processes through Django (read back with ``dbresults.TaskResults``).
DJANGO_DB = 'django-db'


class WorkerError(Exception):
    """The worker could not be started (the message ends with the tail of its log)."""


class Broker(object):
    """Where the tasks and their results go: a broker URL, a result backend and the
    transport options, handed to the worker through the environment."""

    def __init__(self, url=DEFAULT_REDIS, result_backend=None, transport_options=None):
        self.url = url
        self.result_backend = result_backend or url
        self.transport_options = transport_options or {}

    @classmethod
    def redis(cls, url=DEFAULT_REDIS):
        """Redis as the broker and the result backend (the default)."""
        return cls(url, url)

    @classmethod
    def amqp(cls, url=DEFAULT_AMQP, result_backend=DEFAULT_REDIS):
        """RabbitMQ as the broker; results in Redis unless told otherwise."""
        return cls(url, result_backend)

    @classmethod
    def filesystem(cls, folder):
        """Messages and results as files under ``folder``: no service needed at all."""
        queue = os.path.join(folder, 'queue')
        for path in (queue, os.path.join(folder, 'results')):
            if not os.path.isdir(path):
                os.makedirs(path)
        return cls('filesystem://', 'file://' + os.path.join(folder, 'results'),
                   # The transport polls the folder; its default of 1 s would dominate timings.
                   {'data_folder_in': queue, 'data_folder_out': queue, 'polling_interval': 0.05})

    def environ(self):
        return {
            'CDF_BROKER_URL': self.url,
            'CDF_RESULT_BACKEND': self.result_backend,
            'CDF_BROKER_TRANSPORT_OPTIONS': json.dumps(self.transport_options),
        }

    def client(self):
        """A Celery app that only sends tasks and reads results: no Django, no fix-ups."""
        from celery import Celery
        url = self.url
        if url.startswith('filesystem://'):
            # kombu's sender can let a worker read a message half-written (see fstransport).
            from . import fstransport
            url = fstransport.client_url(url)
        # django-db results need Django to be read through Celery: the client only sends
        # (the Worker reads them with its ``results`` reader).
        backend = 'disabled' if self.result_backend == DJANGO_DB else self.result_backend
        app = Celery('cdf-harness-client', broker=url, backend=backend,
                     fixups=[], set_as_current=False)
        app.conf.broker_transport_options = self.transport_options
        backend = app.backend
        if hasattr(backend, 'on_task_call'):
            # Outcomes are polled; the Redis backend would otherwise subscribe to every task's
            # channel, and results nobody reads would pile up on that subscription.
            backend.on_task_call = lambda producer, task_id: None
        return app

    def check(self, timeout=3.0):
        """Raise if the broker cannot be reached within ``timeout`` seconds."""
        from kombu import Connection
        with Connection(self.url, transport_options=self.transport_options,
                        connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1)

    def __repr__(self):
        return '<Broker {0} results={1}>'.format(self.url, self.result_backend)


def _package_root():
    """The folder ``celery_django_fixup`` is imported from, if the worker needs to be told."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # An installed package is found anyway; putting site-packages ahead of the standard
    # library on PYTHONPATH could shadow a module with a backport.
    if os.path.basename(root) in ('site-packages', 'dist-packages'):
        return None
    return root


def demo_environ(database_url, mode='fixups', conn_max_age=600, databases=None, settings=None,
                 parent_query=False, broker=None, env=None):
    """The environment a demo worker (or ``cdf_demo.createtables``) runs with.

    ``databases`` and ``settings`` are dicts (``CDF_DATABASES_JSON``, ``CDF_SETTINGS_JSON``);
    ``conn_max_age`` None leaves Django's default; ``env`` is added last.
    """
    environ = dict(os.environ)
    paths = [demo.PATH, _package_root(), environ.get('PYTHONPATH')]
    environ.update({
        'PYTHONPATH': os.pathsep.join(path for path in paths if path),
        'PYTHONUNBUFFERED': '1',
        'DJANGO_SETTINGS_MODULE': 'cdf_demo.settings',
        'CDF_DATABASE_URL': database_url,
        'CDF_MODE': mode,
        'CDF_DATABASES_JSON': json.dumps(databases or {}),
        'CDF_SETTINGS_JSON': json.dumps(settings or {}),
        'CDF_PARENT_QUERY': '1' if parent_query else '0',
    })
    environ.pop('CDF_CONN_MAX_AGE', None)
    if conn_max_age is not None:
        environ['CDF_CONN_MAX_AGE'] = str(conn_max_age)
    environ.update((broker or Broker()).environ())
    environ.update(env or {})
    return environ


def prepare_database(database_url, aliases=(), databases=None, python=None, timeout=120.0,
                     env=None):
    """Create the demo model's table on the database (every alias unless named); idempotent.
    ``env`` as for :func:`demo_environ` (``{'CDF_RESULT_BACKEND': 'django-db'}`` also creates
    django-celery-results' tables)."""
    environ = demo_environ(database_url, databases=databases, env=env)
    command = [python or sys.executable, '-m', 'cdf_demo.createtables'] + list(aliases)
    proc = subprocess.Popen(command, env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    output = _communicate(proc, timeout)
    if proc.returncode != 0:
        raise WorkerError('creating the demo tables failed ({0}):\n{1}'.format(
            proc.returncode, output))
    return output


def _communicate(proc, timeout):
    """``proc.communicate()`` with a deadline (Python 2 has no timeout argument)."""
    deadline = time.time() + timeout
    while proc.poll() is None:
        if time.time() > deadline:
            proc.kill()
            proc.wait()
            break
        time.sleep(0.05)
    return proc.stdout.read().decode('utf-8', 'replace')


class Outcome(object):
    """What became of one task: ``state`` is Celery's (``SUCCESS``, ``FAILURE``...) or
    ``TIMEOUT``; ``result`` the return value; ``error`` ``'ExcType: message'``."""

    __slots__ = ('task_id', 'task', 'state', 'result', 'error', 'sent_at', 'done_at')

    def __init__(self, task_id, task, sent_at, state=TIMEOUT, result=None, error=None,
                 done_at=None):
        self.task_id = task_id
        self.task = task
        self.sent_at = sent_at
        self.state = state
        self.result = result
        self.error = error
        self.done_at = done_at

    @property
    def ok(self):
        return self.state == 'SUCCESS'

    @property
    def backend(self):
        """The server-side connection id the task reported, from its result or its error."""
        if isinstance(self.result, dict):
            return self.result.get('backend')
        match = re.search(r'backend=([\w-]+)', self.error or '')
        if match:
            value = match.group(1)
            return int(value) if value.isdigit() else value
        return None

    @property
    def pid(self):
        """The pid of the process that ran the task, from its result or its error."""
        if isinstance(self.result, dict):
            return self.result.get('pid')
        match = re.search(r'\bpid=(\d+)', self.error or '')
        return int(match.group(1)) if match else None

    def __repr__(self):
        return '<Outcome {0} {1} {2}>'.format(self.task, self.state,
                                              self.error or self.result)


def summarize(outcomes):
    """Counts and throughput: ``total``, ``ok``, ``failed``, ``timeout``, ``seconds`` (first
    send to last outcome seen) and ``per_second`` (successful tasks per second)."""
    outcomes = list(outcomes)
    ok = sum(1 for outcome in outcomes if outcome.ok)
    timeout = sum(1 for outcome in outcomes if outcome.state == TIMEOUT)
    done = [outcome.done_at for outcome in outcomes if outcome.done_at is not None]
    seconds = (max(done) - min(outcome.sent_at for outcome in outcomes)) if done else 0.0
    return {
        'total': len(outcomes), 'ok': ok, 'failed': len(outcomes) - ok - timeout,
        'timeout': timeout, 'seconds': round(seconds, 3),
        'per_second': round(ok / seconds, 1) if seconds > 0 else 0.0,
    }


def _error_text(value):
    if isinstance(value, BaseException):
        return '{0}: {1}'.format(type(value).__name__, value)
    if isinstance(value, dict) and 'exc_type' in value:
        return '{0}: {1}'.format(value['exc_type'], value.get('exc_message'))
    return repr(value)


#: Seconds :meth:`Worker.stop` waits for the tasks in flight to finish before SIGTERM.
IDLE_SETTLE = 3.0
#: What Celery's consumer logs when it takes an error (or a shutdown raised in its read
#: handler) for a lost broker connection and reconnects.
LOST_SHUTDOWN = 'Connection to broker lost'
#: Celery's log lines for a task received (4.x "Received task: NAME[ID]", 5.x "Task NAME[ID]
#: received"), and for one that ended, however it did ("succeeded in", "raised unexpected",
#: "retry", "ignored"...).
_RECEIVED = re.compile(r'Received task: [\w.]+\[([0-9a-f-]{36})\]|'
                       r'\bTask [\w.]+\[([0-9a-f-]{36})\] received\b')
_FINISHED = re.compile(r'\bTask [\w.]+\[([0-9a-f-]{36})\] (?!received\b)\w')


#: Seconds a provisional result (see :func:`_provisional`) waits for the task's own.
PROVISIONAL_GRACE = 5.0
_PROVISIONAL = re.compile(r'^SoftTimeLimitExceeded: (SoftTimeLimitExceeded)?[\[(]*True,?[\])]*$')


def _provisional(meta):
    """Whether ``meta`` is the failure Celery 4.0-4.1's main process stores the moment a soft
    time limit fires (``SoftTimeLimitExceeded(True)``), before the task has even seen the
    exception. The task's own outcome (which names its session and process, or is a success
    if it caught the exception) replaces it when the task ends; Celery 4.2 stopped storing it.
    """
    if meta.get('status') != 'FAILURE':
        return False
    return bool(_PROVISIONAL.match(_error_text(meta.get('result'))))


class Worker(object):
    """One real worker process of the demo app.

    ``mode``: ``stock``, ``import``, ``fixups`` or ``unsafe`` (see ``cdf_demo.celeryapp``);
    ``pool``/``concurrency``: ``-P``/``-c``; ``args``: more worker arguments
    (``['--max-tasks-per-child', '5']``, ``['-B']``...); ``conn_max_age``: of every alias
    that does not set its own; ``databases``, ``settings``: see ``cdf_demo.settings``;
    ``parent_query``: the main process queries every alias before it forks the pool;
    ``fair``: ``-O fair`` and ``worker_prefetch_multiplier=1``, so that a busy pool process is
    handed no task (what :meth:`run_each` relies on);
    ``results``: what reads the tasks' results instead of the broker's client (an object with
    ``fetch(task_ids)``, e.g. ``dbresults.TaskResults`` for the ``django-db`` backend).
    """

    def __init__(self, database_url, mode='fixups', pool='prefork', concurrency=2, args=(),
                 conn_max_age=600, databases=None, settings=None, parent_query=False,
                 broker=None, env=None, python=None, loglevel='info', fair=False,
                 results=None):
        self.results = results
        self.broker = broker or Broker()
        self.mode = mode
        self.pool = pool
        self.concurrency = concurrency
        self.args = list(args)
        if fair:
            self.args = ['-O', 'fair'] + self.args
            settings = dict({'worker_prefetch_multiplier': 1}, **(settings or {}))
        self.python = python or sys.executable
        self.loglevel = loglevel
        self.queue = 'cdf-{0}-{1}'.format(os.getpid(), uuid.uuid4().hex[:10])
        self.environ = demo_environ(database_url, mode=mode, conn_max_age=conn_max_age,
                                    databases=databases, settings=settings,
                                    parent_query=parent_query, broker=self.broker, env=env)
        self.info = None
        self.returncode = None
        self.stop_result = None
        self.stop_seconds = None
        self.proc = None
        self.client = None
        self.workdir = None

    # -- process ---------------------------------------------------------------------------

    def command(self):
        return [self.python, '-m', 'celery', '-A', demo.APP, 'worker',
                '-P', self.pool, '-c', str(self.concurrency), '-Q', self.queue,
                '-n', '{0}@%h'.format(self.queue), '-l', self.loglevel,
                '--without-gossip', '--without-mingle', '--without-heartbeat'] + self.args

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    @property
    def log_path(self):
        return os.path.join(self.workdir, 'worker.log') if self.workdir else None

    def start(self, timeout=60.0):
        """Start the worker and wait until it takes tasks; raise :class:`WorkerError` if it
        exits or is not ready within ``timeout`` seconds."""
        self.workdir = tempfile.mkdtemp(prefix='cdf-worker-')
        ready_file = os.path.join(self.workdir, 'ready.json')
        environ = dict(self.environ, CDF_READY_FILE=ready_file)
        kwargs = {}
        if sys.version_info[0] >= 3:
            kwargs['start_new_session'] = True
        else:
            kwargs['preexec_fn'] = os.setsid
        with open(self.log_path, 'wb') as log, open(os.devnull, 'rb') as devnull:
            self.proc = subprocess.Popen(self.command(), env=environ, cwd=self.workdir,
                                         stdin=devnull, stdout=log, stderr=subprocess.STDOUT,
                                         close_fds=True, **kwargs)
        deadline = time.time() + timeout
        while not os.path.exists(ready_file):
            if self.proc.poll() is not None:
                self.returncode = self.proc.returncode
                self._kill_group()
                raise WorkerError('worker exited with {0} before it was ready:\n{1}'.format(
                    self.returncode, self.log_tail()))
            if time.time() > deadline:
                self._kill_group()
                raise WorkerError('worker not ready within {0} s:\n{1}'.format(
                    timeout, self.log_tail()))
            time.sleep(0.05)
        with open(ready_file) as fh:
            self.info = json.load(fh)
        self.client = self.broker.client()
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.close()

    def processes(self):
        """Pids of the worker's process group that are still running (main process first)."""
        if self.proc is None:
            return []
        pids = _group_members(self.proc.pid)
        return sorted(pids, key=lambda pid: (pid != self.proc.pid, pid))

    def rss_kb(self):
        """Resident memory of the whole process group, in KiB (Linux)."""
        total = 0
        for pid in self.processes():
            try:
                with open('/proc/{0}/status'.format(pid)) as fh:
                    for line in fh:
                        if line.startswith('VmRSS:'):
                            total += int(line.split()[1])
            except (IOError, OSError):
                pass
        return total

    def stop(self, timeout=10.0, settle=IDLE_SETTLE):
        """SIGTERM the main process, as a supervisor does; ``'stopped'`` if the worker exits
        within ``timeout`` seconds, ``'hung'`` if not, ``'exited'`` if it had exited before.
        Then whatever is left of the process group is killed.

        A task whose result a caller has already read may still be finishing in its pool
        process (``task_postrun``, the log line, the report to the main process). Up to
        ``settle`` seconds are given for every task the log shows received to show finished
        before the signal: Celery 4 raises the shutdown from inside its signal handler, and
        one that lands while the main process handles such a report can be lost (fixed
        upstream in 5.3, celery#7339), the worker then running on as if never signalled. The
        log shows a task finished before its pool process has reported it to the main process,
        so the signal also waits (within ``settle``) until every process of the worker is seen
        asleep. A worker whose tasks hang never settles and is signalled all the same.

        A shutdown raised while the main process reads from the broker is taken by Celery 4 for
        a lost broker connection: the worker logs that it reconnects and runs on (the same
        celery#7339). Seen in the log after the signal, it gets a second SIGTERM, once, as a
        supervisor that finds the worker still running would send (the log says so). A worker
        that hangs for any other reason is not signalled again.
        """
        if self.proc is None or self.stop_result is not None:
            return self.stop_result
        if self.proc.poll() is None and settle:
            deadline = time.time() + settle
            if self.wait_until_idle(settle):
                # A pool process logs a task finished before it reports it to the main
                # process: the signal waits until that report has been taken too.
                _wait_until_asleep(self.proc.pid, max(0.5, deadline - time.time()))
        started = time.time()
        if self.proc.poll() is not None:
            result = 'exited'
        else:
            log_from, lost = self._log_size(), False
            _signal(self.proc.pid, signal.SIGTERM)
            while self.proc.poll() is None and time.time() - started < timeout:
                if not lost and LOST_SHUTDOWN in self._log_since(log_from):
                    lost = True
                    self._note_in_log('SIGTERM was taken for a lost broker connection '
                                      '(celery#7339): sent again')
                    _signal(self.proc.pid, signal.SIGTERM)
                time.sleep(0.05)
            result = 'stopped' if self.proc.poll() is not None else 'hung'
            if result == 'hung':
                self._note_in_log('still running {0:.0f} s after SIGTERM:\n{1}'.format(
                    timeout, _describe_group(self.proc.pid)))
        self.stop_seconds = round(time.time() - started, 3)
        self.stop_result = result
        self._kill_group()
        self.returncode = self.proc.returncode
        return result

    def _kill_group(self, timeout=10.0):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
        if self.proc.poll() is None:
            self.proc.wait()
        deadline = time.time() + timeout
        while _group_members(self.proc.pid) and time.time() < deadline:
            time.sleep(0.05)

    def close(self):
        """Stop the worker if it runs, drop its queue, remove its files."""
        try:
            if self.proc is not None and self.stop_result is None:
                self.stop()
        finally:
            if self.client is not None:
                self._delete_queue()
                self.client.close()
                self.client = None
            if self.workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None

    def _delete_queue(self):
        try:
            with self.client.connection() as conn:
                conn.default_channel.queue_delete(self.queue)
        except Exception:  # noqa: B902 -- best effort: the queue is unique and unused now
            pass

    def log(self):
        return self._log_since(0)

    def _log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except (TypeError, OSError):
            return 0

    def _log_since(self, offset):
        """What the log got after its first ``offset`` bytes."""
        try:
            with open(self.log_path, 'rb') as fh:
                fh.seek(offset)
                return fh.read().decode('utf-8', 'replace')
        except (TypeError, IOError, OSError):
            return ''

    def in_flight(self):
        """Ids of the tasks the log shows received and not yet finished."""
        received, finished = set(), set()
        for line in self.log().splitlines():
            match = _RECEIVED.search(line)
            if match:
                received.add(match.group(1) or match.group(2))
                continue
            match = _FINISHED.search(line)
            if match:
                finished.add(match.group(1))
        return received - finished

    def wait_until_idle(self, timeout):
        """Wait up to ``timeout`` seconds for :meth:`in_flight` to be empty; whether it is."""
        deadline = time.time() + timeout
        while self.in_flight():
            if time.time() > deadline or self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        return True

    def _note_in_log(self, text):
        if self.log_path:
            with open(self.log_path, 'a') as fh:
                fh.write('[harness] {0}\n'.format(text))

    def log_tail(self, lines=40):
        return '\n'.join(self.log().splitlines()[-lines:])

    # -- tasks -----------------------------------------------------------------------------

    def send(self, task, args=(), kwargs=None, count=1, gap=0.0, **options):
        """Send ``count`` tasks (``'touch'`` is ``'cdf_demo.touch'``), ``gap`` seconds apart;
        returns their :class:`Outcome` objects, not yet filled in."""
        name = task if '.' in task else 'cdf_demo.' + task
        sent = []
        for index in range(count):
            if index and gap:
                time.sleep(gap)
            result = self.client.send_task(name, args=list(args), kwargs=kwargs or {},
                                           queue=self.queue, **options)
            sent.append(Outcome(result.id, task, time.time()))
        return sent

    def collect(self, outcomes, timeout=60.0, stall=None, interval=0.02,
                provisional_grace=PROVISIONAL_GRACE):
        """Fill in ``outcomes`` as their tasks finish; those not finished within ``timeout``
        seconds stay ``TIMEOUT``. With ``stall``, give up as soon as no task has finished for
        that many seconds (a hung worker is told from a slow one sooner). A result the main
        process stored for the task (see :func:`_provisional`) is taken only if the task's
        own does not replace it within ``provisional_grace`` seconds. Returns ``outcomes``."""
        deadline = time.time() + timeout
        progress = time.time()
        pending = list(outcomes)
        provisional_since = {}
        while pending:
            metas = self._fetch([outcome.task_id for outcome in pending])
            now = time.time()
            still = []
            for outcome, meta in zip(pending, metas):
                state = meta.get('status')
                if _provisional(meta):
                    since = provisional_since.setdefault(outcome.task_id, now)
                    if now - since < provisional_grace and now <= deadline:
                        still.append(outcome)
                        continue
                if state in ('SUCCESS', 'FAILURE', 'REVOKED', 'REJECTED', 'IGNORED'):
                    outcome.state = state
                    outcome.done_at = now
                    if state == 'SUCCESS':
                        outcome.result = meta.get('result')
                    else:
                        outcome.error = _error_text(meta.get('result'))
                else:
                    still.append(outcome)
            if len(still) < len(pending):
                progress = now
            pending = still
            if pending:
                if now > deadline or (stall is not None and now - progress > stall):
                    break
                time.sleep(interval)
        return outcomes

    def run(self, task, count=1, args=(), kwargs=None, gap=0.0, batch=None, timeout=60.0,
            stall=None, **options):
        """Send ``count`` tasks (all at once, or ``batch`` at a time, each batch collected
        before the next is sent) and collect them, within ``timeout`` seconds in all (and
        ``stall``, see :meth:`collect`); ``options`` go to ``send_task``."""
        deadline = time.time() + timeout
        outcomes = []
        size = batch or count
        while len(outcomes) < count:
            sent = self.send(task, args, kwargs, min(size, count - len(outcomes)), gap,
                             **options)
            outcomes.extend(self.collect(sent, max(0.0, deadline - time.time()), stall))
        return outcomes

    def run_each(self, task='probe', kwargs=None, timeout=60.0):
        """Run ``task`` once in every pool process, at the same time: one ``cdf_demo.meet``
        per process (see ``cdf_demo.tasks_meet``), each waiting for the others before it runs
        ``task``'s body. Needs a ``fair`` worker; returns the outcomes, one per process (a
        ``MeetError`` failure if the processes did not all meet within half of ``timeout``).
        """
        name = task if '.' in task else 'cdf_demo.' + task
        folder = os.path.join(self.workdir, 'meet-' + uuid.uuid4().hex[:12])
        meet = {'folder': folder, 'parties': self.concurrency, 'task': name,
                'kwargs': kwargs or {}, 'timeout': timeout / 2.0}
        return self.run('meet', count=self.concurrency, kwargs=meet, timeout=timeout)

    def run_batch(self, task='probe', count=10, kwargs=None, timeout=60.0, stall=None):
        """``count`` tasks (at least twice ``concurrency``) of which the first and the last of
        every pool process are known: a :meth:`run_each`, the rest all at once wherever the
        worker sends them, and a :meth:`run_each` again. Every process runs the batch's first
        tasks, and holds afterwards what a task of its own left it. Returns the outcomes in
        that order; needs a ``fair`` worker."""
        deadline = time.time() + timeout
        outcomes = self.run_each(task, kwargs, timeout)
        middle = count - 2 * self.concurrency
        if middle > 0:
            outcomes.extend(self.run(task, count=middle, kwargs=kwargs,
                                     timeout=max(0.0, deadline - time.time()), stall=stall))
        outcomes.extend(self.run_each(task, kwargs, max(10.0, deadline - time.time())))
        return outcomes

    def _fetch(self, task_ids):
        if self.results is not None:
            return self.results.fetch(task_ids)
        backend = self.client.backend
        if hasattr(backend, 'mget') and hasattr(backend, 'get_key_for_task'):
            # One round trip for every pending task of a key-value backend (Redis...).
            values = list(backend.mget([backend.get_key_for_task(task_id)
                                        for task_id in task_ids]))
            return [_decode_meta(backend, value) for value in values]
        return [backend.get_task_meta(task_id) for task_id in task_ids]


def _decode_meta(backend, value):
    """A result as stored, decoded; one that cannot be decoded yet counts as pending.

    The ``file://`` backend writes a result in place, so a poll may read it half-written;
    the next poll reads it whole.
    """
    from kombu.exceptions import DecodeError
    if not value:
        return {'status': 'PENDING'}
    try:
        return backend.decode_result(value)
    except (DecodeError, ValueError):
        return {'status': 'PENDING'}


def _describe_group(pgid):
    """One line per live process of group ``pgid``: pid, state, kernel wait, command."""
    lines = []
    for pid in _group_members(pgid):
        facts = []
        for name in ('stat', 'wchan', 'cmdline'):
            try:
                with open('/proc/{0}/{1}'.format(pid, name), 'rb') as fh:
                    facts.append(fh.read().decode('utf-8', 'replace'))
            except (IOError, OSError):
                facts.append('?')
        stat, wchan, cmdline = facts
        state = stat.rsplit(')', 1)[-1].split()[0] if ')' in stat else '?'
        lines.append('  pid {0} state {1} wchan {2}: {3}'.format(
            pid, state, wchan or '-', cmdline.replace('\0', ' ').strip()[:160]))
    return '\n'.join(lines) or '  (no process left)'


def _process_state(pid):
    try:
        with open('/proc/{0}/stat'.format(pid)) as fh:
            stat = fh.read()
    except (IOError, OSError):
        return None
    fields = stat.rsplit(')', 1)[-1].split()
    return fields[0] if fields else None


def _wait_until_asleep(pgid, timeout, samples=3, interval=0.05):
    """Wait up to ``timeout`` seconds until every process of group ``pgid`` is seen asleep
    (``S``) ``samples`` times in a row: none of them has work at hand, not even a report a
    pool process wrote to the main process (whose wait that report ends). Whether that was
    seen; True at once where there is no ``/proc``."""
    if not os.path.isdir('/proc'):
        return True
    deadline = time.time() + timeout
    quiet = 0
    while quiet < samples:
        states = [_process_state(pid) for pid in _group_members(pgid)]
        quiet = quiet + 1 if all(state in ('S', None) for state in states) else 0
        if quiet >= samples:
            break
        if time.time() > deadline:
            return False
        time.sleep(interval)
    return True


def _signal(pid, signum):
    try:
        os.kill(pid, signum)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def _group_members(pgid):
    """Pids of the live (not zombie) processes of process group ``pgid``."""
    if not os.path.isdir('/proc'):
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except OSError:
            return []
    members = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/{0}/stat'.format(entry)) as fh:
                stat = fh.read()
        except (IOError, OSError):
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat.rsplit(')', 1)[-1].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ('Z', 'X'):
            members.append(int(entry))
    return members
