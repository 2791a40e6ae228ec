"""What the patched ``DjangoWorkerFixup`` changes in Celery's, method by method.

Everything is read from the code that runs: the patched class's own members (``vars()``, and
those of any class of this package between it and Celery's in the MRO), the source of Celery's
class from the installed Celery (``inspect.getsource``), and the reasons from the ``OVERRIDES``
dict (``name -> one-line reason``) kept on the patched class or in its module. Each method is
``changed`` (Celery's class has it too) or ``added``, and comes with a unified diff of
Celery's source against the patched one and the helpers of this package it refers to
(module-level functions and classes, found in its source and resolved in its module), whose
own source is collected once, with the helpers they refer to in turn.

:func:`report` builds the whole answer as plain data (what ``celery-django-fixup diff --json``
prints); :func:`format_report` renders it as text.
"""
from __future__ import absolute_import

import ast
import difflib
import inspect
import os
import sys
import textwrap
import types

__all__ = ('DiffError', 'Method', 'is_method', 'references', 'changes', 'reasons_for',
           'helper_sources', 'problems', 'report', 'format_report')

#: Helpers are the functions and classes of this package (never Celery's or Django's).
PACKAGE = __name__.split('.')[0]

CHANGED = 'changed'
ADDED = 'added'


class DiffError(Exception):
    """A source cannot be read (e.g. an install without ``.py`` files)."""


def _dotted(obj):
    return '{0}.{1}'.format(obj.__module__, getattr(obj, '__qualname__', obj.__name__))


def _functions(value):
    """The functions behind a class member, or None if it is not a method: plain functions,
    static and class methods, and the accessors of a property."""
    if isinstance(value, types.FunctionType):
        return [value]
    if isinstance(value, (staticmethod, classmethod)):
        return [value.__func__]
    if isinstance(value, property):
        return [fn for fn in (value.fget, value.fset, value.fdel) if fn is not None]
    return None


def _kind(value):
    for kind in (property, staticmethod, classmethod):
        if isinstance(value, kind):
            return kind.__name__
    return 'function'


def is_method(value):
    """True for what :func:`changes` lists: a function, static or class method, or property."""
    functions = _functions(value)
    return bool(functions) and all(isinstance(fn, types.FunctionType) for fn in functions)


def _source(functions, what):
    """Dedented source of ``functions`` (decorators included), joined by a blank line."""
    parts = []
    for fn in functions:
        try:
            parts.append(textwrap.dedent(inspect.getsource(fn)))
        except (IOError, OSError, TypeError) as exc:
            raise DiffError('cannot read the source of {0}: {1}'.format(what, exc))
    return '\n'.join(parts)


def _short(path, module_name):
    """``path`` relative to the folder holding the top-level package of ``module_name``
    (``celery/fixups/django.py``), or as it is if it lies elsewhere."""
    path = os.path.abspath(path)
    top = sys.modules.get(module_name.split('.')[0])
    if top is None or not getattr(top, '__file__', None):
        return path
    root = os.path.dirname(os.path.dirname(os.path.abspath(top.__file__)))
    relative = os.path.relpath(path, root)
    return path if relative.startswith(os.pardir) else relative.replace(os.sep, '/')


def _location(functions):
    """``(file, first line)`` of the first of ``functions``, the file as :func:`_short`."""
    fn = functions[0]
    try:
        path = inspect.getsourcefile(fn) or fn.__code__.co_filename
    except TypeError:
        path = fn.__code__.co_filename
    return _short(path, fn.__module__), fn.__code__.co_firstlineno


def _own_classes(patched, upstream):
    """The classes whose members replace Celery's: ``patched`` and every class before
    ``upstream`` in its MRO (a mixin of this package, say)."""
    mro = inspect.getmro(patched)
    if upstream not in mro:
        raise DiffError('{0} is not a subclass of {1}'.format(_dotted(patched), _dotted(upstream)))
    return mro[:mro.index(upstream)]


def _upstream_member(upstream, name):
    """``(defining class, raw value)`` of ``name`` in Celery's class, or ``(None, None)``.
    ``object``'s slots (``__init__`` of a class that defines none) are not Celery's code."""
    for klass in inspect.getmro(upstream):
        if klass is object:
            break
        if name in vars(klass):
            return klass, vars(klass)[name]
    return None, None


# -- helpers ---------------------------------------------------------------------------------

def _is_ours(obj):
    module = getattr(obj, '__module__', None) or ''
    return module == PACKAGE or module.startswith(PACKAGE + '.')


def _helper_object(obj):
    """True for a module-level function or class of this package."""
    if not isinstance(obj, (types.FunctionType, type)) or not _is_ours(obj):
        return False
    module = sys.modules.get(obj.__module__)
    return module is not None and getattr(module, obj.__name__, None) is obj


def _chain(node):
    """``['a', 'b', 'c']`` for the expression ``a.b.c``; None if it is not a plain chain."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    names.append(node.id)
    return names[::-1]


def references(source, namespace, exclude=()):
    """Dotted names of this package's functions and classes that ``source`` refers to, by a
    global name (``discard``) or through a module (``policy.task_succeeded``), resolved in
    ``namespace`` (the module globals the code runs with); in order of first appearance."""
    found = []
    nodes = [node for node in ast.walk(ast.parse(source))
             if isinstance(node, (ast.Name, ast.Attribute))]
    nodes.sort(key=lambda node: (node.lineno, node.col_offset))
    for node in nodes:
        chain = _chain(node)
        if not chain or chain[0] not in namespace:
            continue
        obj = namespace[chain[0]]
        for attr in chain[1:]:
            if not isinstance(obj, types.ModuleType):
                break
            obj = getattr(obj, attr, None)
        if _helper_object(obj) and obj not in exclude:
            name = _dotted(obj)
            if name not in found:
                found.append(name)
    return found


def _resolve(dotted):
    module, _, name = dotted.rpartition('.')
    return getattr(sys.modules[module], name)


class Method(object):
    """One member of the patched class that is not Celery's: see :meth:`as_dict`."""

    def __init__(self, name, status, reason, upstream, upstream_source, upstream_location,
                 patched, patched_source, patched_location, helpers, kind='function',
                 used_by=()):
        self.name = name
        self.status = status
        self.kind = kind
        self.used_by = list(used_by)
        self.reason = reason
        self.upstream = upstream
        self.upstream_source = upstream_source
        self.upstream_location = upstream_location
        self.patched = patched
        self.patched_source = patched_source
        self.patched_location = patched_location
        self.helpers = helpers

    def __repr__(self):
        return '<Method {0} {1}>'.format(self.name, self.status)

    @property
    def needs_reason(self):
        """Whether ``OVERRIDES`` must give a reason: for everything that replaces Celery's code
        and for every public function added; a private helper or a property added is shown
        with the members that use it instead."""
        return self.status == CHANGED or (self.kind == 'function' and
                                          not self.name.startswith('_'))

    @property
    def diff(self):
        """Unified diff of Celery's source (nothing for an added method) against the patched
        one, with both functions whole as context."""
        old = self.upstream_source.splitlines(True) if self.upstream_source else []
        new = self.patched_source.splitlines(True)
        label = '{0} ({1}:{2})'
        fromfile = label.format(self.upstream, *self.upstream_location) if self.upstream \
            else '/dev/null'
        tofile = label.format(self.patched, *self.patched_location)
        lines = difflib.unified_diff(old, new, fromfile, tofile, n=max(len(old), len(new)))
        return ''.join(line if line.endswith('\n') else line + '\n' for line in lines)

    def as_dict(self):
        return {
            'name': self.name,
            'status': self.status,
            'kind': self.kind,
            'reason': self.reason,
            'used_by': list(self.used_by),
            'upstream': self.upstream,
            'upstream_source': self.upstream_source,
            'upstream_location': list(self.upstream_location) if self.upstream else None,
            'patched': self.patched,
            'patched_source': self.patched_source,
            'patched_location': list(self.patched_location),
            'diff': self.diff,
            'helpers': list(self.helpers),
        }


def reasons_for(patched):
    """The ``OVERRIDES`` dict (name -> reason) on the patched class, else in its module."""
    for klass in inspect.getmro(patched):
        if isinstance(vars(klass).get('OVERRIDES'), dict):
            return dict(vars(klass)['OVERRIDES'])
    module = sys.modules.get(patched.__module__)
    return dict(getattr(module, 'OVERRIDES', None) or {})


def changes(patched=None, upstream=None, reasons=None):
    """A :class:`Method` for every method, static or class method and property that
    ``patched`` (default: this package's ``DjangoWorkerFixup``) defines instead of, or on top
    of, ``upstream`` (default: Celery's, from the installed Celery), in source order."""
    if patched is None or upstream is None:
        from . import worker
        patched = worker.DjangoWorkerFixup if patched is None else patched
        upstream = worker.upstream_class() if upstream is None else upstream
    if reasons is None:
        reasons = reasons_for(patched)
    own = _own_classes(patched, upstream)
    members = {}
    for klass in reversed(own):         # the class nearest ``patched`` wins
        for name, value in vars(klass).items():
            if is_method(value):
                members[name] = (klass, value)
    exclude = set(inspect.getmro(patched))
    result = []
    for name, (klass, value) in members.items():
        functions = _functions(value)
        what = '{0}.{1}'.format(_dotted(klass), name)
        source = _source(functions, what)
        helpers = []
        for fn in functions:
            for helper in references(textwrap.dedent(inspect.getsource(fn)), fn.__globals__,
                                     exclude):
                if helper not in helpers:
                    helpers.append(helper)
        base, old = _upstream_member(upstream, name)
        if base is None:
            status, old_name, old_source, old_location = ADDED, None, None, None
        else:
            status = CHANGED
            old_name = '{0}.{1}'.format(_dotted(base), name)
            old_functions = _functions(old)
            if old_functions:
                old_source = _source(old_functions, old_name)
                old_location = _location(old_functions)
            else:   # a plain class attribute, replaced by a method or property
                old_source = '{0} = {1!r}\n'.format(name, old)
                old_location = (_short(inspect.getsourcefile(base), base.__module__), 0)
        result.append(Method(name, status, reasons.get(name), old_name, old_source,
                             old_location, what, source, _location(functions), helpers,
                             kind=_kind(value)))
    result.sort(key=lambda method: (method.patched_location, method.name))
    names = set(klass.__name__ for klass in own)
    uses = dict((method.name, _members_used(method.patched_source, names))
                for method in result)
    for method in result:
        method.used_by = [other.name for other in result
                          if other is not method and method.name in uses[other.name]]
    return result


def _members_used(source, class_names):
    """Attribute names ``source`` reads from ``self``, ``cls``, its own classes, ``super()``
    or ``type(self)``: the members of the class it uses."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        value = node.value
        if isinstance(value, ast.Name) and value.id in (set(['self', 'cls']) | class_names):
            found.add(node.attr)
        elif isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and \
                value.func.id in ('super', 'type'):
            found.add(node.attr)
    return found


def helper_sources(names):
    """``{dotted name: {'source', 'location', 'helpers'}}`` for ``names`` and, in turn, every
    helper of this package their source refers to."""
    found = {}
    pending = list(names)
    while pending:
        name = pending.pop(0)
        if name in found:
            continue
        obj = _resolve(name)
        try:
            source = textwrap.dedent(inspect.getsource(obj))
            path = _short(inspect.getsourcefile(obj), obj.__module__)
            line = inspect.getsourcelines(obj)[1]
        except (IOError, OSError, TypeError) as exc:
            raise DiffError('cannot read the source of {0}: {1}'.format(name, exc))
        calls = references(source, vars(sys.modules[obj.__module__]), exclude=(obj,))
        found[name] = {'source': source, 'location': [path, line], 'helpers': calls}
        pending.extend(calls)
    return found


def problems(methods, reasons, upstream=None):
    """What is wrong between the methods and ``OVERRIDES`` (a list of sentences, empty when
    they match): a method that needs a reason (see :attr:`Method.needs_reason`) and has none,
    a reason for a method that Celery's class has but the patched one inherits (no override),
    a reason for a method neither class has."""
    if upstream is None:
        from .worker import upstream_class
        upstream = upstream_class()
    out = []
    defined = set(method.name for method in methods)
    for method in methods:
        if (reasons.get(method.name) or '').strip():
            continue
        if method.needs_reason:
            out.append('{0} is {1} but OVERRIDES gives no reason'.format(
                method.name, method.status))
        elif not method.used_by:
            out.append('{0} is added, and neither OVERRIDES gives a reason nor does another '
                       'member of the class use it'.format(method.name))
    for name in sorted(set(reasons) - defined):
        if _upstream_member(upstream, name)[0] is not None:
            out.append('OVERRIDES gives a reason for {0}, but the patched class inherits it '
                       "from Celery's (no override)".format(name))
        else:
            out.append('OVERRIDES gives a reason for {0}, which neither class has'.format(name))
    return out


def report(patched=None, upstream=None):
    """The whole change as plain data (JSON-ready)."""
    from . import upstream_patches, versions, worker
    patched = worker.DjangoWorkerFixup if patched is None else patched
    upstream = worker.upstream_class() if upstream is None else upstream
    reasons = reasons_for(patched)
    methods = changes(patched, upstream, reasons)
    used = []
    for method in methods:
        used.extend(name for name in method.helpers if name not in used)
    version = versions.celery_version()
    try:
        backport = upstream_patches.patch_for(version)
    except (LookupError, upstream_patches.PatchError):
        backport = None
    return {
        'celery': '.'.join(str(part) for part in version),
        'unsupported': versions.unsupported_reason(),
        'upstream_class': _dotted(upstream),
        'upstream_file': os.path.abspath(inspect.getsourcefile(upstream)),
        'patched_class': _dotted(patched),
        'patched_file': os.path.abspath(inspect.getsourcefile(patched)),
        'methods': [method.as_dict() for method in methods],
        'helpers': helper_sources(used),
        'problems': problems(methods, reasons, upstream),
        'upstream_backport': None if backport is None else {
            'file': backport.path,
            'releases': ['.'.join(str(part) for part in base) for base in backport.bases],
            'upstream': list(backport.upstream),
        },
    }


def format_report(data):
    """The text of ``celery-django-fixup diff``: a list of lines."""
    methods = data['methods']
    counts = dict((status, sum(1 for m in methods if m['status'] == status))
                  for status in (CHANGED, ADDED))
    lines = [
        "# What celery-django-fixup changes in Celery {0}'s Django worker fix-up".format(
            data['celery']),
        '#   upstream: {0} ({1})'.format(data['upstream_class'], data['upstream_file']),
        '#   patched:  {0} ({1})'.format(data['patched_class'], data['patched_file']),
        '# {0} methods changed, {1} added; each with its reason (or, for an internal one, '
        'the methods that use it), a diff of the whole method, and the helpers it calls '
        '(their source is at the end).'.format(
            counts[CHANGED], counts[ADDED]),
    ]
    if data['unsupported']:
        lines.append('# NOTE: {0}'.format(data['unsupported']))
    for problem in data['problems']:
        lines.append('# WARNING: {0}'.format(problem))
    for method in methods:
        if method['reason']:
            reason = method['reason']
        elif method['used_by']:
            reason = 'used by {0}'.format(', '.join(method['used_by']))
        else:
            reason = '(no reason given)'
        lines += ['', '## {0} ({1}): {2}'.format(method['name'], method['status'], reason)]
        if method['helpers']:
            lines.append('# helpers: {0}'.format(', '.join(method['helpers'])))
        diff = method['diff'].rstrip('\n')
        lines.append(diff if diff else '# (the same source as Celery\'s, run in {0})'.format(
            method['patched'].rsplit('.', 2)[0]))
    if data['helpers']:
        lines += ['', '## Helpers (celery-django-fixup code the methods above call)']
        for name in sorted(data['helpers']):
            helper = data['helpers'][name]
            lines += ['', '### {0} ({1}:{2})'.format(name, *helper['location'])]
            if helper['helpers']:
                lines.append('# helpers: {0}'.format(', '.join(helper['helpers'])))
            lines.append(helper['source'].rstrip('\n'))
    backport = data['upstream_backport']
    lines += ['', "## Upstream backport (a record of Celery's own fix, not this package's change)"]
    if backport is None:
        lines.append('# None shipped for Celery {0}: the backports of celery#4292 and celery#6134 '
                     '(Celery 4.4.4\'s fix-up) are for the releases before 4.4.4.'.format(
                         data['celery']))
    else:
        lines += [
            '# {0}'.format(backport['file']),
            '# turns this release\'s celery/fixups/django.py into Celery 4.4.4\'s ({0}). It is '
            'shipped as a record: the change celery-django-fixup makes is the one above.'.format(
                ', '.join(u.split()[0] for u in backport['upstream'])),
        ]
    return lines
