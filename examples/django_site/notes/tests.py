"""The app's own tests, run by Django's test runner (``python manage.py test``)
on a test database whose connections come from the pool."""

from __future__ import annotations

import threading

import psycopg2.extensions
from django.db import connection, transaction
from django.test import TestCase, TransactionTestCase

from psycopg2_pool import ConnectionPool, PooledConnection

from .models import Counter, Note


class NoteViewTests(TestCase):
    def test_add_note_writes_and_reads_back(self) -> None:
        response = self.client.post("/notes/", {"text": "hello"})
        self.assertEqual(response.status_code, 201)
        body = response.json()
        self.assertEqual(body["text"], "hello")
        self.assertEqual(body["data"], {"text": "hello", "length": 5})
        self.assertEqual(Note.objects.get(pk=body["id"]).data["length"], 5)

    def test_show_note_reads_a_stored_note(self) -> None:
        note = Note.objects.create(text="stored", data={"k": [1, 2]})
        response = self.client.get(f"/notes/{note.pk}/")
        self.assertEqual(response.json()["data"], {"k": [1, 2]})


class PoolTests(TestCase):
    def test_connection_comes_from_the_pool(self) -> None:
        connection.ensure_connection()
        self.assertIsInstance(connection.pool, ConnectionPool)
        self.assertIsInstance(connection.connection, PooledConnection)
        self.assertIsInstance(connection.connection, psycopg2.extensions.connection)

    def test_connection_uses_the_database_time_zone(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SHOW TIME ZONE")
            self.assertEqual(cursor.fetchone()[0], "UTC")

    def test_select_for_update_needs_and_gets_a_transaction(self) -> None:
        Counter.objects.create(name="locked", value=1)
        with transaction.atomic():
            counter = Counter.objects.select_for_update().get(name="locked")
            counter.value += 1
            counter.save()
        self.assertEqual(Counter.objects.get(name="locked").value, 2)


class ConcurrentIncrementTests(TransactionTestCase):
    def test_threads_increment_a_counter_under_select_for_update(self) -> None:
        Counter.objects.create(name="shared")
        errors: list[BaseException] = []

        def increment() -> None:
            try:
                for _ in range(5):
                    response = self.client_class().post("/counters/shared/increment/")
                    assert response.status_code == 200, response.content
            except BaseException as exc:
                errors.append(exc)
            finally:
                connection.close()  # this thread's connection, back to the pool

        threads = [threading.Thread(target=increment) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(errors, [])
        self.assertEqual(Counter.objects.get(name="shared").value, 40)
