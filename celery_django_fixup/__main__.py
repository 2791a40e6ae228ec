"""``python -m celery_django_fixup``: the same as the ``celery-django-fixup`` command."""
from __future__ import absolute_import

import sys

from .cli import main

if __name__ == '__main__':
    sys.exit(main())
