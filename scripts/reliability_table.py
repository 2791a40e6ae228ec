#!/usr/bin/env python
"""Print the README's Reliability table from the fault suite's measurements.

The fault suite (``tests/faults``) appends one JSON line per scenario run to
``$CDF_RESULTS_DIR/celery-<version>-py<X.Y>.jsonl`` (see ``record`` in
``tests/faults/conftest.py``). This script reads every ``*.jsonl`` file of that folder and
prints an RST table: one row per scenario and case, one column per stock Celery release line
measured (4.1, 4.3 and 4.4.0 unless told otherwise) and one for the patched fix-up, over every
environment that ran it. Each cell is what was measured, worst case first::

    python scripts/reliability_table.py --results results/            # print the table
    python scripts/reliability_table.py --results results/ --readme README.rst

With ``--readme`` the table replaces whatever stands between the two marker comments
``.. reliability-table-start`` and ``.. reliability-table-end`` of that file.

The facts a cell shows (each record may have any of them):

=====================  ===============================================================
``failed``             tasks that failed, other than those meant to (``N failed``)
``timeout``            tasks that never came back (``N timed out``)
``reused``             a failed task's connection handed to the next task
``shared_sessions``    server sessions used by two processes
``beat_errors``        failed queries of the embedded beat process
``left_open``          sessions left open by finished tasks while the worker was idle
``never_stored``       results the worker's main process never stored (callers wait)
``abandoned``          sessions the server counted as abandoned (closed without a goodbye)
``file_errors``        failed writes to files the embedded beat scheduler keeps open
``files_damaged``      such files holding foreign bytes or missing lines afterwards
``socket_errors``      failed round trips on a socket that scheduler keeps open
``lost_connection``    the main process's own queries that lost their session
``transaction_errors`` ``TransactionManagementError`` raised in a test
``committed``          rows a ``TestCase`` wrote that were committed, not rolled back
``reused_interrupted`` a session handed on after a soft time limit the task caught
``stale``              tasks that read back a value that was not theirs
``not_set_up``         tasks that ran on a session Django did not open (the driver reconnected
                       by itself: no ``init_connection_state``, so not the isolation level
                       Django sets; on Django 1.11, sessions seen beyond those Django opened)
``pool_errors``        ``PoolTimeout`` / ``pool is closed`` seen in task errors or the log
``parent_ended``       a child ended the session its parent held at fork
``worker_restarted``   the worker's processes changed
``hung``               SIGTERM did not stop the worker (``hung``)
``sessions``           sessions opened, as the server counted them (``N sessions``), or
                       ``{alias: N}``
``kills``              sessions ended on purpose (``N kills``)
``rss_growth``         growth of the worker's memory after warm-up (a fraction)
=====================  ===============================================================

Runs on Python 2.7 and 3.
"""
from __future__ import absolute_import, print_function

import argparse
import glob
import io
import json
import os
import sys
import textwrap

#: Scenario names as the tests record them, in the order and with the titles of the table.
SCENARIOS = [
    ('fork', '1. Fork inheritance'),
    ('killed', '2. Backend killed between tasks'),
    ('restart', '3. Server restart'),
    ('idle_timeout', '4. Server idle timeout'),
    ('interrupted', '5. Interrupted or failed task (prefork -c 1)'),
    ('aliases', '6. Two aliases'),
    ('pools', '7. Pools'),
    ('soak', '8. Soak, 10,000 tasks'),
    ('main_process', '9. Main process writes (django-db results), server ends its session'),
    ('exits', '10. Processes that exit: sessions abandoned'),
    ('fork_in_task', '11. Process forked inside a task, 5 forks (-c 1; patched: Python 3.7+)'),
    ('beat_fds', "12. Embedded beat's files and sockets (-B -c 1; failed: beat ticks)"),
    ('parent_session', "13. Main process's own session, pool forked 6 times (PyMySQL)"),
    ('testing_worker', '14. Testing worker (start_worker) inside a Django TestCase'),
    ('pymysql_reconnect', '15. Killed while idle, reconnected by Django (-c 1)'),
    ('caught_interrupt', '16. Soft time limit caught by the task (-c 1)'),
    ('django_pool', '17. Django connection pool (Django 5.1+)'),
    ('beat_pollers', "18. Embedded beat frees the event-loop pollers it inherited (-B -c 1; "
                     "failed: beat ticks)"),
]

#: Stock release lines shown by default: ``4.1`` means every 4.1.x, ``4.4.0`` only 4.4.0.
DEFAULT_STOCK = ['4.1', '4.3', '4.4.0', '5.5', '5.7']

START = '.. reliability-table-start'
END = '.. reliability-table-end'

DEFAULT_COMMAND = 'make reliability'

#: (fact, how a non-zero value reads) for the counts shown after failures, in this order.
ISSUES = [
    ('reused', '{0} reused after failure'),
    ('shared_sessions', '{0} shared'),
    ('beat_errors', '{0} beat errors'),
    ('left_open', '{0} left open'),
    ('never_stored', '{0} results never stored'),
    ('abandoned', '{0} abandoned'),
    ('file_errors', '{0} file write errors'),
    ('files_damaged', '{0} files damaged'),
    ('socket_errors', '{0} socket errors'),
    ('lost_connection', '{0} lost connection'),
    ('transaction_errors', '{0} TransactionManagementError'),
    ('committed', '{0} rows committed'),
    ('reused_interrupted', '{0} reused after an interruption'),
    ('stale', '{0} stale reads'),
    ('not_set_up', '{0} on sessions Django did not set up'),
    ('pool_errors', '{0} pool errors'),
    ('parent_ended', "parent's session ended"),
]


def read_records(folder):
    """Every record of every ``*.jsonl`` file in ``folder``."""
    records = []
    paths = sorted(glob.glob(os.path.join(folder, '*.jsonl')))
    for path in paths:
        with io.open(path, encoding='utf-8') as fh:
            for number, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    records.append(json.loads(line))
                except ValueError as exc:
                    raise SystemExit('{0}:{1}: not JSON: {2}'.format(path, number, exc))
    return paths, records


def case_of(record):
    """The row a record belongs to, within its scenario."""
    if record.get('case'):
        return record['case']
    parts = [record.get('database'), record.get('broker')]
    return ', '.join(str(part) for part in parts if part)


def matches(version, line):
    """True if Celery ``version`` (``'4.3.0'``) is of release ``line`` (``'4.3'``,
    ``'4.4.0'``)."""
    return version == line or version.startswith(line + '.')


def merge(records):
    """The worst of several runs of one cell: the highest counts, ``hung`` if any hung, and
    the range of sessions."""
    merged = {'runs': len(records), 'envs': set()}
    for record in records:
        merged['envs'].add((record.get('celery'), record.get('python')))
        for key in ['failed', 'timeout'] + [key for key, _ in ISSUES]:
            if key in record:
                merged[key] = max(merged.get(key, 0), int(record[key] or 0))
        for key in ('hung', 'worker_restarted'):
            if key in record:
                merged[key] = merged.get(key, False) or bool(record[key])
        if 'kills' in record:
            merged['kills'] = max(merged.get('kills', 0), int(record['kills'] or 0))
        if 'rss_growth' in record:
            merged['rss_growth'] = max(merged.get('rss_growth', -1.0), record['rss_growth'])
        sessions = record.get('sessions')
        if isinstance(sessions, dict):
            ranges = merged.setdefault('sessions_by_alias', {})
            for alias, count in sessions.items():
                low, high = ranges.get(alias, (count, count))
                ranges[alias] = (min(low, count), max(high, count))
        elif sessions is not None:
            low, high = merged.get('sessions', (sessions, sessions))
            merged['sessions'] = (min(low, sessions), max(high, sessions))
    return merged


def _span(low_high):
    low, high = low_high
    return str(low) if low == high else '{0}-{1}'.format(low, high)


def cell_text(merged, show_envs=False):
    """``0 failed / 2 sessions``, ``98 timed out, hung``..."""
    issues = []
    if merged.get('failed') or not merged.get('timeout'):
        if 'failed' in merged:
            issues.append('{0} failed'.format(merged['failed']))
    if merged.get('timeout'):
        issues.append('{0} timed out'.format(merged['timeout']))
    for key, text in ISSUES:
        if merged.get(key):
            issues.append(text.format(merged[key]))
    if merged.get('worker_restarted'):
        issues.append('worker restarted')
    if merged.get('hung'):
        issues.append('hung')
    counts = []
    if 'sessions' in merged:
        counts.append('{0} session{1}'.format(
            _span(merged['sessions']), '' if merged['sessions'] == (1, 1) else 's'))
    if 'sessions_by_alias' in merged:
        by_alias = merged['sessions_by_alias']
        counts.append('sessions {0}'.format(', '.join(
            '{0} {1}'.format(alias, _span(by_alias[alias])) for alias in sorted(by_alias))))
    if merged.get('kills'):
        counts.append('{0} kills'.format(merged['kills']))
    if 'rss_growth' in merged:
        counts.append('memory {0:+.1%}'.format(merged['rss_growth']))
    text = ', '.join(issues)
    if counts:
        text = ' / '.join(part for part in [text, ', '.join(counts)] if part)
    if show_envs:
        text += ' ({0} env{1})'.format(len(merged['envs']), '' if len(merged['envs']) == 1
                                       else 's')
    return text or 'ran'


def build_rows(records, stock_lines):
    """``(columns, rows)``: the header cells and, per row, its label and cell texts."""
    titles = dict(SCENARIOS)
    order = [name for name, _ in SCENARIOS]
    extra = sorted(set(record.get('scenario') for record in records) - set(order))
    scenario_order = order + extra

    columns = []
    for stock in stock_lines:
        found = sorted(set(
            (record.get('celery'), record.get('python', '').rsplit('.', 1)[0])
            for record in records
            if record.get('variant') == 'stock' and matches(record.get('celery', ''), stock)))
        where = '; '.join('{0}, py{1}'.format(celery, python) for celery, python in found)
        columns.append(('stock', stock, 'stock {0}{1}'.format(
            stock, ' ({0})'.format(where) if where else '')))
    patched_envs = sorted(set(
        (record.get('celery'), record.get('python', '').rsplit('.', 1)[0])
        for record in records if record.get('variant') == 'patched'))
    columns.append(('patched', None, 'patched (worst of {0} env{1})'.format(
        len(patched_envs), '' if len(patched_envs) == 1 else 's')))

    keys = []
    for record in records:
        key = (record.get('scenario'), case_of(record))
        if key not in keys:
            keys.append(key)
    keys.sort(key=lambda key: (scenario_order.index(key[0]), key[1]))

    rows = []
    for scenario, case in keys:
        label = titles.get(scenario, scenario)
        if case:
            label = '{0}: {1}'.format(label, case)
        cells = []
        for variant, stock, _ in columns:
            chosen = [record for record in records
                      if (record.get('scenario'), case_of(record)) == (scenario, case) and
                      record.get('variant') == variant and
                      (stock is None or matches(record.get('celery', ''), stock))]
            cells.append(cell_text(merge(chosen)) if chosen else 'not run')
        rows.append((label, cells))
    return [title for _, _, title in columns], rows


def render(columns, rows, command):
    """The table as RST (a ``list-table``), with the command that regenerates it."""
    out = ['.. list-table::', '   :header-rows: 1', '']
    out.append('   * - Scenario')
    out.extend('     - {0}'.format(title) for title in columns)
    for label, cells in rows:
        out.append('   * - {0}'.format(label))
        out.extend('     - {0}'.format(cell) for cell in cells)
    out.append('')
    out.extend(textwrap.wrap(
        'Each cell is measured on the servers and processes of a real worker (prefork '
        '``-c 2`` unless the row says otherwise): tasks that failed or never came back, '
        'sessions the server counted, whether SIGTERM stopped the worker. Regenerate with '
        '``{0}``.'.format(command), width=96, break_on_hyphens=False, break_long_words=False))
    return '\n'.join(out) + '\n'


def rewrite_readme(path, table):
    """Put ``table`` between the marker comments of ``path``; True if the file changed."""
    with io.open(path, encoding='utf-8') as fh:
        text = fh.read()
    lines = text.splitlines(True)
    starts = [i for i, line in enumerate(lines) if line.strip() == START]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if len(starts) != 1 or len(ends) != 1 or starts[0] > ends[0]:
        raise SystemExit('{0}: needs exactly one "{1}" line followed by one "{2}" line'.format(
            path, START, END))
    new = lines[:starts[0] + 1] + ['\n', table, '\n'] + lines[ends[0]:]
    new_text = ''.join(new)
    if new_text == text:
        return False
    with io.open(path, 'w', encoding='utf-8') as fh:
        fh.write(new_text)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--results', default=os.environ.get('CDF_RESULTS_DIR'),
                        help='folder of the *.jsonl files (default: $CDF_RESULTS_DIR)')
    parser.add_argument('--stock', nargs='+', default=DEFAULT_STOCK, metavar='LINE',
                        help='stock Celery lines to show, e.g. 4.1 4.3 4.4.0 (default)')
    parser.add_argument('--readme', help='rewrite the table between the markers of this file')
    parser.add_argument('--command', default=DEFAULT_COMMAND,
                        help='the command the table says regenerates it')
    args = parser.parse_args(argv)
    if not args.results:
        parser.error('give --results DIR or set CDF_RESULTS_DIR')
    paths, records = read_records(args.results)
    if not records:
        raise SystemExit('no fault-suite records in {0}'.format(args.results))
    columns, rows = build_rows(records, args.stock)
    table = render(columns, rows, args.command)
    if args.readme:
        changed = rewrite_readme(args.readme, table)
        print('{0}: {1} ({2} records from {3} files)'.format(
            args.readme, 'table updated' if changed else 'table unchanged', len(records),
            len(paths)))
    else:
        sys.stdout.write(table)
    return 0


if __name__ == '__main__':
    sys.exit(main())
