"""Patient merge (A40) and identifier change (A47) on the Patient aggregate, and the other new
ADT facts (discharge, cancelled admission)."""

from __future__ import annotations

import pytest

from domain.commands import PatientDemographics
from domain.errors import PatientMergedAway
from domain.patient import Patient
from tests.unit.exam_builders import provenance


def patient(pid: str) -> Patient:
    return Patient.register(PatientDemographics(id=pid, issuer="HOSP", name="DOE^JANE"), "O", provenance())


def names(p: Patient) -> list[str]:
    return [type(e).__name__ for e in p.collect_events()]


def test_a_merge_records_on_both_identities_and_a_repeat_records_nothing() -> None:
    survivor, prior = patient("P1"), patient("P2")
    names(survivor), names(prior)
    assert survivor.absorb(prior, prior.key, "merge", provenance()) is True
    assert names(survivor) == ["PatientsMerged"]
    assert names(prior) == ["PatientMergedInto"]
    assert prior.merged_into == survivor.key
    assert survivor.absorb(prior, prior.key, "merge", provenance()) is False
    assert names(survivor) == [] and names(prior) == []


def test_a_prior_merged_elsewhere_or_into_itself_is_refused() -> None:
    first, second, prior = patient("P1"), patient("P3"), patient("P2")
    first.absorb(prior, prior.key, "merge", provenance())
    with pytest.raises(PatientMergedAway, match="merged into HOSP|P1"):
        second.absorb(prior, prior.key, "merge", provenance())
    with pytest.raises(PatientMergedAway):
        first.absorb(first, first.key, "merge", provenance())


def test_a_merged_away_identity_takes_no_updates_and_a_prior_never_registered_is_remembered() -> None:
    survivor, prior = patient("P1"), patient("P2")
    survivor.absorb(prior, prior.key, "merge", provenance())
    with pytest.raises(PatientMergedAway):
        prior.update(PatientDemographics(id="P2", issuer="HOSP", name="X^Y"), "", provenance())
    with pytest.raises(PatientMergedAway):
        prior.discharge("", provenance())
    assert survivor.absorb(None, "HOSP|P9", "identifier_change", provenance()) is True
    assert survivor.absorb(None, "HOSP|P9", "identifier_change", provenance()) is False


def test_discharge_and_cancelled_admission_clear_the_patient_class() -> None:
    p = patient("P1")
    p.discharge("2024-03-16T10:00:00", provenance())
    assert p.patient_class == ""
    p.cancel_admission(provenance())
    assert names(p)[-2:] == ["PatientDischarged", "AdmissionCancelled"]
