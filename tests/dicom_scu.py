"""pynetdicom as a test's SCU against radflow, minus a race of its own (pynetdicom #875).

A `send_*()` right after another can find the SCU's reactor thread still waking from the
previous exchange; that thread then takes the next response off the DIMSE queue ("Received
unexpected C-STORE service message") and the sender waits for it until its DIMSE timeout.
radflow answers a C-STORE in well under a millisecond, which is what brings it out. Every
exchange in these tests is driven by the test's own thread, so the reactor is kept off the
responses, as radflow does for the associations it opens (query_retrieve.guard_reactor)."""

from __future__ import annotations

from typing import Any

from pynetdicom import AE

from interfaces.dicom.query_retrieve import guard_reactor


def associate(ae: AE, port: int, ae_title: str = "RADFLOW", **options: Any) -> Any:
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title, **options)
    if assoc.is_established:
        guard_reactor(assoc)
    return assoc
