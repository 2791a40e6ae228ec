"""How the worker harness reads results: Celery 4.0-4.1's early soft-time-limit failure."""
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
