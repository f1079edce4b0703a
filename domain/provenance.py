"""Who, from what and when: the metadata every domain event carries."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Source:
    """Where a command came from. For HL7: sending application/facility and MSH-10."""

    kind: str  # hl7 | dicom | api | system
    application: str = ""
    facility: str = ""
    control_id: str = ""
    message_id: str = ""  # radflow's own id of the inbound record (message log row)


@dataclass(frozen=True)
class Provenance:
    actor: str
    source: Source
    occurred_at: str  # ISO 8601 as the sender stated it (MSH-7), else the arrival time
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Provenance:
        return cls(
            actor=data["actor"],
            source=Source(**data["source"]),
            occurred_at=data["occurred_at"],
            schema_version=data.get("schema_version", SCHEMA_VERSION),
            extra=dict(data.get("extra", {})),
        )

    @property
    def dedupe_key(self) -> str:
        """The key that makes a replayed command a no-op: one inbound record, one effect."""
        s = self.source
        return s.message_id or f"{s.kind}:{s.application}:{s.facility}:{s.control_id}"


def instant(iso: str) -> datetime:
    """An ISO 8601 time as an aware datetime; one without an offset is taken as UTC (the
    domain compares times from several sources, and naive and aware ones do not compare)."""
    value = datetime.fromisoformat(iso)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def arrived_at(provenance: dict[str, Any]) -> str:
    """When radflow learned of it: the receiving side's own clock (`extra.received_at`, kept by
    sources whose stated time is a device's local time without an offset, like an MPPS), else
    the time the sender stated. Deadlines count from this, so a modality's clock or time zone
    cannot start or end them early."""
    return str((provenance.get("extra") or {}).get("received_at") or provenance.get("occurred_at", ""))
