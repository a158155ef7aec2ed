"""The names of the statistics ``get_stats()`` reports: psycopg_pool's own keys."""

POOL_MIN = "pool_min"
POOL_MAX = "pool_max"
POOL_SIZE = "pool_size"
POOL_AVAILABLE = "pool_available"
REQUESTS_WAITING = "requests_waiting"
USAGE_MS = "usage_ms"
REQUESTS_NUM = "requests_num"
REQUESTS_QUEUED = "requests_queued"
REQUESTS_WAIT_MS = "requests_wait_ms"
REQUESTS_ERRORS = "requests_errors"
RETURNS_BAD = "returns_bad"
CONNECTIONS_NUM = "connections_num"
CONNECTIONS_MS = "connections_ms"
CONNECTIONS_ERRORS = "connections_errors"
CONNECTIONS_LOST = "connections_lost"

#: Measures of the moment (the rest are counters).
MEASURES = (POOL_MIN, POOL_MAX, POOL_SIZE, POOL_AVAILABLE, REQUESTS_WAITING)
COUNTERS = (
    USAGE_MS,
    REQUESTS_NUM,
    REQUESTS_QUEUED,
    REQUESTS_WAIT_MS,
    REQUESTS_ERRORS,
    RETURNS_BAD,
    CONNECTIONS_NUM,
    CONNECTIONS_MS,
    CONNECTIONS_ERRORS,
    CONNECTIONS_LOST,
)
