"""Running ``python -m celery_django_fixup`` as a user would, for the command-line tests.

The command runs in a subprocess with the same interpreter and the same ``celery_django_fixup``
the tests import (the checkout's, or the one installed in the environment), never with a
package the test process has already imported and patched.
"""
from __future__ import absolute_import

import os
import subprocess
import sys
import tempfile
import time

import pytest

import celery_django_fixup

#: The folder holding the ``celery_django_fixup`` under test, if it must be put on the path.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(celery_django_fixup.__file__)))
if os.path.basename(_ROOT) in ('site-packages', 'dist-packages'):
    _ROOT = None


class Result(object):
    """What a command did: ``status``, ``out`` (stdout), ``err`` (stderr), ``seconds``."""

    def __init__(self, status, out, err, seconds):
        self.status = status
        self.out = out
        self.err = err
        self.seconds = seconds

    def __repr__(self):
        return '<exit {0} after {1:.1f} s\n--- stdout\n{2}\n--- stderr\n{3}>'.format(
            self.status, self.seconds, self.out[-3000:], self.err[-3000:])


def run_cli(args, cwd=None, env=None, timeout=120.0, drop_env=()):
    """Run ``python -m celery_django_fixup ARGS``; a command still running after ``timeout``
    seconds is killed and fails the test (Python 2 has no ``communicate(timeout=)``)."""
    environ = dict(os.environ)
    for name in drop_env:
        environ.pop(name, None)
    if _ROOT:
        environ['PYTHONPATH'] = os.pathsep.join(
            path for path in (_ROOT, environ.get('PYTHONPATH')) if path)
    environ.update(env or {})
    out_file = tempfile.TemporaryFile()
    err_file = tempfile.TemporaryFile()
    started = time.time()
    try:
        proc = subprocess.Popen([sys.executable, '-m', 'celery_django_fixup'] + list(args),
                                cwd=cwd, env=environ, stdout=out_file, stderr=err_file)
        while proc.poll() is None:
            if time.time() - started > timeout:
                proc.kill()
                proc.wait()
                pytest.fail('celery-django-fixup {0} ran for more than {1:g} s'.format(
                    ' '.join(args), timeout))
            time.sleep(0.05)
        out_file.seek(0)
        err_file.seek(0)
        return Result(proc.returncode, out_file.read().decode('utf-8', 'replace'),
                      err_file.read().decode('utf-8', 'replace'), time.time() - started)
    finally:
        out_file.close()
        err_file.close()


def assert_one_line_error(result, *fragments):
    """Exit status 2, nothing on stdout, one line on stderr that holds every fragment."""
    assert result.status == 2, result
    assert result.out == '', result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result
    assert lines[0].startswith('celery-django-fixup '), result
    assert 'Traceback' not in result.err, result
    for fragment in fragments:
        assert fragment in lines[0], (fragment, result)
    return lines[0]
