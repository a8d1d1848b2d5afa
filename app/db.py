"""Database engine and sessions.

PostgreSQL (asyncpg) in production; SQLite (aiosqlite) in the embedded mode. SQLite has a
single writer, so every transaction there starts with BEGIN IMMEDIATE: transactions queue
for the write lock up front instead of failing with "database is locked" when a reader
tries to upgrade.
"""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from app.settings import Settings


def create_engine(settings: Settings) -> AsyncEngine:
    if settings.is_sqlite:
        engine = create_async_engine(
            settings.database_url, connect_args={"timeout": 30, "isolation_level": None},
            hide_parameters=True,
        )
        _configure_sqlite(engine)
        return engine
    # asyncpg's prepared-statement cache keeps the hot statements parsed server-side.
    connect_args: dict[str, object] = {"server_settings": {"application_name": "bookmyevent"}}
    if settings.db_pgbouncer:
        connect_args.update(_PGBOUNCER_CONNECT_ARGS)
    return create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=True,
        # Errors (and so the logs) show statements, never their values: emails, keys, tokens.
        hide_parameters=True,
        connect_args=connect_args,
    )


# PgBouncer in transaction pooling (1.18 has no max_prepared_statements) gives each
# transaction whichever server connection is free, so a statement prepared under a name in
# one transaction is missing (or another client's) in the next. Unnamed statements only:
# SQLAlchemy still prepares each one to learn its columns, but under the empty name, and
# asyncpg with its cache off parses it again in the same message as its execution. The cost:
# every statement is parsed and planned at each execution, nothing is cached or left behind
# on the server. Every transaction is explicit (SQLAlchemy's BEGIN), so it stays on one
# server connection; nothing in the app keeps session state across transactions.
_PGBOUNCER_CONNECT_ARGS: dict[str, object] = {
    "statement_cache_size": 0,  # asyncpg's own cache
    "prepared_statement_cache_size": 0,  # SQLAlchemy's
    "prepared_statement_name_func": lambda: "",
}


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection):  # type: ignore[no-untyped-def]
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
