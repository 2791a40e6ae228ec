"""What ``celery-django-fixup diff`` shows, and the shipped upstream backports.

The first part checks :mod:`celery_django_fixup.showdiff`: every method of the patched class is
shown, with a reason from ``OVERRIDES`` that matches the class. The rest checks the backports of
celery#4292 and celery#6134 in ``patches/upstream-backports/`` (a record of Celery 4.4.4's own
fix-up, not this package's change): lookup, pure-Python application, and regeneration.

Every test runs in every Celery 4 environment: where the installed Celery needs a diff, that
diff is applied to the installed ``celery/fixups/django.py``; on 4.4.4 to 4.4.7 the installed
file must already hold both changes, and the 4.4.0 diff, reversed, must turn it back into a file
that diff applies to. On Celery 5 the tests that apply a diff to the installed file are skipped
(the backports are for Celery 4 files); the ``diff`` tests run everywhere.
"""
from __future__ import absolute_import

import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types

import pytest

from celery_django_fixup import showdiff
from celery_django_fixup import upstream_patches as up
from celery_django_fixup import versions, worker

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPO_PATCHES = os.path.join(REPO, 'patches', 'upstream-backports')
INSTALLED_TEXT = '.'.join(str(part) for part in versions.celery_version())
SCRIPT = os.path.join(REPO, 'scripts', 'make_patches.py')

SUPPORTED = [tuple(int(p) for p in v.split('.')) for v in (
    '4.0.0', '4.0.1', '4.0.2', '4.1.0', '4.1.1', '4.2.0', '4.2.1', '4.2.2', '4.3.0', '4.3.1',
    '4.4.0', '4.4.1', '4.4.2', '4.4.3', '4.4.4', '4.4.5', '4.4.6', '4.4.7')]
CARRIED = [v for v in SUPPORTED if v >= (4, 4, 4)]

#: What Celery 4.4.4 does: reuse at a task boundary, a forced close in the child after fork.
FIXED = ('close_if_unusable_or_obsolete', 'close')


def _read(path):
    with io.open(path, encoding='utf-8', newline='') as fh:
        return fh.read()


def _reverse(patch):
    """The diff undoing ``patch`` (swap the sides of every hunk)."""
    out = []
    for line in patch.text.split('\n'):
        if line.startswith('@@ '):
            old, new = line.split(' ')[1:3]
            line = '@@ -{0} +{1} @@'.format(new[1:], old[1:])
        elif line[:1] in ('-', '+') and not line.startswith(('--- ', '+++ ')):
            line = {'-': '+', '+': '-'}[line[0]] + line[1:]
        out.append(line)
    return up.Patch('\n'.join(out), patch.path)


def _celery_4_only():
    """The backports are for Celery 4's ``celery/fixups/django.py``; tests that apply them to
    the installed file have nothing to apply them to on Celery 5 (its file differs
    throughout)."""
    if versions.celery_version() >= (5,):
        pytest.skip('the upstream backports are for Celery 4 files; Celery {0} is '
                    'installed'.format(INSTALLED_TEXT))


def _base():
    """A diff and a source it must apply to, whatever Celery 4 release is installed.

    Before 4.4.4 that is the installed diff and file. From 4.4.4 on, the installed file is
    what the 4.4.0 diff produces, so reversing that diff must apply to it and give a base.
    """
    _celery_4_only()
    installed = up.installed_source()[1]
    patch = up.patch_for()
    if patch is not None:
        return patch, installed
    patch = up.patch_for((4, 4, 0))
    return patch, _reverse(patch).apply(installed)


class _Conn(object):
    def __init__(self):
        self.connection = None  # nothing inherited: the fd-closing loop is not under test
        self.calls = []

    def close(self):
        self.calls.append('close')

    def close_if_unusable_or_obsolete(self):
        self.calls.append('close_if_unusable_or_obsolete')


class _Connections(object):
    def __init__(self, conns):
        self._conns = conns

    def all(self):
        return list(self._conns)


class _App(object):
    conf = {}


def _behaviour(source, monkeypatch):
    """Run a ``celery/fixups/django.py`` text: what its worker fix-up calls on each connection
    at a task boundary and in a prefork child after fork."""
    module = types.ModuleType('celery_fixups_django_under_test')
    exec(compile(source.encode('utf-8'), 'celery/fixups/django.py', 'exec'), module.__dict__)
    fixup = module.DjangoWorkerFixup(_App())
    fixup._cache = types.ModuleType('fake_django_cache')  # close_cache() ignores what it lacks
    monkeypatch.delenv('FORKED_BY_MULTIPROCESSING', raising=False)
    seen = []
    for action in (fixup.close_database, fixup.on_worker_process_init):
        conns = [_Conn(), _Conn()]
        fixup._db = types.ModuleType('fake_django_db')
        fixup._db.connections = _Connections(conns)
        action()
        calls = set(tuple(conn.calls) for conn in conns)
        assert len(calls) == 1 and len(next(iter(calls))) == 1, calls
        seen.append(next(iter(calls))[0])
    return tuple(seen)


def _load_script():
    name = 'make_patches_under_test'
    if sys.version_info[0] == 2:
        import imp
        return imp.load_source(name, SCRIPT)
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(args, timeout=60):
    """Run the script with this interpreter; (status, output). Polls: no timeout= on 2.7."""
    out = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, SCRIPT] + args, stdout=out,
                            stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.time() + timeout
    while proc.poll() is None:
        if time.time() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError('make_patches.py did not finish in {0}s'.format(timeout))
        time.sleep(0.05)
    out.seek(0)
    return proc.returncode, out.read().decode('utf-8')


# -- celery-django-fixup diff: the patched class against Celery's ------------------------------

def _class_methods(cls):
    """Names of the functions, static and class methods and properties ``cls`` defines."""
    return set(name for name, value in vars(cls).items()
               if isinstance(value, (types.FunctionType, property, staticmethod, classmethod)))


def test_every_method_of_the_patched_class_is_shown():
    methods = showdiff.changes()
    defined = _class_methods(worker.DjangoWorkerFixup)
    assert defined, 'the patched class defines no method?'
    assert sorted(method.name for method in methods) == sorted(defined)
    upstream = worker.upstream_class()
    for method in methods:
        has_it = any(method.name in vars(klass) for klass in upstream.__mro__
                     if klass is not object)
        assert method.status == ('changed' if has_it else 'added'), method
        assert (method.upstream_source is None) == (method.status == 'added'), method
        assert method.patched_source.strip() and method.diff, method


def test_every_method_has_a_reason_and_every_reason_a_method():
    """``OVERRIDES`` (name -> reason) matches the patched class: a reason for every method that
    replaces Celery's and every public function added; any other member added (a private
    helper, a property) is used by another member; no reason for a method the class inherits
    or that does not exist."""
    patched, upstream = worker.DjangoWorkerFixup, worker.upstream_class()
    reasons = showdiff.reasons_for(patched)
    methods = showdiff.changes()
    assert showdiff.problems(methods, reasons) == []
    members = _class_methods(patched)
    assert set(reasons) <= members
    upstream_names = set(name for klass in upstream.__mro__ if klass is not object
                         for name in vars(klass))
    needed = set(name for name in members if name in upstream_names or (
        isinstance(vars(patched)[name], types.FunctionType) and not name.startswith('_')))
    assert needed <= set(reasons)
    for name, reason in reasons.items():
        assert isinstance(reason, str) and reason.strip() and '\n' not in reason.strip(), name
    for method in methods:
        if method.name not in reasons:
            assert method.used_by, method
            for user in method.used_by:
                assert 'self.{0}'.format(method.name) in next(
                    m.patched_source for m in methods if m.name == user), (method, user)


class _Mixin(object):
    def mixed_in(self):
        return up.patch_for()


def _sample_class():
    """A patched class with a changed method, an added one, a property, a static method and
    a mixin, checked against the real Celery class."""
    upstream = worker.upstream_class()

    class Sample(_Mixin, upstream):
        def install(self):
            return super(Sample, self).install()

        def added(self):
            return up.patches(), showdiff.PACKAGE, self.a_property

        @property
        def a_property(self):
            return up.Patch

        @staticmethod
        def a_static():
            return None

    return Sample, upstream


def test_changed_added_and_mixed_in_members_are_found():
    sample, upstream = _sample_class()
    methods = dict((m.name, m) for m in showdiff.changes(sample, upstream, reasons={}))
    assert sorted(methods) == ['a_property', 'a_static', 'added', 'install', 'mixed_in']
    assert methods['install'].status == 'changed'
    assert methods['install'].upstream == 'celery.fixups.django.{0}.install'.format(
        upstream.__name__)
    assert methods['install'].upstream_source.startswith('def install(self)')
    assert '-    signals.worker_process_init.connect(self.on_worker_process_init)\n' in \
        methods['install'].diff
    assert '+    return super(Sample, self).install()\n' in methods['install'].diff
    for name in ('added', 'a_property', 'a_static', 'mixed_in'):
        assert methods[name].status == 'added' and methods[name].upstream_source is None
        assert methods[name].diff.startswith('--- /dev/null\n+++ ')
    assert methods['a_property'].patched_source.startswith('@property\n')
    assert methods['a_static'].patched_source.startswith('@staticmethod\n')
    # Helpers: this package's functions and classes, by a global name or through a module,
    # never the class itself (super(Sample, ...)) nor anything outside the package.
    assert methods['added'].helpers == ['celery_django_fixup.upstream_patches.patches']
    assert methods['a_property'].helpers == ['celery_django_fixup.upstream_patches.Patch']
    assert methods['mixed_in'].helpers == ['celery_django_fixup.upstream_patches.patch_for']
    assert methods['install'].helpers == [] and methods['a_static'].helpers == []
    helpers = showdiff.helper_sources(['celery_django_fixup.upstream_patches.patch_for'])
    # ... and the helpers of helpers, each once.
    calls = helpers['celery_django_fixup.upstream_patches.patch_for']['helpers']
    assert 'celery_django_fixup.upstream_patches.patches' in calls
    assert 'celery_django_fixup.upstream_patches.Patch' in helpers
    assert helpers['celery_django_fixup.upstream_patches.patches']['source'].startswith(
        'def patches(directory=None):\n')


def test_mismatched_reasons_are_reported():
    sample, upstream = _sample_class()
    reasons = {
        'install': 'a reason',
        'added': '  ',                                  # blank: no reason
        'on_task_prerun': 'inherited, not overridden',  # Celery's, and Sample does not override it
        'gone': 'a method neither class has',
    }
    methods = showdiff.changes(sample, upstream, reasons)
    assert sorted(showdiff.problems(methods, reasons, upstream)) == [
        'OVERRIDES gives a reason for gone, which neither class has',
        "OVERRIDES gives a reason for on_task_prerun, but the patched class inherits it from "
        "Celery's (no override)",
        'a_static is added, and neither OVERRIDES gives a reason nor does another member of '
        'the class use it',
        'added is added but OVERRIDES gives no reason',
        'mixed_in is added but OVERRIDES gives no reason',
    ]
    # a_property needs none: it is not public API, and ``added`` uses it.
    assert [m.used_by for m in methods if m.name == 'a_property'] == [['added']]
    reasons.update(added='one', a_static='three', mixed_in='four')
    del reasons['gone'], reasons['on_task_prerun']
    assert showdiff.problems(methods, reasons, upstream) == []


def test_reasons_are_read_from_the_class_then_its_module():
    patched = worker.DjangoWorkerFixup
    expected = getattr(patched, 'OVERRIDES', None)
    if not isinstance(expected, dict):
        expected = worker.OVERRIDES
    assert showdiff.reasons_for(patched) == expected
    sample, _ = _sample_class()
    assert showdiff.reasons_for(sample) == {}   # neither the class nor this module has any
    sample.OVERRIDES = {'install': 'on the class'}
    assert showdiff.reasons_for(sample) == {'install': 'on the class'}


# -- the installed Celery -------------------------------------------------------------------

def test_installed_celery_is_patched_to_the_4_4_4_behaviour(monkeypatch):
    _celery_4_only()
    installed = up.installed_source()[1]
    patch = up.patch_for()
    stock = _behaviour(installed, monkeypatch)
    line = versions.line_for()
    # The stock file does what versions.py says this line does.
    assert stock == (line.at_task, line.after_fork)
    if patch is None:
        assert versions.celery_version() in CARRIED
        assert up.carries_upstream_changes(installed)
        assert stock == FIXED
        assert up.patched_text() == installed
        assert not up.applies()
        return
    assert versions.celery_version() in patch.bases
    assert not up.carries_upstream_changes(installed)
    assert stock != FIXED               # the patch is needed here ...
    assert up.applies()
    # ... and applies exactly where it says: one diff per distinct base, no offsets.
    assert [offset for _, offset in patch.locate(installed)] == [0] * len(patch.hunks)
    patched = up.patched_text()
    assert 'conn.close_if_unusable_or_obsolete()' in patched
    assert 'self._close_database(force=True)' in patched
    assert up.carries_upstream_changes(patched)
    assert _behaviour(patched, monkeypatch) == FIXED
    # Outside the two methods nothing changed.
    assert patched.count('\n') == installed.count('\n') + 3


def test_reversed_diff_restores_the_base():
    patch, base = _base()
    assert not up.carries_upstream_changes(base)
    assert _reverse(patch).apply(patch.apply(base)) == base


def test_a_patched_file_does_not_take_the_patch_again():
    patch, base = _base()
    patched = patch.apply(base)
    assert not patch.applies_to(patched)
    with pytest.raises(up.PatchError):
        patch.apply(patched)


def test_offsets_are_allowed_like_patch_does():
    patch, base = _base()
    lines = base.split('\n')
    # Five lines more above the first hunk, and two removed between the hunks.
    first, second = [start for start, _ in patch.locate(base)]
    assert second - first > 10
    lines = lines[:first] + ['# moved'] * 5 + lines[first:second - 4] + lines[second - 2:]
    moved = '\n'.join(lines)
    assert [offset for _, offset in patch.locate(moved)] == [5, 3]
    expected = patch.apply(base).split('\n')
    expected = (expected[:first] + ['# moved'] * 5 + expected[first:second - 4] +
                expected[second - 2:])
    assert patch.apply(moved) == '\n'.join(expected)


def test_crlf_files_stay_crlf():
    patch, base = _base()
    crlf = base.replace('\n', '\r\n')
    assert patch.apply(crlf) == patch.apply(base).replace('\n', '\r\n')


# -- corrupted diffs are reported as not applying --------------------------------------------

CORRUPTIONS = {
    'context line changed': ('                 self._maybe_close_db_fd(c.connection)\n',
                             '                 self._maybe_close_db_fd(c)\n'),
    'removed line changed': ('\n-        self._close_database()\n',
                             '\n-        self._close_database(True)\n'),
    'indentation changed': ('\n             self._close_database()\n',
                            '\n         self._close_database()\n'),
    'hunk header count wrong': (',7 +', ',8 +'),
    'hunk truncated': ('             except self.DatabaseError as exc:\n', ''),
    'line without a tag': ('\n-    def _close_database(self):\n',
                           '\n!    def _close_database(self):\n'),
    'other file': ('--- a/celery/fixups/django.py', '--- a/celery/fixups/django2.py'),
    'no Applies-To header': ('Applies-To:', 'Applies-to-nothing:'),
}


@pytest.mark.parametrize('what', sorted(CORRUPTIONS))
def test_a_corrupted_diff_does_not_apply(what, tmpdir):
    patch, base = _base()
    old, new = CORRUPTIONS[what]
    assert old in patch.text, 'the corruption must change the diff'
    corrupted = patch.text.replace(old, new, 1)
    intact, broken = tmpdir.mkdir('intact'), tmpdir.mkdir('broken')
    # The same check with the intact diff says yes: the corruption is what makes it fail.
    shutil.copy(patch.path, str(intact.join(patch.name)))
    broken.join(patch.name).write_binary(corrupted.encode('utf-8'))
    assert up.applies(patch.bases[0], base, directory=str(intact))
    assert not up.applies(patch.bases[0], base, directory=str(broken))
    with pytest.raises(up.PatchError):
        up.Patch(corrupted, patch.path).apply(base)


def test_a_modified_source_does_not_take_the_patch():
    patch, base = _base()
    edited = base.replace('        for conn in self._db.connections.all():\n',
                          '        for conn in self._db.connections.all():  # edited\n')
    assert edited != base
    assert not patch.applies_to(edited)


# -- lookup --------------------------------------------------------------------------------

def test_every_supported_release_has_one_diff_or_needs_none():
    shipped = up.patches()
    for version in SUPPORTED:
        owners = [p for p in shipped if version in p.bases]
        if version in CARRIED:
            assert owners == [] and up.patch_for(version) is None
        else:
            assert len(owners) == 1 and up.patch_for(version).path == owners[0].path
    named = sorted(v for p in shipped for v in p.bases)
    assert named == [v for v in SUPPORTED if v not in CARRIED]
    assert up.patch_for('4.3.1').path == up.patch_for((4, 3, 1)).path


@pytest.mark.parametrize('version', [(3, 1, 26), (4, 4, 8), (5, 5, 4), (5, 8, 0)])
def test_unsupported_releases_have_no_diff(version):
    with pytest.raises(LookupError):
        up.patch_for(version)


def test_headers_name_bases_upstream_and_licence():
    for patch in up.patches():
        head = '\n'.join(patch.header)
        # A record of upstream's fix, and it says so before anything else.
        assert patch.header[0] == (
            "Upstream backport for celery/fixups/django.py: Celery 4.4.4's own fix-up, which "
            "is NOT what celery-django-fixup does")
        assert '"celery-django-fixup diff" shows the package\'s own change' in head
        assert patch.name.startswith('celery-{0}'.format('.'.join(map(str, patch.bases[0]))))
        assert any('celery/celery#4292' in u for u in patch.upstream)
        assert any('celery/celery#6134' in u for u in patch.upstream)
        assert 'BSD-3-Clause' in head and 'Ask Solem & contributors' in head
        assert 'LICENSE' in head and 'patch -p1' in head
        body = patch.text[len(head):]
        assert '\n--- a/celery/fixups/django.py\n+++ b/celery/fixups/django.py\n' in body
    with io.open(os.path.join(REPO, 'LICENSE'), encoding='utf-8') as fh:
        assert 'Ask Solem & contributors' in fh.read()


def test_shipped_diffs_are_the_repository_ones():
    shipped = up.patches()
    assert os.path.dirname(shipped[0].path) in up.patch_dirs()
    assert sorted(p.name for p in shipped) == sorted(
        n for n in os.listdir(REPO_PATCHES) if n.endswith('.diff'))
    for patch in shipped:
        assert patch.text == _read(os.path.join(REPO_PATCHES, patch.name))


# -- regeneration -------------------------------------------------------------------------

def test_repository_diffs_are_what_the_script_generates(tmpdir):
    _celery_4_only()
    status, output = _run(['--installed', '--out', str(tmpdir)])
    assert status == 0, output
    written = sorted(os.listdir(str(tmpdir)))
    patch = up.patch_for()
    if patch is None:
        assert written == [] and 'already carries both changes' in output
    else:
        assert written == [patch.name], output
        assert _read(str(tmpdir.join(patch.name))) == _read(
            os.path.join(REPO_PATCHES, patch.name))
    status, output = _run(['--installed', '--check'])
    assert status == 0, output


def test_script_transformation_matches_the_diff():
    script = _load_script()
    patch, base = _base()
    release = '.'.join(map(str, patch.bases[0]))
    assert script.transform(base, release) == patch.apply(base)
    assert script.transform(patch.apply(base), release) is None
    assert [v for v in script.CARRIED] == ['.'.join(map(str, v)) for v in CARRIED]


@pytest.mark.parametrize('old,new', [
    ('        # use the _ version to avoid DB_REUSE preventing the conn.close() call\n', ''),
    ('    def _close_database(self):\n', '    def _close_database(self, *args):\n'),
    ('            except self.interface_errors:\n', '            except Exception:\n'),
])
def test_script_fails_loudly_on_unexpected_upstream_text(old, new, tmpdir):
    script = _load_script()
    _, base = _base()
    assert old in base
    with pytest.raises(script.TransformError):
        script.transform(base.replace(old, new, 1), '4.9.9')
