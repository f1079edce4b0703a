"""Storage Commitment Push Model SCP (IHE RAD-10, PS3.4 Annex J): N-ACTION asks radflow to take
responsibility for instances; N-EVENT-REPORT answers which it holds.

An instance is committed only when its row is in the storage log (committed after the fsync'd
file, before its C-STORE success), its SOP class matches the request, and the file is there
with the size recorded. The request and its answer are durable before the N-ACTION success.
The report goes back on the same association while it is open, otherwise on a new association
to the requesting AE (from the configured peers), retried with back-off; what could not be
delivered stays visible in the storage log.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from adapters.dicom_config import DicomConfig
from adapters.settings import Settings
from adapters.storage_log import StorageLog
from interfaces.dicom.server import DicomService, association_id
from interfaces.dicom.status import status

log = logging.getLogger("radflow.dicom.commitment")

WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"  # PS3.4 J.3.5: the one SOP instance
REQUEST_STORAGE_COMMITMENT = 1  # Action Type ID
ALL_COMMITTED, SOME_FAILED = 1, 2  # Event Type ID
SUCCESS = 0x0000
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
PROCESSING_FAILURE = 0x0110
INVALID_OBJECT_INSTANCE = 0x0117
MISSING_ATTRIBUTE = 0x0120
NO_SUCH_ACTION = 0x0123
INVALID_ARGUMENT_VALUE = 0x0115
DELIVERY_ATTEMPTS = 5


class BadRequest(Exception):
    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


def requested_instances(action: Dataset) -> tuple[str, list[dict[str, str]]]:
    """(Transaction UID, [{sop_class_uid, sop_instance_uid}]) of an N-ACTION, or BadRequest."""
    transaction = str(action.get("TransactionUID", "") or "").strip()
    if not transaction:
        raise BadRequest(MISSING_ATTRIBUTE, "Transaction UID (0008,1195) is missing")
    items = action.get("ReferencedSOPSequence")
    if not items:
        raise BadRequest(MISSING_ATTRIBUTE, "Referenced SOP Sequence (0008,1199) is missing or empty")
    requested = []
    for index, item in enumerate(items):
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "").strip()
        sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
        if not sop_class or not sop_instance:
            raise BadRequest(INVALID_ARGUMENT_VALUE, f"Referenced SOP Sequence item {index + 1} lacks a UID")
        requested.append({"sop_class_uid": sop_class, "sop_instance_uid": sop_instance})
    return transaction, requested


def commitment_result(storage_log: StorageLog, requested: list[dict[str, str]]) -> dict[str, Any]:
    """Which requested instances radflow holds, and why each other one fails."""
    held = storage_log.durable([r["sop_instance_uid"] for r in requested])
    committed, failed = [], []
    for item in requested:
        row = held.get(item["sop_instance_uid"])
        if row is None:
            failed.append({**item, "failure_reason": NO_SUCH_OBJECT_INSTANCE})
        elif row["sop_class_uid"] != item["sop_class_uid"]:
            failed.append({**item, "failure_reason": CLASS_INSTANCE_CONFLICT})
        elif not _file_intact(row["path"], int(row["size"])):
            failed.append({**item, "failure_reason": PROCESSING_FAILURE})
        else:
            committed.append(item)
    return {"committed": committed, "failed": failed}


def _file_intact(path: str, size: int) -> bool:
    try:
        return os.stat(path).st_size == size
    except OSError:
        return False


def event_information(transaction: str, result: dict[str, Any], ae_title: str) -> Dataset:
    info = Dataset()
    info.TransactionUID = transaction
    info.RetrieveAETitle = ae_title
    info.ReferencedSOPSequence = [_reference(i) for i in result["committed"]]
    if result["failed"]:
        info.FailedSOPSequence = [_reference(i, i["failure_reason"]) for i in result["failed"]]
    return info


def _reference(item: dict[str, Any], failure: int | None = None) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = item["sop_class_uid"]
    ref.ReferencedSOPInstanceUID = item["sop_instance_uid"]
    if failure is not None:
        ref.FailureReason = failure
    return ref


class StorageCommitmentScp:
    def __init__(self, settings: Settings, config: DicomConfig, storage_log: StorageLog) -> None:
        self.ae_title = settings.ae_title
        self.config = config
        self.log = storage_log
        self.retry_s = 2.0

    def handle_n_action(self, event: Any) -> tuple[Dataset, Dataset | None]:
        request = event.request
        requestor = event.assoc.requestor
        calling_ae = str(requestor.ae_title).strip()
        peer = f"{requestor.address}:{requestor.port}"
        try:
            if str(request.RequestedSOPInstanceUID) != WELL_KNOWN_INSTANCE:
                raise BadRequest(INVALID_OBJECT_INSTANCE, f"the SOP instance is {WELL_KNOWN_INSTANCE}")
            if int(request.ActionTypeID or 0) != REQUEST_STORAGE_COMMITMENT:
                raise BadRequest(NO_SUCH_ACTION, f"unknown Action Type ID {request.ActionTypeID}")
            try:
                action = event.action_information
            except Exception as error:
                raise BadRequest(
                    PROCESSING_FAILURE, f"action information unreadable: {type(error).__name__}"
                ) from error
            transaction, requested = requested_instances(action)
        except BadRequest as refused:
            log.warning(
                "n-action refused", extra={"calling_ae": calling_ae, "peer": peer, "reason": refused.comment}
            )
            return status(refused.status, refused.comment), None
        try:
            result = commitment_result(self.log, requested)
            event_type = SOME_FAILED if result["failed"] else ALL_COMMITTED
            self.log.record_commitment(
                transaction, calling_ae, peer, association_id(event.assoc), requested, result, event_type
            )
        except Exception:
            log.exception("storage commitment could not be recorded", extra={"transaction_uid": transaction})
            return status(PROCESSING_FAILURE, "could not be recorded; please ask again"), None
        log.info(
            "storage commitment",
            extra={
                "transaction_uid": transaction,
                "calling_ae": calling_ae,
                "committed": len(result["committed"]),
                "failed": len(result["failed"]),
            },
        )
        info = event_information(transaction, result, self.ae_title)
        threading.Thread(
            target=self._deliver,
            args=(event.assoc, calling_ae, transaction, event_type, info),
            name=f"commitment-{transaction[-8:]}",
            daemon=True,
        ).start()
        return status(SUCCESS), None

    def _deliver(self, assoc: Any, calling_ae: str, transaction: str, event_type: int, info: Dataset) -> None:
        """Runs after the N-ACTION response went out: same association first, then new ones."""
        attempts: list[Callable[[], str]] = [lambda: self._on_same(assoc, event_type, info)]
        attempts += [lambda: self._on_new(calling_ae, event_type, info)] * DELIVERY_ATTEMPTS
        delay = self.retry_s
        for number, attempt in enumerate(attempts):
            try:
                how = attempt()
            except Exception as error:
                reason = f"{type(error).__name__}: {error}"
                self._failed(transaction, reason)
                if number:  # the same association is tried once, without waiting
                    time.sleep(delay)
                    delay = min(delay * 2, 60.0)
                continue
            self.log.commitment_delivered(transaction, how)
            log.info("commitment report delivered", extra={"transaction_uid": transaction, "how": how})
            return
        log.error(
            "commitment report undeliverable",
            extra={"transaction_uid": transaction, "calling_ae": calling_ae},
        )

    def _failed(self, transaction: str, reason: str) -> None:
        try:
            self.log.commitment_failed(transaction, reason)
        except Exception:
            log.exception("could not record a delivery failure")

    def _on_same(self, assoc: Any, event_type: int, info: Dataset) -> str:
        # the reactor answers the N-ACTION after our handler returned; send_n_event_report
        # pauses it before sending, so the report follows the response
        if not assoc.is_established:
            raise ConnectionError("the requesting association has ended")
        status, _ = assoc.send_n_event_report(info, event_type, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)
        return _reported(status, "same association")

    def _on_new(self, calling_ae: str, event_type: int, info: Dataset) -> str:
        peer = self.config.peers.get(calling_ae)
        if peer is None:
            raise LookupError(f"{calling_ae!r} is not a configured peer: no address to send the report to")
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(StorageCommitmentPushModel)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        assoc = ae.associate(
            peer.host,
            peer.port,
            ae_title=peer.ae_title,
            ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)],
            evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)],
        )
        if not assoc.is_established:
            raise ConnectionError(f"association to {peer.ae_title}@{peer.host}:{peer.port} not established")
        try:
            status, _ = assoc.send_n_event_report(
                info, event_type, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE
            )
            return _reported(status, f"new association to {peer.host}:{peer.port}")
        finally:
            assoc.release()


def _reported(status: Dataset, how: str) -> str:
    if "Status" not in status:
        raise TimeoutError("no N-EVENT-REPORT response")
    if int(status.Status) != SUCCESS:
        raise RuntimeError(f"N-EVENT-REPORT answered 0x{int(status.Status):04X}")
    return how


def _nodelay(event: Any) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def storage_commitment_service(
    settings: Settings, config: DicomConfig, storage_log: StorageLog
) -> DicomService:
    scp = StorageCommitmentScp(settings, config, storage_log)
    return DicomService(
        "storage-commitment", [StorageCommitmentPushModel], [(evt.EVT_N_ACTION, scp.handle_n_action)]
    )
