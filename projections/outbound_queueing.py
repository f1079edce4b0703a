"""What every outbound feed does with a message it wants sent: one queue row per subscribed
destination, each with its own deterministic MSH-10, in the feed's transaction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from adapters.outbound_config import EVENT_MESSAGE_TYPES, Destination, Destinations
from adapters.outbound_log import OutboundLog, QueuedMessage
from adapters.sql import Cursor
from projections.hl7_text import control_id


@dataclass(frozen=True)
class Outgoing:
    """One event's message, before it is addressed: what the queue row says about it."""

    event: str  # the subscription name: order_status | report
    event_key: str  # unique per (aggregate, version): a replay enqueues nothing twice
    lane: str  # the patient key: a patient's messages stay in order
    accession: str
    patient_id: str
    event_type: str
    order_status: str  # ORC-5 for order status; OBR-25 (P, F, C) for reports
    modality: str
    patient_class: str
    sending_application: str


def queue_for_subscribers(
    cur: Cursor, destinations: Destinations, outgoing: Outgoing, build: Callable[[Destination, str], str]
) -> int:
    """Queue `build(destination, msh10)` for each destination the message's filters admit."""
    queued = 0
    for destination in destinations.matching(
        outgoing.event,
        modality=outgoing.modality,
        patient_class=outgoing.patient_class,
        sending_application=outgoing.sending_application,
    ):
        msh10 = control_id(destination.name, outgoing.event_key)
        queued += OutboundLog.enqueue(
            cur,
            QueuedMessage(
                destination=destination.name,
                event_key=outgoing.event_key,
                lane=outgoing.lane,
                message_type=EVENT_MESSAGE_TYPES[outgoing.event],
                control_id=msh10,
                accession=outgoing.accession,
                patient_id=outgoing.patient_id,
                event_type=outgoing.event_type,
                order_status=outgoing.order_status,
                message=build(destination, msh10),
            ),
        )
    return queued
