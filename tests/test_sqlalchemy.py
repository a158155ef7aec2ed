"""SQLAlchemy 2 routed through a ConnectionPool: the README's recipe.

``create_engine("postgresql+psycopg2://", creator=pool.getconn,
poolclass=NullPool)`` with ``close_returns=True``: SQLAlchemy keeps no pool of
its own and "closes" each DBAPI connection when done, which gives our handle
back to our pool.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import psycopg2
import pytest

sqlalchemy = pytest.importorskip("sqlalchemy", minversion="2")

from sqlalchemy import Engine, String, create_engine, select, text  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from psycopg2_pool import ConnectionPool, PooledConnection  # noqa: E402

from .helpers import app_name, backends, dsn_with, wait_for  # noqa: E402


class Base(DeclarativeBase):
    pass


TABLE = f"p2p_sa_{uuid.uuid4().hex[:8]}"


class Note(Base):
    __tablename__ = TABLE

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(50))


@pytest.fixture
def app() -> str:
    return app_name()


@pytest.fixture
def pool(dsn: str, app: str) -> Iterator[ConnectionPool]:
    with ConnectionPool(
        dsn_with(dsn, application_name=app),
        min_size=1,
        max_size=2,
        close_returns=True,
        timeout=10,
        name="sqlalchemy",
        open=True,
    ) as pool:
        pool.wait()
        yield pool


def recipe_engine(pool: ConnectionPool) -> Engine:
    return create_engine("postgresql+psycopg2://", creator=pool.getconn, poolclass=NullPool)


@pytest.fixture
def engine(pool: ConnectionPool) -> Iterator[Engine]:
    engine = recipe_engine(pool)
    Base.metadata.create_all(engine)
    try:
        yield engine
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()


def assert_all_returned(pool: ConnectionPool, dsn: str, app: str) -> None:
    stats = pool.get_stats()
    assert stats["pool_available"] == stats["pool_size"], stats
    assert stats["requests_waiting"] == 0
    assert stats.get("returns_bad", 0) == 0
    assert 1 <= stats["pool_size"] <= 2
    assert len(backends(dsn, app)) == stats["pool_size"]


def committed_bodies(dsn: str) -> list[str]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT body FROM {TABLE} ORDER BY id")
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


def test_session_commit_is_visible_and_rollback_is_gone(
    engine: Engine, pool: ConnectionPool, dsn: str, app: str
) -> None:
    with Session(engine) as session:
        session.add(Note(body="kept"))
        session.commit()
    assert committed_bodies(dsn) == ["kept"]
    assert_all_returned(pool, dsn, app)

    with Session(engine) as session:
        session.add(Note(body="dropped"))
        session.flush()  # sent to the server, inside the transaction
        assert session.scalars(select(Note.body).order_by(Note.id)).all() == ["kept", "dropped"]
        session.rollback()
    assert committed_bodies(dsn) == ["kept"]

    with pytest.raises(RuntimeError), Session(engine) as session, session.begin():
        session.add(Note(body="failed"))
        session.flush()
        raise RuntimeError("boom")
    assert committed_bodies(dsn) == ["kept"]

    # A session closed without commit rolls back too.
    session = Session(engine)
    session.add(Note(body="abandoned"))
    session.flush()
    session.close()
    assert committed_bodies(dsn) == ["kept"]
    assert_all_returned(pool, dsn, app)


def test_connections_go_back_to_our_pool(engine: Engine, pool: ConnectionPool) -> None:
    before = pool.get_stats()
    with engine.connect() as conn:
        handle = conn.connection.dbapi_connection
        assert isinstance(handle, PooledConnection)
        assert pool.get_stats()["pool_available"] == before["pool_available"] - 1
        conn.execute(text("SELECT 1"))
    after = pool.get_stats()
    assert after["requests_num"] == before.get("requests_num", 0) + 1
    assert after["pool_available"] == before["pool_available"]
    assert after["connections_num"] == before["connections_num"]  # reused, not reopened
    # SQLAlchemy closed the handle: it went back and is dead now.
    with pytest.raises(psycopg2.pool.PoolError, match="returned to the pool"):
        handle.cursor()


def test_concurrent_sessions_do_not_leak(
    engine: Engine, pool: ConnectionPool, dsn: str, app: str
) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(10):
                with Session(engine) as session, session.begin():
                    session.add(Note(body=f"t{n}-{i}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert len(committed_bodies(dsn)) == 40
    wait_for(lambda: pool.get_stats()["pool_available"] == pool.get_stats()["pool_size"])
    assert_all_returned(pool, dsn, app)


def test_dialect_features_through_the_handle(engine: Engine, pool: ConnectionPool) -> None:
    with engine.connect() as conn:
        assert engine.dialect.server_version_info is not None
        assert engine.dialect.server_version_info >= (9,)
        assert conn.execute(text("SELECT current_setting('server_version_num')")).scalar()
        handle = conn.connection.dbapi_connection
        assert handle.get_dsn_parameters()["application_name"].startswith("p2p-test-")
        assert conn.get_isolation_level() == "READ COMMITTED"
    raw = engine.raw_connection()
    try:
        assert engine.dialect.do_ping(raw.dbapi_connection)
    finally:
        raw.close()

    # Isolation levels (SQLAlchemy sets them with set_session / autocommit on
    # the handle) apply to the checkout, and are undone before it goes back.
    with engine.connect().execution_options(isolation_level="SERIALIZABLE") as conn:
        level = conn.execute(text("SHOW transaction_isolation")).scalar()
        assert level == "serializable"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        assert conn.connection.dbapi_connection.autocommit is True
        conn.execute(text("SELECT 1"))
    with pool.connection() as raw:
        assert raw.autocommit is False
        assert raw.execute("SHOW transaction_isolation").fetchone() == ("read committed",)
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection.autocommit is False


def test_default_dialect_options_work_with_handles(pool: ConnectionPool) -> None:
    """The recipe with the dialect's default options (native hstore detection).

    SQLAlchemy's psycopg2 dialect looks hstore up on connect with
    ``psycopg2.extras.HstoreAdapter.get_oids(conn)``; psycopg2 takes anything
    with an ``execute`` attribute for a cursor, and the handle has one.
    """
    engine = create_engine("postgresql+psycopg2://", creator=pool.getconn, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
