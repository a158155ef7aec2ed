"""Views that write and read through the pooled connection of their request."""

from __future__ import annotations

from django.db import connection, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from .models import Counter, Note


def _backend_pid() -> int:
    # The server process behind this request's connection.
    return connection.connection.info.backend_pid


def _note(note: Note) -> dict[str, object]:
    return {
        "id": note.pk,
        "text": note.text,
        "data": note.data,
        "created": note.created.isoformat(),
    }


@require_POST
def add_note(request: HttpRequest) -> JsonResponse:
    """Write a note, then read it back from the database."""
    text = request.POST["text"]
    with transaction.atomic():
        note = Note.objects.create(text=text, data={"text": text, "length": len(text)})
    stored = Note.objects.get(pk=note.pk)
    return JsonResponse({**_note(stored), "pid": _backend_pid()}, status=201)


@require_GET
def show_note(request: HttpRequest, note_id: int) -> JsonResponse:
    return JsonResponse(_note(Note.objects.get(pk=note_id)))


@require_POST
def increment_counter(request: HttpRequest, name: str) -> JsonResponse:
    """Add one to a counter, locking its row: concurrent requests queue on it."""
    with transaction.atomic():
        counter, _ = Counter.objects.get_or_create(name=name)
        counter = Counter.objects.select_for_update().get(pk=counter.pk)
        counter.value += 1
        counter.save(update_fields=["value"])
    return JsonResponse({"name": name, "value": counter.value})


@require_GET
def show_counter(request: HttpRequest, name: str) -> JsonResponse:
    counter = Counter.objects.filter(name=name).first()
    return JsonResponse({"name": name, "value": counter.value if counter else 0})


UNCOMMITTED = "written in a transaction never committed"


@require_GET
def session(request: HttpRequest) -> JsonResponse:
    """The session this request's connection came with.

    ``?dirty=session`` then changes its settings, ``?dirty=transaction``
    leaves a transaction open with a write in it: the next request on the
    same connection must find none of that.
    """
    connection.ensure_connection()
    raw = connection.connection  # the pooled psycopg2 connection
    with connection.cursor() as cursor:
        cursor.execute("SHOW TIME ZONE")
        (time_zone,) = cursor.fetchone()
        cursor.execute("SHOW default_transaction_read_only")
        (read_only,) = cursor.fetchone()
    state = {
        "pid": _backend_pid(),
        "time_zone": time_zone,
        "read_only": read_only,
        "isolation_level": raw.isolation_level,
        "readonly": raw.readonly,
        "deferrable": raw.deferrable,
        "autocommit": raw.autocommit,
        "uncommitted_notes": Note.objects.filter(text=UNCOMMITTED).count(),
    }
    dirty = request.GET.get("dirty")
    if dirty == "session":
        with connection.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'Asia/Tokyo'")
        raw.set_session(isolation_level="SERIALIZABLE", readonly=True, deferrable=True)
    elif dirty == "transaction":
        transaction.set_autocommit(False)
        Note.objects.create(text=UNCOMMITTED)
    return JsonResponse(state)
