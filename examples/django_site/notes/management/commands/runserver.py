"""Django's ``runserver``, listening with a longer queue of pending connections.

Django's development server keeps 10 connections waiting to be accepted: a
burst of clients (the tests send 32 at once) overflows that, and the kernel
drops or resets the rest. Nothing else changes.
"""

from django.core.management.commands.runserver import Command as RunserverCommand
from django.core.servers.basehttp import WSGIServer


class BurstWSGIServer(WSGIServer):
    request_queue_size = 128


class Command(RunserverCommand):
    server_cls = BurstWSGIServer
