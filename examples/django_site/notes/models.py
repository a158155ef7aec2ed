"""A note with a JSON payload, and a named counter that requests increment."""

from django.db import models


class Note(models.Model):
    text = models.CharField(max_length=200)
    data = models.JSONField(default=dict)
    created = models.DateTimeField(auto_now_add=True)


class Counter(models.Model):
    name = models.CharField(max_length=50, unique=True)
    value = models.IntegerField(default=0)
