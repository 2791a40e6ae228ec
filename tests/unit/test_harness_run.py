"""The worker harness: how it reads results and when it stops a worker."""
from __future__ import absolute_import

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


def test_tasks_in_flight_are_read_from_the_log(tmpdir):
    log = tmpdir.join('worker.log')  # where a worker started in ``workdir`` logs
    log.write(''.join(RECEIVED.format(task_id) for task_id in IDS) +
              DONE.format(IDS[0], "succeeded in 0.01s: {'pid': 1}") +
              DONE.format(IDS[1], 'raised unexpected: DemoTaskError()') +
              DONE.format(IDS[2], 'retry: Retry in 1s'))
    worker = run.Worker.__new__(run.Worker)
    worker.workdir = str(tmpdir)
    assert worker.in_flight() == set([IDS[3]])
    log.write(DONE.format(IDS[3], 'succeeded in 0.01s: None'), mode='a')
    assert worker.in_flight() == set()
