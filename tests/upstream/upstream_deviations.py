"""Where the patched class is meant to fail Celery's own unit tests of its Django fix-up.

For each Celery release whose ``t/unit/fixups/test_django.py`` is run against the patched class
(test_upstream_contract.py), the tests that must fail, by their id in that file
(``class::test``), each with the README rule that makes our class differ. They run as strict
expected failures: one that passes fails the run (the entry is stale, or the rule was lost), and
so does an entry naming a test the release does not have. Every other test of the file must
pass. A release missing here is not checked.

Only deliberate rules belong here. A test that fails because the class does not yet follow a
Celery release's names or signatures is a defect to fix, not a deviation. So a deviation counts
only when the test fails on an assertion (a mock's ``assert_*``, ``assert``, or
``pytest.raises`` not seeing its exception); a test that fails on any other exception is a plain
failure. An entry may name more exceptions (of ``celery_django_fixup.exceptions``) after its
reason, when the same rule makes the test fail on them.
"""
from __future__ import absolute_import

#: install() connects embedded beat to our own handler, not to close_database.
BEAT = (
    "Fork rule: embedded beat is a process forked from the worker, so install() connects "
    "beat_embedded_init to on_beat_embedded_init (forget the inherited connections without "
    "closing anything: beat has closed every inherited file descriptor by then) instead of "
    "Celery's close_database, a non-forced close. (The test also replaces app.conf by a dict "
    "without CELERY_DB_HEALTH_CHECKS, so that setting is looked up in Django's settings, which "
    "the test replaces by a MagicMock: hence InvalidSetting.)")

#: A pool process drops what it inherited, with no IO, and nothing else.
FORK_CHILD = (
    "Fork rule: a process forked from a worker process drops the connections it inherited "
    "with no network IO, pointing each socket at /dev/null before the driver closes it "
    "(os.register_at_fork; on 2.7 and 3.6 at worker_process_init), and resets the wrapper; not "
    "Celery's _maybe_close_fd (os.close of the fd) followed by _close_database(force=True) "
    "(5.6+: _close_database()), which the test asserts.")

#: CELERY_DB_REUSE_MAX's periodic close is forced.
REUSE_MAX_FORCED = (
    "CELERY_DB_REUSE_MAX rule: the count is kept per thread (each thread has connections of its "
    "own), not in the _db_recycles the test sets, and the periodic close is "
    "_close_database(force=True); Celery's stopped forcing in 4.2, so it no longer forced a "
    "reconnect (celery#6216).")

#: An alias whose close raises is logged, never raised, and never skips the others.
ALIASES_LOGGED = (
    "Several-aliases rule: an alias whose close raises is logged under its name and does not "
    "keep the others from being closed; Celery re-raises any DatabaseError that does not say "
    "'closed' or 'not connected' (and since 4.0 Celery's signal dispatch only logs it, so the "
    "remaining aliases silently stay open).")

#: Task boundaries follow CONN_MAX_AGE instead of closing every connection.
CONN_MAX_AGE = (
    "Task-boundary rule: a connection is closed only when Django would close it at the end of "
    "a request (close_if_unusable_or_obsolete), or when it is unsafe; Celery 5.6+ closes every "
    "connection before and after every task, ignoring CONN_MAX_AGE (celery#9824, #9953).")

#: Django connection pools are not closed at task boundaries.
POOL_KEPT = (
    "Task-boundary rule, with a pool: a Django connection pool (OPTIONS['pool'], Django 5.1+) "
    "is kept across tasks, never closed at a task boundary (the close hands the connection "
    "back to it); Celery 5.6.0 closes the pool after every task (5.6.1+ in prefork only), so "
    "every task opens new server sessions (celery#10554).")

DEVIATIONS = {
    '5.5.3': {
        'test_DjangoWorkerFixup::test_install': (BEAT, 'InvalidSetting'),
        'test_DjangoWorkerFixup::test_on_worker_process_init': FORK_CHILD,
        'test_DjangoWorkerFixup::test_close_database': REUSE_MAX_FORCED,
        'test_DjangoWorkerFixup::test__close_database': ALIASES_LOGGED,
    },
    '5.7.0': {
        'test_DjangoWorkerFixup::test_install': (BEAT, 'InvalidSetting'),
        'test_DjangoWorkerFixup::test_on_worker_process_init': FORK_CHILD,
        'test_DjangoWorkerFixup::test_close_database': REUSE_MAX_FORCED,
        'test_DjangoWorkerFixup::test__close_database': ALIASES_LOGGED + ' ' + CONN_MAX_AGE,
        'test_DjangoWorkerFixup::test_close_database_skip_conn_pool': CONN_MAX_AGE,
        'test_DjangoWorkerFixup::test_close_database_suppresses_close_pool_keyerror': POOL_KEPT,
        'test_DjangoWorkerFixup::test_close_database_conn_pool_based_on_settings':
            CONN_MAX_AGE + ' ' + POOL_KEPT,
        'test_DjangoWorkerFixup::test_close_database_conn_pool_thread_pool': POOL_KEPT,
    },
}
