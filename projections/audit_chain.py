"""Tamper evidence: one hash chain per exam over the stored rows of its events.

An exam's chain takes, in store order, every stored event of its `Exam` aggregate, of its
`Report` and of each `Study` linked to it (a study's events from before the link join the chain
when the link is recorded). Each link is

    hash = sha256(previous hash + canonical(originator_id, version, topic, state bytes))

over the row *as stored* (read back through the eventsourcing recorder, not re-encoded from the
decoded object), so changing one byte of a stored event, deleting a row or slipping one in
breaks the chain at that link. `verify_chains` recomputes every chain from the store.

Limits (said plainly, also in the README): the chain is written by a projection a few
milliseconds after each append, by the same system, into a table of the projections database.
Someone who can rewrite both a stored event and the `audit_chain` rows after it goes unnoticed
unless the chain heads were kept elsewhere beforehand (`radflow audit verify --print-heads`,
then `--against FILE`). Rebuilding this projection re-hashes the store as it is now, so it must
not be used to "repair" a broken chain; heads exported before then still expose it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from adapters.event_store import EventStore
from adapters.sql import Cursor, Database
from domain.exam import Exam
from domain.report import Report

NAME = "audit_chain"
GENESIS = "0" * 64
_DOMAIN_TAG = b"radflow-audit-chain-1"

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS audit_chain (
        accession TEXT NOT NULL,
        seq BIGINT NOT NULL,
        aggregate TEXT NOT NULL,
        aggregate_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        topic TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        PRIMARY KEY (accession, seq)
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS audit_chain_event ON audit_chain (aggregate_id, version)",
    # which chain an aggregate's events go to: exam and report from their first event (which
    # names the accession), a study from its link to an exam
    """CREATE TABLE IF NOT EXISTS audit_chain_members (
        aggregate_id TEXT PRIMARY KEY,
        accession TEXT NOT NULL,
        aggregate TEXT NOT NULL
    )""",
]

# a link is never changed once written: the database refuses it (someone with the rights to
# drop these triggers is what exported heads are for). Deleting stays possible for a rebuild.
SQLITE_GUARDS = [
    """CREATE TRIGGER IF NOT EXISTS audit_chain_no_update BEFORE UPDATE ON audit_chain
        BEGIN SELECT RAISE(ABORT, 'audit_chain links are never changed'); END""",
]
POSTGRES_GUARDS = [
    """CREATE OR REPLACE FUNCTION audit_chain_no_update() RETURNS trigger AS $$
        BEGIN RAISE EXCEPTION 'audit_chain links are never changed'; END $$ LANGUAGE plpgsql""",
    "DROP TRIGGER IF EXISTS audit_chain_no_update ON audit_chain",
    """CREATE TRIGGER audit_chain_no_update BEFORE UPDATE ON audit_chain
        FOR EACH ROW EXECUTE FUNCTION audit_chain_no_update()""",
]

_EXAM_TOPIC = get_topic(Exam)
_REPORT_TOPIC = get_topic(Report)
# stored topics are "<module>:<Aggregate>.<Event>"; these prefixes say an event's aggregate kind
_CHAINED_PREFIXES = {f"{_EXAM_TOPIC}.": "exam", f"{_REPORT_TOPIC}.": "report"}


def canonical(originator_id: UUID | str, version: int, topic: str, state: bytes) -> bytes:
    """Length-prefixed fields, so no two different rows encode to the same bytes."""
    parts = [
        _DOMAIN_TAG,
        str(_uuid(originator_id)).encode(),
        str(int(version)).encode(),
        topic.encode(),
        bytes(state),
    ]
    return b"".join(len(part).to_bytes(8, "big") + part for part in parts)


def link_hash(prev_hash: str, stored: StoredEvent) -> str:
    return hashlib.sha256(
        bytes.fromhex(prev_hash)
        + canonical(stored.originator_id, stored.originator_version, stored.topic, stored.state)
    ).hexdigest()


def _uuid(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


class AuditChainProjection:
    """Appends links; never updates or deletes one (a replayed position rolls back whole)."""

    name = NAME
    tables: Sequence[str] = ("audit_chain", "audit_chain_members")
    schema: Sequence[str]

    def __init__(self, store: EventStore) -> None:
        self.recorder = store.recorder
        self.schema = SCHEMA

    def handle(self, cur: Cursor, event: Any) -> None:
        aggregate_id = str(_uuid(event.originator_id))
        version = int(event.originator_version)
        member = cur.execute(
            "SELECT accession, aggregate FROM audit_chain_members WHERE aggregate_id = ?", (aggregate_id,)
        ).fetchone()
        if member is None:
            member = self._join(cur, event, aggregate_id)
            if member is None:
                return
        self._append(cur, member["accession"], member["aggregate"], self._stored(aggregate_id, version))

    def _join(self, cur: Cursor, event: Any, aggregate_id: str) -> dict[str, str] | None:
        """Register the aggregate with its exam's chain; None when it belongs to none."""
        kind = {_EXAM_TOPIC: "exam", _REPORT_TOPIC: "report"}.get(getattr(event, "originator_topic", ""))
        if kind is None and type(event).__name__ == "StudyLinkedToExam":
            kind = "study"
        if kind is None or not getattr(event, "accession", ""):
            return None
        member = {"accession": event.accession, "aggregate": kind}
        cur.execute(
            "INSERT INTO audit_chain_members (aggregate_id, accession, aggregate) VALUES (?, ?, ?)",
            (aggregate_id, event.accession, kind),
        )
        if kind == "study":  # what the study held before the link joins the chain first
            for stored in self.recorder.select_events(
                _uuid(aggregate_id), lte=int(event.originator_version) - 1
            ):
                self._append(cur, event.accession, kind, stored)
        return member

    def _stored(self, aggregate_id: str, version: int) -> StoredEvent:
        rows = self.recorder.select_events(_uuid(aggregate_id), gt=version - 1, lte=version)
        if not rows:  # the notification was read a moment ago; a row gone since is tampering
            raise LookupError(f"stored event {aggregate_id} v{version} vanished while chaining")
        return rows[0]

    @staticmethod
    def _guard(cur: Cursor) -> None:
        """The no-update trigger, made sure of whenever a chain starts. Not in `schema`: the same
        projection also fills scratch SQLite copies of a PostgreSQL projection (`radflow
        projections check`), and the trigger's dialect must be the cursor's."""
        if cur.dialect == "sqlite":
            for statement in SQLITE_GUARDS:
                cur.execute(statement)
        elif not cur.execute("SELECT 1 FROM pg_trigger WHERE tgname = 'audit_chain_no_update'").fetchone():
            for statement in POSTGRES_GUARDS:
                cur.execute(statement)

    def _append(self, cur: Cursor, accession: str, kind: str, stored: StoredEvent) -> None:
        head = cur.execute(
            "SELECT seq, hash FROM audit_chain WHERE accession = ? ORDER BY seq DESC LIMIT 1", (accession,)
        ).fetchone()
        seq, prev = (int(head["seq"]) + 1, str(head["hash"])) if head else (1, GENESIS)
        if head is None:
            self._guard(cur)
        cur.execute(
            "INSERT INTO audit_chain (accession, seq, aggregate, aggregate_id, version, topic, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                accession,
                seq,
                kind,
                str(_uuid(stored.originator_id)),
                int(stored.originator_version),
                stored.topic,
                prev,
                link_hash(prev, stored),
            ),
        )


# --- verification -------------------------------------------------------------------------


@dataclass
class BrokenLink:
    """The first link of a chain that the store no longer reproduces."""

    accession: str
    seq: int | None
    aggregate: str
    aggregate_id: str
    version: int
    event_type: str
    problem: str  # "altered" | "missing from the store" | "not in the chain" | "head differs"
    expected: str
    found: str

    def describe(self) -> str:
        where = f"link {self.seq}" if self.seq is not None else "no link"
        return (
            f"accession {self.accession or '?'}, {where}: {self.aggregate} {self.aggregate_id} version "
            f"{self.version} ({self.event_type}) {self.problem}; expected {self.expected}, found {self.found}"
        )


@dataclass
class Verification:
    chains: int = 0
    links: int = 0
    scanned: int = 0  # stored events read in the completeness pass
    position: int = 0  # the chain projection's position
    store_max: int = 0
    broken: list[BrokenLink] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.broken

    @property
    def pending(self) -> int:
        """Events stored after the projection's position: not chained yet, not checked."""
        return max(self.store_max - self.position, 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "chains": self.chains,
            "links": self.links,
            "position": self.position,
            "store_max": self.store_max,
            "pending": self.pending,
            "broken": [asdict(b) for b in self.broken],
        }


def _event_type(topic: str) -> str:
    return topic.rsplit(".", 1)[-1]


def chain_position(db: Database) -> int:
    rows = db.query("SELECT position FROM projection_tracking WHERE name = ?", (NAME,))
    return int(rows[0]["position"]) if rows else 0


def chain_links(db: Database, accession: str) -> list[dict[str, Any]]:
    return db.query("SELECT * FROM audit_chain WHERE accession = ? ORDER BY seq", (accession,))


def verify_chain(store: EventStore, accession: str, links: Sequence[dict[str, Any]]) -> BrokenLink | None:
    """Recompute one chain from the stored rows; the first link that differs, or None."""
    stored: dict[str, dict[int, StoredEvent]] = {}
    for aggregate_id in dict.fromkeys(link["aggregate_id"] for link in links):
        stored[aggregate_id] = {
            int(row.originator_version): row for row in store.recorder.select_events(_uuid(aggregate_id))
        }
    prev = GENESIS
    chained: dict[str, set[int]] = {}
    for link in links:
        aggregate_id, version = str(link["aggregate_id"]), int(link["version"])
        chained.setdefault(aggregate_id, set()).add(version)
        row = stored[aggregate_id].get(version)
        if row is None:
            return BrokenLink(
                accession,
                int(link["seq"]),
                link["aggregate"],
                aggregate_id,
                version,
                _event_type(link["topic"]),
                "missing from the store",
                link["hash"],
                "no stored event",
            )
        expected = link_hash(prev, row)
        if expected != link["hash"] or row.topic != link["topic"]:
            return BrokenLink(
                accession,
                int(link["seq"]),
                link["aggregate"],
                aggregate_id,
                version,
                _event_type(row.topic),
                "altered",
                link["hash"],
                expected,
            )
        prev = expected
    for aggregate_id, rows in stored.items():
        # a version below the highest chained one that the chain lacks was slipped in later
        top = max(chained[aggregate_id])
        for version in sorted(set(rows) - chained[aggregate_id]):
            if version < top:
                kind = next(link["aggregate"] for link in links if link["aggregate_id"] == aggregate_id)
                return BrokenLink(
                    accession,
                    None,
                    kind,
                    aggregate_id,
                    version,
                    _event_type(rows[version].topic),
                    "not in the chain",
                    "no stored event",
                    "a stored event",
                )
    return None


def verify_chains(store: EventStore, db: Database, *, batch: int = 1000) -> Verification:
    """Recompute every chain, then read the whole store up to the chain's position for events
    that no chain holds (rows inserted behind the projection's back)."""
    result = Verification(position=chain_position(db), store_max=store.max_notification_id())
    for row in db.query("SELECT DISTINCT accession FROM audit_chain ORDER BY accession"):
        links = chain_links(db, row["accession"])
        result.chains += 1
        result.links += len(links)
        broken = verify_chain(store, row["accession"], links)
        if broken is not None:
            result.broken.append(broken)
    members = {
        str(r["aggregate_id"]): (str(r["accession"]), str(r["aggregate"]), int(r["top"]))
        for r in db.query(
            "SELECT m.aggregate_id, m.accession, m.aggregate, COALESCE(MAX(c.version), 0) AS top"
            " FROM audit_chain_members m LEFT JOIN audit_chain c ON c.aggregate_id = m.aggregate_id"
            " GROUP BY m.aggregate_id, m.accession, m.aggregate"
        )
    }
    already = {b.accession for b in result.broken}
    for notification in _notifications(store, result.position, batch):
        result.scanned += 1
        aggregate_id = str(_uuid(notification.originator_id))
        version = int(notification.originator_version)
        member = members.get(aggregate_id)
        if member is not None:
            accession, kind, top = member
            if version <= top or accession in already:
                continue
        else:
            kind = next((k for p, k in _CHAINED_PREFIXES.items() if notification.topic.startswith(p)), "")
            if not kind:
                continue  # patients and unlinked studies have no chain
            accession = _accession_of(store, notification)
        # below the projection's position, yet never chained: it was not there when the
        # projection passed (or it would be chained), so it was put there afterwards
        already.add(accession)
        result.broken.append(
            BrokenLink(
                accession,
                None,
                kind,
                aggregate_id,
                version,
                _event_type(notification.topic),
                "not in the chain",
                "no stored event",
                f"a stored event at position {notification.id}",
            )
        )
    return result


def _notifications(store: EventStore, stop: int, batch: int) -> Iterator[Any]:
    start = 1
    while start <= stop:
        page = store.recorder.select_notifications(start=start, limit=batch, stop=stop)
        if not page:
            return
        yield from page
        start = page[-1].id + 1


def _accession_of(store: EventStore, notification: Any) -> str:
    try:
        return str(getattr(store.mapper.to_domain_event(notification), "accession", "") or "")
    except Exception:  # an undecodable row is itself the finding; the accession is unknown
        return ""


# --- heads, to keep outside -----------------------------------------------------------------


def chain_heads(db: Database) -> list[dict[str, Any]]:
    return db.query(
        "SELECT c.accession, c.seq, c.hash FROM audit_chain c JOIN ("
        " SELECT accession, MAX(seq) AS seq FROM audit_chain GROUP BY accession"
        ") h ON h.accession = c.accession AND h.seq = c.seq ORDER BY c.accession"
    )


def heads_digest(heads: Iterable[dict[str, Any]]) -> str:
    lines = "".join(f"{h['accession']}\t{int(h['seq'])}\t{h['hash']}\n" for h in heads)
    return hashlib.sha256(lines.encode()).hexdigest()


def check_heads(db: Database, exported: Iterable[tuple[str, int, str]]) -> list[BrokenLink]:
    """Each head exported earlier must still be the hash of that link: a chain rewritten from
    there on (event and chain table both) no longer has it."""
    broken: list[BrokenLink] = []
    for accession, seq, hash_ in exported:
        rows = db.query("SELECT * FROM audit_chain WHERE accession = ? AND seq = ?", (accession, seq))
        found = rows[0]["hash"] if rows else "no such link"
        if found != hash_:
            row: dict[str, Any] = (
                rows[0] if rows else {"aggregate": "?", "aggregate_id": "?", "version": 0, "topic": "?"}
            )
            broken.append(
                BrokenLink(
                    accession,
                    seq,
                    row["aggregate"],
                    row["aggregate_id"],
                    int(row["version"]),
                    _event_type(row["topic"]),
                    "head differs from the exported one",
                    hash_,
                    found,
                )
            )
    return broken
