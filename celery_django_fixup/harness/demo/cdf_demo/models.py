"""One tiny model, for tasks that go through the ORM."""
from __future__ import absolute_import

from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=64)
    value = models.IntegerField(default=0)

    class Meta:
        app_label = 'cdf_demo'
        db_table = 'cdf_demo_item'
