"""Migrations of the notes app."""
