"""Which worker fix-up class an app really uses, for the reports of the demo workers."""
from __future__ import absolute_import


def worker_fixup_class(app):
    """The dotted name of the ``DjangoWorkerFixup`` class ``app``'s Django fix-up built, or
    None if it has built none (yet)."""
    for fixup in getattr(app, '_fixups', None) or ():
        worker_fixup = getattr(fixup, '_worker_fixup', None)
        if worker_fixup is not None:
            cls = type(worker_fixup)
            return '{0}.{1}'.format(cls.__module__, cls.__name__)
    return None
