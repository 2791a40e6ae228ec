"""Create the demo model's table (if missing) on every configured alias, or those named.

``python -m cdf_demo.createtables [alias ...]``, with the environment a worker gets. The
project has no migrations on purpose: it runs on Django 1.11 to 3.2 alike. When the settings
install ``django_celery_results`` (``CDF_RESULT_BACKEND=django-db``), its own migrations are
applied too, on the same aliases.
"""
from __future__ import absolute_import, print_function

import os
import sys


def main(aliases):
    os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'cdf_demo.settings')
    import django
    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections
    from cdf_demo.models import Item

    for alias in aliases or list(connections):
        conn = connections[alias]
        with conn.cursor() as cursor:
            existing = conn.introspection.table_names(cursor)
        if Item._meta.db_table not in existing:
            with conn.schema_editor() as editor:
                editor.create_model(Item)
        if 'django_celery_results' in settings.INSTALLED_APPS:
            call_command('migrate', 'django_celery_results', database=alias, verbosity=0,
                         interactive=False)
            print('django_celery_results tables ready on {0}'.format(alias))
        conn.close()
        print('table {0} ready on {1}'.format(Item._meta.db_table, alias))


if __name__ == '__main__':
    main(sys.argv[1:])
