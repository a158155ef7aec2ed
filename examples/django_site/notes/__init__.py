"""The example site's app: notes written and read back, and counters."""
