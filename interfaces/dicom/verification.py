"""The DICOM AE: answers C-ECHO so modalities and `echoscu` can check the link."""

from __future__ import annotations

import logging
import socket
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from adapters.settings import Settings

log = logging.getLogger("radflow.dicom")


def _on_echo(event: Any) -> int:
    requestor = event.assoc.requestor
    log.info(
        "c-echo",
        extra={"calling_ae": requestor.ae_title, "peer": f"{requestor.address}:{requestor.port}"},
    )
    return 0x0000


def _on_open(event: Any) -> None:
    # pynetdicom leaves Nagle on; with delayed ACKs every reply would wait ~40-90 ms
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def start_verification_scp(settings: Settings, port: int | None = None) -> Any:
    """Start the AE in a background thread; returns the server (call `.shutdown()`)."""
    ae = AE(ae_title=settings.ae_title)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    server = ae.start_server(
        (settings.bind_host, settings.dicom_port if port is None else port),
        block=False,
        evt_handlers=[(evt.EVT_C_ECHO, _on_echo), (evt.EVT_CONN_OPEN, _on_open)],
    )
    if server is None:
        raise RuntimeError("pynetdicom did not start the DICOM server")
    log.info("dicom listening", extra={"ae_title": settings.ae_title, "port": server.server_address[1]})
    return server
