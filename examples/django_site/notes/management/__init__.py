"""The notes app's management commands."""
