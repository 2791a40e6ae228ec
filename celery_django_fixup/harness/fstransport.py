"""kombu's filesystem transport, with messages that appear in the queue folder whole.

kombu's own ``filesystem://`` writes a message straight into the folder the worker polls, and
the worker reads whatever file it lists, without taking the writer's lock: a message read
half-written fails to decode, and in every kombu 4.x that error ends the worker's consumer, so
the worker takes no task again. The harness therefore sends through this transport (URL
``cdffilesystem://``), which writes each message to a staging folder beside the queue folder
and renames it in (a rename within one filesystem is atomic). Workers keep reading with kombu's
own transport: only the sending side changes, and the files are the same.
"""
from __future__ import absolute_import

import os
import uuid

from kombu.transport import TRANSPORT_ALIASES, filesystem

__all__ = ('Channel', 'Transport', 'ALIAS', 'client_url')

ALIAS = 'cdffilesystem'


class Channel(filesystem.Channel):

    def _put(self, queue, payload, **kwargs):
        # The same file name as kombu's (the reader sorts and filters on it).
        name = '%s_%s.%s.msg' % (int(round(filesystem.monotonic() * 1000)), uuid.uuid4(),
                                 queue)
        folder = self.data_folder_out.rstrip(os.sep)
        staging = folder + '-staging'
        if not os.path.isdir(staging):
            try:
                os.makedirs(staging)
            except OSError:  # made meanwhile by another sender
                if not os.path.isdir(staging):
                    raise
        staged = os.path.join(staging, name)
        with open(staged, 'wb') as fh:
            fh.write(filesystem.str_to_bytes(filesystem.dumps(payload)))
        os.rename(staged, os.path.join(folder, name))


class Transport(filesystem.Transport):
    Channel = Channel


def client_url(url):
    """The URL a sender uses for a ``filesystem://`` broker URL (registers the alias)."""
    TRANSPORT_ALIASES.setdefault(ALIAS, __name__ + ':Transport')
    return ALIAS + url[len('filesystem'):]
