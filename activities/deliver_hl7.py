"""The deliver_hl7 activity: send one queued outbound message and record what happened.

Safe to run twice: a row that is no longer `queued` (delivered, dead, discarded) is not sent
again. A message can still reach its receiver twice (the worker dies after the peer's ACK and
before the row is marked): receivers dedupe by MSH-10, which is deterministic per
(destination, event). Attempts are counted by Temporal (`activity.info().attempt`); on the
last one, or when the destination's policy says an AE/AR is final, the row becomes a dead
letter here and the activity returns, so the lane moves on.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from temporalio import activity
from temporalio.exceptions import ApplicationError

from adapters.outbound_config import Destination, Destinations
from adapters.outbound_log import OutboundLog
from interfaces.hl7.mllp_client import DeliveryError, send_message

RETRYABLE = "DeliveryFailed"


@dataclass
class DeliveryRequest:
    row_id: int
    generation: int = 0
    max_attempts: int = 8
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 300.0
    ack_timeout_s: float = 10.0


@dataclass
class DeadLetterRequest:
    row_id: int
    error: str


class DeliveryActivities:
    def __init__(
        self,
        log: OutboundLog,
        destinations: Destinations,
        contexts: dict[str, ssl.SSLContext] | None = None,
    ) -> None:
        self.log = log
        self.destinations = destinations
        # destination name -> TLS client context; built once at start (adapters/tls may supply them)
        self.contexts = contexts if contexts is not None else tls_contexts(destinations)

    @activity.defn(name="deliver_hl7")
    async def deliver_hl7(self, request: DeliveryRequest) -> str:
        row = await asyncio.to_thread(self.log.get, request.row_id)
        if row is None:
            raise ApplicationError(f"outbound message {request.row_id} does not exist", non_retryable=True)
        if row["status"] != "queued":
            return str(row["status"])
        destination = self.destinations.by_name(row["destination"])
        if destination is None:
            await asyncio.to_thread(
                self.log.mark_dead,
                request.row_id,
                error=f"destination {row['destination']!r} is no longer configured",
                attempted=False,
            )
            return "dead"
        attempt = activity.info().attempt
        last = attempt >= request.max_attempts
        error, ack_text, final = await self._send(destination, row["message"])
        if not error:
            await asyncio.to_thread(self.log.mark_delivered, request.row_id, ack=ack_text)
            return "delivered"
        if final or last:
            why = error if final else f"{error} (attempt {attempt} of {request.max_attempts})"
            await asyncio.to_thread(self.log.mark_dead, request.row_id, error=why, ack=ack_text)
            activity.logger.warning(
                "outbound message dead-lettered",
                extra={"row": request.row_id, "destination": destination.name, "attempt": attempt},
            )
            return "dead"
        await asyncio.to_thread(self.log.record_attempt, request.row_id, error=error, ack=ack_text)
        raise ApplicationError(f"attempt {attempt}: {error}", type=RETRYABLE)

    async def _send(self, destination: Destination, message: str) -> tuple[str, str, bool]:
        """(error, ACK text, whether the error is final per policy); no error: delivered."""
        try:
            ack = await send_message(
                destination.host,
                destination.port,
                message,
                timeout_s=destination.ack_timeout_s,
                ssl_context=self.contexts.get(destination.name),
            )
        except DeliveryError as error:
            return str(error), "", False
        if ack.accepted:
            return "", ack.text, False
        policy = destination.policy_for(ack.code)
        answered = (
            f"{destination.name} answered {ack.code or '(empty MSA-1)'}: {ack.reason or 'no reason given'}"
        )
        return answered, ack.text, policy == "dead_letter" and ack.code in ("AE", "AR", "CE", "CR")

    @activity.defn(name="dead_letter_hl7")
    async def dead_letter_hl7(self, request: DeadLetterRequest) -> None:
        """The lane gave up on a row whose activity never finished an attempt (timeouts)."""
        await asyncio.to_thread(self.log.mark_dead, request.row_id, error=request.error)


def tls_contexts(destinations: Destinations) -> dict[str, ssl.SSLContext]:
    return {d.name: d.tls.client_context() for d in destinations.items if d.tls is not None}
