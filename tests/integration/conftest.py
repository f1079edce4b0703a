"""Fixtures for the integration tests: each storage test runs once on SQLite files in a temporary
folder and once on the session's PostgreSQL database (marked `postgres`; it errors, never skips,
when the server is unreachable)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from adapters.event_store import EventStore, open_event_store
from adapters.message_log import MessageLog
from adapters.settings import Settings
from adapters.sql import Database

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    if request.param == "postgres":
        return Settings(data_dir=tmp_path, database_url=request.getfixturevalue("postgres_url"))
    return Settings(data_dir=tmp_path, database_url="")


@pytest.fixture(scope="session")
def postgres_store(postgres_url: str) -> Iterator[EventStore]:
    """One store for the session: PostgreSQL fails when several create the tables at once."""
    store = open_event_store(Settings(database_url=postgres_url))
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def store(settings: Settings, request: pytest.FixtureRequest) -> Iterator[EventStore]:
    if settings.uses_postgres:
        yield request.getfixturevalue("postgres_store")
        return
    sqlite_store = open_event_store(settings)
    try:
        yield sqlite_store
    finally:
        sqlite_store.close()


@pytest.fixture
def message_log(settings: Settings) -> Iterator[MessageLog]:
    db = Database.for_file(settings, settings.messages_sqlite_path)
    log = MessageLog(db)
    log.create_schema()
    try:
        yield log
    finally:
        db.close()


@pytest.fixture
def uid() -> str:
    """A prefix that keeps this test's accessions, senders and workflow ids its own: the
    PostgreSQL database and the Temporal server are shared by the whole session."""
    return uuid.uuid4().hex[:8].upper()
