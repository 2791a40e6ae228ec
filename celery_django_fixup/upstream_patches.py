"""Upstream backports: Celery 4.4.4's own Django fix-up as unified diffs of celery/fixups/django.py.

Celery 4.4.4 changed its Django fix-up with two changes: celery#4292 (a task boundary calls
``close_if_unusable_or_obsolete()`` instead of ``close()``, so ``CONN_MAX_AGE`` is honoured) and
celery#6134 (a prefork child force-closes the connections it inherited). Older releases get
them from one diff per distinct base, shipped inside the package as
``patches/upstream-backports/*.diff`` (the same folder in a source checkout). Each diff names
the releases it is for in an ``Applies-To:`` header line, so this module needs no table of its
own.

These diffs are a record of upstream's fix, NOT what celery-django-fixup does: Celery 4.4.4
itself still mishandles connections in ways this package fixes. The package's own change is
its patched class, shown method by method by :mod:`celery_django_fixup.showdiff`
(``celery-django-fixup diff``).

The diffs are applied and checked here in pure Python, the way ``patch -p1`` without fuzz
does it: each hunk's context and removed lines must match the file exactly, at the stated
line or anywhere after the previous hunk (nearest position first). A deployment therefore
needs no ``patch`` binary to tell whether its Celery can be patched or to show the result.
"""
from __future__ import absolute_import

import io
import os
import re

__all__ = (
    'PatchError', 'Patch', 'patch_dirs', 'patches', 'patch_for', 'applies', 'patched_text',
    'installed_source', 'carries_upstream_changes', 'TARGET',
)

#: The file every diff changes, relative to the directory that holds the ``celery`` package.
TARGET = 'celery/fixups/django.py'

#: First Celery release that already carries both changes.
CARRIED_SINCE = (4, 4, 4)

_HUNK_HEADER = re.compile(r'^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@')
_VERSION = re.compile(r'^\d+\.\d+\.\d+$')


class PatchError(ValueError):
    """A diff is malformed, or does not apply to the text it was applied to."""


class Hunk(object):
    """One ``@@`` block: ``lines`` is a list of ``(tag, text, eol)`` with tag in ``' -+'``."""

    def __init__(self, old_start, old_count, new_start, new_count, lines):
        self.old_start = old_start
        self.old_count = old_count
        self.new_start = new_start
        self.new_count = new_count
        self.lines = lines

    @property
    def old(self):
        """Lines the file must hold for the hunk to apply (context and removed)."""
        return [(text, eol) for tag, text, eol in self.lines if tag != '+']

    @property
    def new(self):
        """Lines that replace :attr:`old` (context and added)."""
        return [(text, eol) for tag, text, eol in self.lines if tag != '-']


class Patch(object):
    """A parsed diff: ``path``, ``name``, ``text``, ``bases`` (version tuples) and ``hunks``."""

    def __init__(self, text, path=None):
        self.text = text
        self.path = path
        self.name = os.path.basename(path) if path else None
        self.header, self.hunks = _parse(text)
        self.bases = _bases(self.header)
        self.upstream = tuple(line.split(':', 1)[1].strip() for line in self.header
                              if line.startswith('Upstream:'))

    def __repr__(self):
        return '<Patch {0} for celery {1}>'.format(
            self.name, ', '.join(_dotted(v) for v in self.bases))

    def locate(self, source):
        """Where each hunk matches ``source``: a list of ``(start index, offset)``.

        Raises :class:`PatchError` naming the first hunk that does not match.
        """
        lines = _lines(source)
        found = []
        floor = 0       # hunks apply in order and must not overlap
        offset = 0      # like patch(1), a hunk is first tried where the previous one moved to
        for number, hunk in enumerate(self.hunks, 1):
            old = [text for text, _ in hunk.old]
            # A hunk with no old lines inserts after line old_start (0 = at the top).
            expected = hunk.old_start - 1 + offset if old else hunk.old_start + offset
            start = _search(lines, old, expected, floor)
            if start is None:
                raise PatchError(
                    'hunk #{0} of {1} (at line {2}) does not match {3}: the file is not one of '
                    'the releases the patch is for, or it was modified'.format(
                        number, self.name or 'the patch', hunk.old_start, TARGET))
            offset = start - (hunk.old_start - 1 if old else hunk.old_start)
            found.append((start, offset))
            floor = start + len(old)
        return found

    def applies_to(self, source):
        """True if every hunk matches ``source``."""
        try:
            self.locate(source)
        except PatchError:
            return False
        return True

    def apply(self, source):
        """``source`` with the patch applied; raises :class:`PatchError` if it does not apply."""
        lines = _lines(source)
        eol = _eol(lines)
        out = []
        done = 0
        for hunk, (start, _) in zip(self.hunks, self.locate(source)):
            out.extend(lines[done:start])
            for text, has_eol in hunk.new:
                out.append(text + eol if has_eol else text)
            done = start + len(hunk.old)
        out.extend(lines[done:])
        return ''.join(out)


def _dotted(version):
    return '.'.join(str(part) for part in version)


def _eol(lines):
    """The line ending the file uses, so a patched CRLF file stays CRLF."""
    for line in lines:
        if line.endswith('\r\n'):
            return '\r\n'
        if line.endswith('\n'):
            return '\n'
    return '\n'


def _lines(text):
    """Lines with their endings, split on newlines only (``str.splitlines`` also splits on
    form feeds and other separators that ``patch`` treats as ordinary characters)."""
    lines = text.split('\n')
    last = lines.pop()
    return [line + '\n' for line in lines] + ([last] if last else [])


def _strip_eol(line):
    if line.endswith('\r\n'):
        return line[:-2]
    if line.endswith('\n') or line.endswith('\r'):
        return line[:-1]
    return line


def _search(lines, old, expected, floor):
    """First index >= floor where ``old`` matches, trying ``expected`` then moving outwards."""
    last = len(lines) - len(old)
    if last < floor:
        return None
    expected = min(max(expected, floor), last)
    for distance in range(0, max(expected - floor, last - expected) + 1):
        for start in (expected - distance, expected + distance):
            if floor <= start <= last and all(
                    _strip_eol(lines[start + i]) == text for i, text in enumerate(old)):
                return start
            if distance == 0:
                break
    return None


def _parse(text):
    """Split a one-file unified diff into its header lines and :class:`Hunk` objects."""
    lines = [_strip_eol(line) for line in _lines(text)]
    header = []
    index = 0
    while index < len(lines) and not lines[index].startswith('--- '):
        header.append(lines[index])
        index += 1
    if index + 1 >= len(lines) or not lines[index + 1].startswith('+++ '):
        raise PatchError('not a unified diff: no "--- " and "+++ " file lines')
    for line, prefix in ((lines[index], '--- a/'), (lines[index + 1], '+++ b/')):
        if line.split('\t')[0] != prefix + TARGET:
            raise PatchError('the diff must change {0}{1}, not {2!r}'.format(
                prefix, TARGET, line))
    index += 2
    hunks = []
    while index < len(lines):
        match = _HUNK_HEADER.match(lines[index])
        if not match:
            if lines[index].strip():
                raise PatchError('unexpected line {0} in the diff: {1!r}'.format(
                    index + 1, lines[index]))
            index += 1
            continue
        old_start, old_count, new_start, new_count = (
            int(value) if value is not None else 1 for value in match.groups())
        index += 1
        body = []
        old_seen = new_seen = 0
        while old_seen < old_count or new_seen < new_count:
            if index >= len(lines):
                raise PatchError('hunk at line {0} is truncated'.format(old_start))
            line = lines[index]
            tag, content = (line[0], line[1:]) if line else (' ', '')
            if tag not in ' -+':
                raise PatchError('hunk at line {0} holds fewer lines than its header '
                                 'says'.format(old_start))
            if tag != '+':
                old_seen += 1
            if tag != '-':
                new_seen += 1
            body.append([tag, content, True])
            index += 1
            if index < len(lines) and lines[index].startswith('\\'):
                body[-1][2] = False     # "\ No newline at end of file"
                index += 1
        if old_seen != old_count or new_seen != new_count:
            raise PatchError('hunk at line {0} holds more lines than its header says'.format(
                old_start))
        if hunks and old_start <= hunks[-1].old_start:
            raise PatchError('hunks are out of order at line {0}'.format(old_start))
        hunks.append(Hunk(old_start, old_count, new_start, new_count,
                          [tuple(item) for item in body]))
    if not hunks:
        raise PatchError('the diff has no hunks')
    return header, hunks


def _bases(header):
    """The releases named by the ``Applies-To: celery X.Y.Z, ...`` header line."""
    for line in header:
        if line.startswith('Applies-To:'):
            names = line.split(':', 1)[1].replace('celery', ' ').replace(',', ' ').split()
            if names and all(_VERSION.match(name) for name in names):
                return tuple(tuple(int(part) for part in name.split('.')) for name in names)
    raise PatchError('the diff has no "Applies-To: celery X.Y.Z, ..." header line')


def _read(path):
    with io.open(path, encoding='utf-8', newline='') as fh:
        return fh.read()


#: Where the diffs are, under the installed package or the root of a source checkout.
SUBDIR = os.path.join('patches', 'upstream-backports')


def patch_dirs():
    """Directories that may hold the diffs: inside the installed package, then a checkout's."""
    here = os.path.dirname(os.path.abspath(__file__))
    return [os.path.join(here, SUBDIR), os.path.join(os.path.dirname(here), SUBDIR)]


def patches(directory=None):
    """Every shipped :class:`Patch`, sorted by name.

    Reads ``directory`` if given, otherwise the first of :func:`patch_dirs` holding a diff.
    """
    for candidate in ([directory] if directory else patch_dirs()):
        if os.path.isdir(candidate):
            names = sorted(name for name in os.listdir(candidate) if name.endswith('.diff'))
            if names:
                return [Patch(_read(os.path.join(candidate, name)),
                              os.path.join(candidate, name)) for name in names]
    if directory:
        raise PatchError('no .diff files in {0}'.format(directory))
    raise PatchError('celery-django-fixup was installed without its '
                     'patches/upstream-backports/*.diff files; reinstall it from a wheel or an '
                     'sdist')


def _version(version):
    if version is None:
        from .versions import celery_version
        return celery_version()
    if not isinstance(version, (tuple, list)):
        version = str(version).split('.')
    return tuple(int(part) for part in version[:3])


def patch_for(version=None, directory=None):
    """The :class:`Patch` (``.path``, ``.text``) for this Celery release, the installed one by
    default, or None when the release carries both changes (4.4.4 to 5.5.3) or has reverted to
    closing every connection (5.6 on): no backport applies.

    Raises :class:`LookupError` for a release outside the supported range, which this project
    ships no patch for.
    """
    from .versions import SUPPORTED_CELERY, line_for
    version = _version(version)
    for patch in patches(directory):
        if version in patch.bases:
            return patch
    if CARRIED_SINCE <= version and line_for(version) is not None:
        return None
    raise LookupError(
        'no patch for Celery {0}: the shipped patches are for Celery {1} to {2}, and {3} to '
        '{2} already carry the changes'.format(
            _dotted(version), _dotted(SUPPORTED_CELERY[0]), _dotted(SUPPORTED_CELERY[1]),
            _dotted(CARRIED_SINCE)))


def installed_source():
    """``(path, text)`` of the installed Celery's ``celery/fixups/django.py``."""
    import celery
    path = os.path.join(os.path.dirname(os.path.abspath(celery.__file__)), 'fixups', 'django.py')
    return path, _read(path)


def applies(version=None, source=None, directory=None):
    """True if the patch for ``version`` (default: the installed Celery) applies cleanly to
    ``source`` (default: the installed ``celery/fixups/django.py``).

    False when it does not, when the diff is malformed, and when the release needs no patch
    (see :func:`patch_for`).
    """
    try:
        patch = patch_for(version, directory)
    except PatchError:
        return False
    if patch is None:
        return False
    if source is None:
        source = installed_source()[1]
    return patch.applies_to(source)


def patched_text(version=None, source=None, directory=None):
    """``source`` (default: the installed ``celery/fixups/django.py``) with the patch for
    ``version`` applied; unchanged when the release already carries both changes.

    Raises :class:`PatchError` if the patch does not apply.
    """
    patch = patch_for(version, directory)
    if source is None:
        source = installed_source()[1]
    return source if patch is None else patch.apply(source)


def carries_upstream_changes(source):
    """True if a ``celery/fixups/django.py`` text already has both changes in the 4.4.4 form:
    a forced ``_close_database(force=True)`` after fork and ``close_if_unusable_or_obsolete()``
    otherwise.
    """
    compact = re.sub(r'\s+', ' ', source)
    return all(snippet in compact for snippet in (
        'def on_worker_process_init(self, **kwargs):',
        'self._close_database(force=True) self.close_cache()',
        'def _close_database(self, force=False):',
        'if force: conn.close() else: conn.close_if_unusable_or_obsolete()',
    ))
