"""The site's URLs: the notes app's views."""

from django.urls import path
from notes import views

urlpatterns = [
    path("notes/", views.add_note),
    path("notes/<int:note_id>/", views.show_note),
    path("counters/<str:name>/", views.show_counter),
    path("counters/<str:name>/increment/", views.increment_counter),
    path("session/", views.session),
]
