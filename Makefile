# make test            the whole tox matrix (tox.ini), real workers included
#                      (ENVS="env1 env2" runs a subset the same way; ARGS="..." go to pytest,
#                      e.g. ARGS='-m ""' runs the fault suite and the soak in every env)
# make test-env ENV=py38-celery43-django32 [ARGS="-k fork -x"]
#                      one tox env; ARGS go to pytest
# make clean           remove tox envs, the bootstrap venv and build leftovers
#
# JOBS=N sets how many tox envs run at once (default 3: each test session uses its own
# scratch databases and worker queues, so envs do not see each other, and they mostly wait on
# workers and servers: 3 keeps the matrix well inside CI's time on 2 cores).

SHELL := /bin/bash
.DEFAULT_GOAL := test

BOOTSTRAP := .tox-bootstrap
TOX := $(BOOTSTRAP)/bin/tox
JOBS ?= 3
ENV ?=
ARGS ?=
ENVS ?=

# pyenv's shims only expose the global version(s); tox needs every python2.7/3.6/3.7/3.8 on PATH.
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null || { test -d "$$HOME/.pyenv" && echo "$$HOME/.pyenv"; })
PYENV_BINS := $(if $(PYENV_ROOT),$(wildcard $(PYENV_ROOT)/versions/*/bin))
empty :=
space := $(empty) $(empty)
export PATH := $(subst $(space),:,$(strip $(PYENV_BINS) $(PATH)))

.PHONY: test test-env verify bench bench44 bench57 reliability clean

# The runner: tox and virtualenv pinned in requirements/tox.txt, in a venv made from the first
# Python >= 3.7 that can create one. Rebuilt when the pins change, reused otherwise.
$(BOOTSTRAP)/.installed: requirements/tox.txt
	@set -e; \
	if [ ! -x $(BOOTSTRAP)/bin/python ]; then \
	    for py in python3 python3.13 python3.12 python3.11 python3.10 python3.9 python3.8 python3.7; do \
	        command -v $$py >/dev/null 2>&1 || continue; \
	        $$py -c 'import sys; sys.exit(sys.version_info < (3, 7))' 2>/dev/null || continue; \
	        rm -rf $(BOOTSTRAP); \
	        if $$py -m venv $(BOOTSTRAP) >/dev/null 2>&1; then echo "bootstrap: $(BOOTSTRAP)/ from $$(command -v $$py)"; break; fi; \
	    done; \
	    [ -x $(BOOTSTRAP)/bin/python ] || { echo "bootstrap: no Python >= 3.7 with a working venv module on PATH" >&2; rm -rf $(BOOTSTRAP); exit 1; }; \
	fi; \
	$(BOOTSTRAP)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/tox.txt; \
	touch $@

# Runs every env whose interpreter exists; the others are listed in a banner (before and after
# the run) and skipped. Fails if any env that ran fails, if no env could run, or if no test passed.
test: $(BOOTSTRAP)/.installed
	@$(BOOTSTRAP)/bin/python -c "$$RUN_MATRIX" $(JOBS) $(ENVS) -- $(ARGS)

test-env: $(BOOTSTRAP)/.installed
	@test -n "$(ENV)" || { echo 'usage: make test-env ENV=<tox env> [ARGS="<pytest args>"]' >&2; exit 2; }
	$(TOX) run -e $(ENV) --skip-missing-interpreters false -- $(ARGS)

# Stock vs patched workers on Celery 4.1, 4.3 and 5.7, on a throwaway PostgreSQL and a
# filesystem broker: no service needed. Each runs where its interpreter is found (the others are
# listed as skipped); at least one must. ARGS go to the verify command (e.g. ARGS="--tasks 50").
VERIFY_ENVS := verify-py36-celery41-django111 verify-py38-celery43-django32 verify-py313-celery57-django61
verify: $(BOOTSTRAP)/.installed
	@ran=; for env in $(VERIFY_ENVS); do \
	    py=python$$(echo $$env | sed -E 's/^verify-py([0-9])([0-9]+)-.*/\1.\2/'); \
	    if command -v $$py >/dev/null 2>&1; then \
	        $(TOX) run -e $$env -- $(ARGS) || exit $$?; ran=1; \
	    else echo "!! SKIPPED $$env: no $$py on PATH"; fi; \
	done; test -n "$$ran" || { echo 'verify: none of python3.6, 3.8, 3.13 is on PATH' >&2; exit 1; }

# The benchmark of benchmarks/README.rst (ARGS go to benchmarks/bench.py, in each env):
# Celery 4.4.0 + Django 3.2 (plain, TLS), then Celery 5.7 + Django 5.2 (plain, Django's
# connection pool). `make bench44` or `make bench57` runs one of them.
bench: bench44 bench57

bench44: $(BOOTSTRAP)/.installed
	$(TOX) run -e bench -- $(ARGS)

bench57: $(BOOTSTRAP)/.installed
	$(TOX) run -e bench57 -- $(ARGS)

# The fault suite on stock 4.1, 4.3, 4.4.0, 4.4.7, 5.5 and 5.7 and patched; rewrites README's Reliability table.
RESULTS ?= .reliability-results
reliability: $(BOOTSTRAP)/.installed
	rm -rf $(RESULTS) && mkdir -p $(RESULTS)
	CDF_RESULTS_DIR=$(abspath $(RESULTS)) $(TOX) run -p $(JOBS) -e py27-celery41-django111,py38-celery43-django32,py37-celery440-django22,py38-celery447-django32,py310-celery55-django51,py313-celery57-django61 -- -m faults
	$(BOOTSTRAP)/bin/python scripts/reliability_table.py --results $(RESULTS) --readme README.rst

clean:
	rm -rf .tox $(BOOTSTRAP) build dist .eggs .pytest_cache *.egg-info

define RUN_MATRIX
import json, os, re, shlex, subprocess, sys, tempfile, time

from virtualenv.app_data import AppDataDisabled
from virtualenv.discovery.builtin import get_interpreter

tox = os.path.join(os.path.dirname(sys.executable), 'tox')
jobs = int(sys.argv[1])
split = sys.argv.index('--')
pytest_args = sys.argv[split + 1:]
envs = sys.argv[2:split] or [
    # verify-* and bench are commands, not test envs.
    env for env in subprocess.check_output([tox, 'l', '--no-desc', '-qq']).decode().split()
    if env.startswith('py')]
started = time.time()

runnable, missing = [], []
for env in envs:
    factor = re.match(r'py(\d)(\d+)(-|\Z)', env)
    if factor is None:
        sys.exit('%s: env names must start with a pyXY factor' % env)
    spec = 'python%s.%s' % factor.group(1, 2)
    if get_interpreter('py' + factor.group(1) + factor.group(2), [], AppDataDisabled(), os.environ):
        runnable.append(env)
    else:
        missing.append((env, spec))


def banner():
    if not missing:
        return
    line = '!' * 78
    print('\n'.join(['', line, '!! SKIPPED: %d of %d tox envs, interpreter not found on PATH' % (
        len(missing), len(envs))] + ['!!   %-34s no %s' % item for item in missing] + [line, '']))


banner()
if not runnable:
    sys.exit('no tox env can run here: none of their interpreters is installed')

result_file = tempfile.NamedTemporaryFile(prefix='tox-result-', suffix='.json', delete=False).name
command = [tox, 'run-parallel', '-p', str(jobs), '--parallel-no-spinner'] if jobs > 1 else [tox, 'run']
command += ['-e', ','.join(runnable), '--skip-missing-interpreters', 'false', '--result-json', result_file]
if pytest_args:
    command += ['--'] + pytest_args
print('+ ' + ' '.join(shlex.quote(part) for part in command), flush=True)
code = subprocess.call(command)

try:
    with open(result_file) as fh:
        results = json.load(fh)['testenvs']
except ValueError:
    results = {}
os.unlink(result_file)

summary_line = re.compile(r'^=+ (.*?) in [\d.]+ ?s(?:econds)?\b.* =+\s*\Z', re.M)
totals = dict(passed=0, failed=0, skipped=0)
rows = []
for env in runnable:
    info = results.get(env, {})
    outcome = info.get('result', {})
    tests = info.get('test', [])
    output = ''.join(step.get('output', '') + step.get('err', '') for step in tests)
    # Passing envs are quiet in parallel mode: show what they ran, so the log tells the full story.
    if jobs > 1 and outcome.get('success'):
        print('\n----- %s ' % env + '-' * max(0, 70 - len(env)))
        print(output.rstrip())
    found = summary_line.findall(output)
    counts = {}
    for number, word in re.findall(r'(\d+) (\w+)', found[-1] if found else ''):
        counts[word] = int(number)
    totals['passed'] += counts.get('passed', 0)
    totals['failed'] += counts.get('failed', 0) + counts.get('error', 0) + counts.get('errors', 0)
    totals['skipped'] += counts.get('skipped', 0)
    ok = bool(outcome.get('success')) and counts.get('passed', 0) > 0
    rows.append((env, ok, outcome.get('duration', 0.0), found[-1] if found else 'no pytest summary'))

print('\n' + '=' * 78)
print('%-28s %-4s %7s  %s' % ('env', '', 'seconds', 'pytest'))
for env, ok, duration, text in rows:
    print('%-28s %-4s %7.1f  %s' % (env, 'ok' if ok else 'FAIL', duration, text))
print('matrix wall time: %.1f s for %d envs (%d at a time)' % (time.time() - started, len(rows), jobs))
banner()
failed_envs = [row[0] for row in rows if not row[1]]
if failed_envs:
    print('FAILED envs: ' + ', '.join(failed_envs))
elif code:
    print('tox exited with status %d' % code)
elif totals['passed'] == 0:
    print('no test passed in any env')
print('matrix: %(passed)d passed, %(failed)d failed, %(skipped)d skipped' % totals)
sys.exit(1 if failed_envs or code or totals['passed'] == 0 else 0)
endef
export RUN_MATRIX
