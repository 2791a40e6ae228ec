"""The worker harness: how it reads results and when it stops a worker."""
from __future__ import absolute_import

import time

from celery.exceptions import SoftTimeLimitExceeded

from celery_django_fixup.harness import run


class Results(object):
    """What the result backend returns for one task, poll after poll (the last one repeats)."""

    def __init__(self, *metas):
        self.metas = list(metas)
        self.polls = 0

    def __call__(self, task_ids):
        self.polls += 1
        meta = self.metas.pop(0) if len(self.metas) > 1 else self.metas[0]
        return [meta for _ in task_ids]


def collect(results, **kwargs):
    worker = run.Worker.__new__(run.Worker)
    worker._fetch = results
    outcome = run.Outcome('id-1', 'slow_query', sent_at=0.0)
    worker.collect([outcome], interval=0.0, **kwargs)
    return outcome


EARLY = {'status': 'FAILURE', 'result': SoftTimeLimitExceeded(True)}
OWN = {'status': 'FAILURE',
       'result': SoftTimeLimitExceeded('soft time limit in a query, backend=42 pid=7')}


def test_the_main_process_failure_is_provisional():
    assert run._provisional(EARLY)
    assert run._provisional({'status': 'FAILURE',
                             'result': {'exc_type': 'SoftTimeLimitExceeded',
                                        'exc_message': [True]}})
    assert not run._provisional(OWN)
    assert not run._provisional({'status': 'SUCCESS', 'result': True})


def test_the_task_own_outcome_replaces_it():
    outcome = collect(Results({'status': 'PENDING'}, EARLY, EARLY, OWN), timeout=5.0)
    assert outcome.state == 'FAILURE'
    assert outcome.backend == 42 and outcome.pid == 7


def test_a_provisional_failure_is_taken_when_nothing_replaces_it():
    results = Results(EARLY)
    outcome = collect(results, timeout=5.0, provisional_grace=0.05)
    assert outcome.state == 'FAILURE'
    assert outcome.backend is None
    assert results.polls > 1


def test_other_results_are_taken_at_once():
    results = Results(OWN)
    outcome = collect(results, timeout=5.0)
    assert outcome.backend == 42
    assert results.polls == 1


RECEIVED = ('[2026-01-01 10:00:00,000: INFO/MainProcess] Received task: '
            'cdf_demo.touch[{0}]  \n')
DONE = ('[2026-01-01 10:00:00,010: INFO/ForkPoolWorker-1] Task cdf_demo.touch[{0}] '
        '{1}\n')
IDS = ['2a7f5836-6e32-45dd-b077-8674d286f7f{0}'.format(n) for n in range(4)]


def make_worker(tmpdir, log_text):
    tmpdir.join('worker.log').write(log_text)  # where a worker started in ``workdir`` logs
    worker = run.Worker.__new__(run.Worker)
    worker.workdir = str(tmpdir)
    return worker


def test_tasks_in_flight_are_read_from_the_log(tmpdir):
    worker = make_worker(tmpdir, ''.join(RECEIVED.format(task_id) for task_id in IDS) +
                         DONE.format(IDS[0], "succeeded in 0.01s: {'pid': 1}") +
                         DONE.format(IDS[1], 'raised unexpected: DemoTaskError()') +
                         DONE.format(IDS[2], 'retry: Retry in 1s'))
    assert worker.in_flight() == set([IDS[3]])
    tmpdir.join('worker.log').write(DONE.format(IDS[3], 'succeeded in 0.01s: None'), mode='a')
    assert worker.in_flight() == set()


#: Celery 5 logs a task received as "Task NAME[ID] received".
RECEIVED_5 = ('[2026-01-01 10:00:00,000: INFO/MainProcess] Task cdf_demo.touch[{0}] '
              'received\n')


def test_tasks_in_flight_are_read_from_a_celery_5_log(tmpdir):
    worker = make_worker(tmpdir, ''.join(RECEIVED_5.format(task_id) for task_id in IDS) +
                         DONE.format(IDS[0], "succeeded in 0.01s: {'pid': 1}") +
                         DONE.format(IDS[1], 'raised unexpected: DemoTaskError()'))
    assert worker.in_flight() == set(IDS[2:])
    tmpdir.join('worker.log').write(DONE.format(IDS[2], 'succeeded in 0.01s: None') +
                                    DONE.format(IDS[3], 'retry: Retry in 1s'), mode='a')
    assert worker.in_flight() == set()


class Process(object):
    """A worker's main process that exits on SIGTERM (``exits=True``) or never does."""

    def __init__(self, exits=True):
        self.pid = 0
        self.exits = exits
        self.returncode = None

    def poll(self):
        return self.returncode


def stopping(tmpdir, monkeypatch, log_text, process, finish_after=None, **kwargs):
    """``Worker.stop()`` on a fake process; returns the result, when SIGTERM was sent, the log."""
    worker = make_worker(tmpdir, log_text)
    worker.proc = process
    worker.stop_result = None
    worker._kill_group = lambda: None
    signalled = []

    def signal(pid, signum):
        signalled.append(time.time())
        if process.exits:
            process.returncode = 0
    monkeypatch.setattr(run, '_signal', signal)
    monkeypatch.setattr(run, '_group_members', lambda pgid: [])
    started = time.time()
    if finish_after is not None:
        import threading
        finisher = threading.Timer(finish_after, lambda: tmpdir.join('worker.log').write(
            DONE.format(IDS[0], 'succeeded in 0.3s: None'), mode='a'))
        finisher.start()
    result = worker.stop(**kwargs)
    return result, signalled[0] - started, worker.log()


def test_stop_waits_for_the_task_in_flight_then_signals(tmpdir, monkeypatch):
    result, signalled_at, _ = stopping(tmpdir, monkeypatch, RECEIVED.format(IDS[0]),
                                       Process(), finish_after=0.3)
    assert result == 'stopped'
    assert 0.3 <= signalled_at < 2.0


def test_stop_signals_a_worker_whose_task_never_finishes(tmpdir, monkeypatch):
    result, signalled_at, log = stopping(tmpdir, monkeypatch, RECEIVED.format(IDS[0]),
                                         Process(exits=False), settle=0.2, timeout=0.2)
    assert result == 'hung'
    assert 0.2 <= signalled_at < 1.0
    assert '[harness] still running 0 s after SIGTERM' in log


class LosesTheFirstShutdown(Process):
    """A Celery 4 main process whose first SIGTERM lands in its broker read handler: it logs a
    lost broker connection and runs on; the second one stops it."""

    def __init__(self, log):
        super(LosesTheFirstShutdown, self).__init__(exits=False)
        self.log = log
        self.signals = 0

    def signalled(self):
        self.signals += 1
        if self.signals == 1:
            self.log.write('[2026-01-01 00:00:00,000: WARNING/MainProcess] consumer: Connection '
                           'to broker lost. Trying to re-establish the connection...\n',
                           mode='a')
        else:
            self.returncode = 0


def signal_to(process, monkeypatch):
    sent = []

    def signal(pid, signum):
        sent.append(signum)
        process.signalled()
    monkeypatch.setattr(run, '_signal', signal)
    monkeypatch.setattr(run, '_group_members', lambda pgid: [])
    return sent


def test_stop_signals_again_a_shutdown_taken_for_a_lost_broker_connection(tmpdir, monkeypatch):
    worker = make_worker(tmpdir, '')
    process = worker.proc = LosesTheFirstShutdown(tmpdir.join('worker.log'))
    worker.stop_result = None
    worker._kill_group = lambda: None
    sent = signal_to(process, monkeypatch)

    assert worker.stop(timeout=2, settle=0) == 'stopped'
    assert len(sent) == 2
    assert 'sent again' in worker.log()


def test_stop_does_not_signal_again_a_worker_that_hangs_otherwise(tmpdir, monkeypatch):
    worker = make_worker(tmpdir, '')
    process = worker.proc = Process(exits=False)
    process.signalled = lambda: None
    worker.stop_result = None
    worker._kill_group = lambda: None
    sent = signal_to(process, monkeypatch)

    assert worker.stop(timeout=0.3, settle=0) == 'hung'
    assert len(sent) == 1
