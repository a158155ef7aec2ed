"""Commands: runserver, with room for bursts of clients."""
