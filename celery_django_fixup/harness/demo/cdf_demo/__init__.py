"""Demo Django project and Celery app (see ``settings`` for the environment it reads)."""
