"""A small Django site whose database connections come from a psycopg2_pool pool."""
