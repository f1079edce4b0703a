"""MPPS datasets as a modality builds them (PS3.4 Table F.7.2-1), and a pynetdicom SCU that
sends them: the peer side of radflow's MPPS SCP in the integration and end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def in_progress(accession: str | None, study_uid: str = "", patient_id: str = "P1") -> Dataset:
    """An N-CREATE attribute list; `accession=None` leaves Accession Number out (unscheduled)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "DOE^JANE"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19800102"
    ds.PatientSex = "F"
    ds.ReferencedPatientSequence = []
    scheduled = Dataset()
    if accession is not None:
        scheduled.AccessionNumber = accession
    scheduled.StudyInstanceUID = study_uid or generate_uid()
    scheduled.RequestedProcedureID = "RP1"
    scheduled.ScheduledProcedureStepID = "SPS1"
    scheduled.ReferencedStudySequence = []
    scheduled.RequestedProcedureDescription = "CT head without contrast"
    ds.ScheduledStepAttributesSequence = [scheduled]
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "CT01"
    ds.PerformedStationName = "CT room 1"
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = "20261128"
    ds.PerformedProcedureStepStartTime = "101500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = "CT head"
    ds.PerformedProcedureTypeDescription = ""
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.StudyID = "1"
    ds.PerformedProtocolCodeSequence = []
    ds.PerformedSeriesSequence = []
    return ds


def series_item(series_uid: str, instance_uids: Sequence[str]) -> Dataset:
    item = Dataset()
    item.SeriesInstanceUID = series_uid
    item.SeriesDescription = "axial 5mm"
    item.ProtocolName = "HEAD"
    item.RetrieveAETitle = "RADFLOW"
    item.OperatorsName = "TECH^ONE"
    item.PerformingPhysicianName = ""
    references = []
    for uid in instance_uids:
        ref = Dataset()
        ref.ReferencedSOPClassUID = CT_IMAGE
        ref.ReferencedSOPInstanceUID = uid
        references.append(ref)
    item.ReferencedImageSequence = references
    item.ReferencedNonImageCompositeSOPInstanceSequence = []
    return item


def ended(
    status: str, series: list[Dataset] | None = None, reason: tuple[str, str, str] | None = None
) -> Dataset:
    """An N-SET modification list that ends the step (COMPLETED or DISCONTINUED)."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20261128"
    ds.PerformedProcedureStepEndTime = "103000"
    ds.PerformedSeriesSequence = series or []
    if reason is not None:
        code = Dataset()
        code.CodeValue, code.CodeMeaning, code.CodingSchemeDesignator = reason
        ds.PerformedProcedureStepDiscontinuationReasonCodeSequence = [code]
    return ds


@dataclass(frozen=True)
class Reply:
    status: int
    comment: str
    error_id: int | None
    attributes: Dataset | None


class MppsScu:
    """One association to an MPPS SCP; every request answers with its status, comment and id."""

    def __init__(self, assoc: Association) -> None:
        self.assoc = assoc

    def create(self, ds: Dataset | None, uid: str | None) -> Reply:
        status, attributes = self.assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
        return _reply(status, attributes)

    def set(self, ds: Dataset, uid: str) -> Reply:
        status, attributes = self.assoc.send_n_set(ds, ModalityPerformedProcedureStep, uid)
        return _reply(status, attributes)


def _reply(status: Dataset, attributes: Dataset | None) -> Reply:
    assert "Status" in status, "no response from the SCP (timeout, abort or invalid reply)"
    return Reply(int(status.Status), str(status.get("ErrorComment", "")), status.get("ErrorID"), attributes)


@contextmanager
def mpps_scu(port: int, calling_ae: str = "CT01", called_ae: str = "RADFLOW") -> Iterator[MppsScu]:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(ModalityPerformedProcedureStep)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established, f"association to 127.0.0.1:{port} was not established"
    try:
        yield MppsScu(assoc)
    finally:
        assoc.release()
