"""radflow's DICOM AE: one pynetdicom server whose services (C-ECHO now; worklist, MPPS,
storage, query/retrieve as they arrive) each contribute presentation contexts and handlers."""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from adapters.settings import Settings

log = logging.getLogger("radflow.dicom")


@dataclass
class DicomService:
    """What one service adds to the AE: SCP SOP classes and event handlers."""

    name: str
    sop_classes: Sequence[Any]
    handlers: Sequence[tuple[Any, Any]] = field(default_factory=list)
    transfer_syntaxes: Sequence[str] | None = None


def _on_echo(event: Any) -> int:
    requestor = event.assoc.requestor
    log.info("c-echo", extra={"calling_ae": requestor.ae_title, "peer": f"{requestor.address}:{requestor.port}"})
    return 0x0000


def _on_open(event: Any) -> None:
    # pynetdicom leaves Nagle on; with delayed ACKs every reply would wait ~40-90 ms
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _on_accepted(event: Any) -> None:
    requestor = event.assoc.requestor
    log.info(
        "association accepted",
        extra={"calling_ae": requestor.ae_title, "peer": f"{requestor.address}:{requestor.port}"},
    )


VERIFICATION = DicomService("verification", [Verification], [(evt.EVT_C_ECHO, _on_echo)])


def start_dicom_server(settings: Settings, services: Sequence[DicomService] = (), port: int | None = None) -> Any:
    """Start the AE in a background thread; returns the server (call `.shutdown()`)."""
    ae = AE(ae_title=settings.ae_title)
    handlers: list[tuple[Any, Any]] = [(evt.EVT_CONN_OPEN, _on_open), (evt.EVT_ACCEPTED, _on_accepted)]
    for service in (VERIFICATION, *services):
        for sop_class in service.sop_classes:
            ae.add_supported_context(sop_class, service.transfer_syntaxes or ALL_TRANSFER_SYNTAXES)
        handlers += list(service.handlers)
    server = ae.start_server(
        (settings.bind_host, settings.dicom_port if port is None else port),
        block=False,
        evt_handlers=handlers,  # type: ignore[arg-type]
    )
    if server is None:
        raise RuntimeError("pynetdicom did not start the DICOM server")
    log.info(
        "dicom listening",
        extra={
            "ae_title": settings.ae_title,
            "port": server.server_address[1],
            "services": ["verification", *(s.name for s in services)],
        },
    )
    return server
