"""Celery's own unit tests of its Django fix-up, taken from the installed release's sdist.

Celery's source distribution on the package index carries its test suite (``t/unit``). At test
time the sdist of the installed Celery release is fetched with pip (``pip download --no-deps
--no-binary celery celery==X``) into ``<tox env>/upstream-sdists`` (kept for later runs), and
``t/unit/fixups/test_django.py`` is extracted with the files it imports (``t/unit/conftest.py``
for the ``app``/``patching``/``module``/``mask_modules`` fixtures and ``conftest.module_exists``,
and the package ``__init__`` files). Nothing of it is kept in this repository.

Network-free runs: ``CDF_UPSTREAM_SDISTS`` names a folder already holding
``celery-X.tar.gz`` (for example filled by the pip command above); it is looked at first. A
failed download skips, except under ``CI=true``, where it fails.
"""
from __future__ import absolute_import

import io
import os
import subprocess
import sys
import tarfile

import pytest

import upstream_deviations

HERE = os.path.dirname(os.path.abspath(__file__))

#: What test_django.py needs from the sdist, relative to its top folder.
MEMBERS = (
    't/__init__.py',
    't/unit/__init__.py',
    't/unit/conftest.py',
    't/unit/fixups/__init__.py',
    't/unit/fixups/test_django.py',
)
TEST_FILE = 't/unit/fixups/test_django.py'

#: Celery's own pytest settings that the file relies on (pyproject.toml: python_classes,
#: xfail_strict); the markers are registered by the plugin.
PYTEST_INI = """\
[pytest]
python_classes = test_*
xfail_strict = true
"""

DOWNLOAD_TIMEOUT = 600
RUN_TIMEOUT = 600


def installed_release():
    import celery
    return '.'.join(str(part) for part in celery.VERSION[:3])


def cache_folder():
    return os.path.join(sys.prefix, 'upstream-sdists')


def _sdist_in(folder, release):
    path = os.path.join(folder, 'celery-{0}.tar.gz'.format(release))
    return path if os.path.isfile(path) else None


def _run(command, timeout, **kwargs):
    """(exit status, output) of a command; output is stdout and stderr together."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            **kwargs)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        output += '\n(killed after {0} s)'.format(timeout).encode()
        return None, output.decode('utf-8', 'replace')
    return proc.returncode, output.decode('utf-8', 'replace')


def fetch_sdist(release, missing):
    """Path of ``celery-<release>.tar.gz``: from CDF_UPSTREAM_SDISTS, the cache, or pip."""
    offline = os.environ.get('CDF_UPSTREAM_SDISTS')
    if offline:
        found = _sdist_in(offline, release)
        if found:
            return found
    folder = cache_folder()
    found = _sdist_in(folder, release)
    if found:
        return found
    if not os.path.isdir(folder):
        os.makedirs(folder)
    # --no-binary celery: the sdist, not the wheel (which has no t/); --no-deps: nothing else.
    status, output = _run([sys.executable, '-m', 'pip', 'download', '--no-deps',
                           '--no-binary', 'celery', '--disable-pip-version-check',
                           '--dest', folder, 'celery=={0}'.format(release)], DOWNLOAD_TIMEOUT)
    found = _sdist_in(folder, release)
    if status != 0 or not found:
        missing('could not download the sdist of Celery {0} (exit status {1}); set '
                'CDF_UPSTREAM_SDISTS to a folder holding celery-{0}.tar.gz to run offline:\n'
                '{2}'.format(release, status, output[-3000:]))
    return found


def extract(sdist, release, target):
    """Write MEMBERS of the sdist under ``target``; a missing one fails the test."""
    prefix = 'celery-{0}/'.format(release)
    with tarfile.open(sdist, 'r:gz') as tar:
        for member in MEMBERS:
            try:
                info = tar.getmember(prefix + member)
            except KeyError:
                pytest.fail('{0} has no {1}: cannot run Celery\'s own tests'.format(
                    os.path.basename(sdist), member), pytrace=False)
            path = os.path.join(target, *member.split('/'))
            if not os.path.isdir(os.path.dirname(path)):
                os.makedirs(os.path.dirname(path))
            with io.open(path, 'wb') as fh:
                fh.write(tar.extractfile(info).read())
    with io.open(os.path.join(target, 'pytest.ini'), 'w') as fh:
        fh.write(PYTEST_INI)


class UpstreamTests(object):
    """Celery's test_django.py, extracted under ``root``, run in a pytest subprocess."""

    def __init__(self, release, root):
        self.release = release
        self.root = root

    def run(self, variant, results_file):
        env = dict(os.environ)
        for name in ('DJANGO_SETTINGS_MODULE', 'CELERY_LOADER', 'PYTEST_ADDOPTS',
                     'CELERY_SKIP_CHECKS', 'FORKED_BY_MULTIPROCESSING'):
            env.pop(name, None)
        env.update(
            PYTHONPATH=HERE,
            PYTHONDONTWRITEBYTECODE='1',
            CDF_UPSTREAM_VARIANT=variant,
            CDF_UPSTREAM_RELEASE=self.release,
            CDF_UPSTREAM_RESULTS=results_file,
        )
        command = [sys.executable, '-m', 'pytest', '-c', os.path.join(self.root, 'pytest.ini'),
                   '--rootdir', self.root, '-p', 'no:cacheprovider',
                   '-p', 'cdf_upstream_plugin', '-rfExX', '--color=no', TEST_FILE]
        status, output = _run(command, RUN_TIMEOUT, cwd=self.root, env=env)
        return status, output


@pytest.fixture(scope='session')
def upstream_tests(tmp_path_factory, missing):
    """Celery's own test_django.py for the installed release, ready to run."""
    release = installed_release()
    if release not in upstream_deviations.DEVIATIONS:
        pytest.skip('Celery\'s own Django fix-up tests are run on Celery {0}; Celery {1} is '
                    'installed'.format(', '.join(sorted(upstream_deviations.DEVIATIONS)),
                                       release))
    sdist = fetch_sdist(release, missing)
    root = str(tmp_path_factory.mktemp('celery-{0}-t'.format(release)))
    extract(sdist, release, root)
    return UpstreamTests(release, root)
