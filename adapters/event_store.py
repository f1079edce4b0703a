"""The event store: an eventsourcing Application on SQLite (embedded) or PostgreSQL."""

from __future__ import annotations

import os
import time
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import DomainEventProtocol

from adapters.settings import Settings


class EventStore(Application[UUID]):
    """Aggregates are saved and loaded here; projections read its notification log."""

    name = "radflow"

    def events_of(self, originator_id: UUID) -> list[DomainEventProtocol[UUID]]:
        return [self.mapper.to_domain_event(stored) for stored in self.recorder.select_events(originator_id)]

    def get_or_none(self, aggregate_id: UUID) -> Any:
        try:
            return self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None

    def max_notification_id(self) -> int:
        return int(self.recorder.max_notification_id() or 0)


def store_env(settings: Settings, *, create_table: bool = True) -> dict[str, str]:
    if settings.uses_postgres:
        params = settings.postgres_params()
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": params["dbname"],
            "POSTGRES_HOST": params["host"],
            "POSTGRES_PORT": params["port"],
            "POSTGRES_USER": params["user"],
            "POSTGRES_PASSWORD": params["password"],
            "POSTGRES_ENABLE_DB_FUNCTIONS": "yes",
            "CREATE_TABLE": "yes" if create_table else "no",
        }
    settings.ensure_data_dir()
    return {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(settings.events_sqlite_path),
        "SQLITE_LOCK_TIMEOUT": "30",
        "CREATE_TABLE": "yes",
    }


def open_event_store(settings: Settings, *, create_table: bool = True) -> EventStore:
    env = store_env(settings, create_table=create_table)
    # eventsourcing also reads os.environ; ours must win over anything inherited
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k in env}
    try:
        for attempt in range(5):
            try:
                return EventStore(env=env)
            except Exception:
                # PostgreSQL: processes creating the tables at once fail with
                # "tuple concurrently updated"; the next attempt finds them created
                if attempt == 4 or not settings.uses_postgres:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")
    finally:
        os.environ.update(saved)
