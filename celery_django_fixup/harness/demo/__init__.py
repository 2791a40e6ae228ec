"""A minimal Django project and Celery app that the harness runs real workers of.

The project is the package ``cdf_demo`` in this folder. Workers import it as a top-level
package (the harness puts this folder on ``PYTHONPATH``), so a worker started in ``stock`` mode
never imports ``celery_django_fixup`` and really runs Celery's own fix-up. Everything it does
is configured by environment variables, listed in ``cdf_demo/settings.py``.
"""
from __future__ import absolute_import

import os

#: The folder to put on ``PYTHONPATH`` so that ``import cdf_demo`` finds the demo project.
PATH = os.path.dirname(os.path.abspath(__file__))

#: What ``celery -A`` is given to load the demo app.
APP = 'cdf_demo.celeryapp:app'
