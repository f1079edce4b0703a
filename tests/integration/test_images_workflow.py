"""Stored images through the workflows on the session's Temporal dev server: a batch reaches its
exam, an unmatched study waits in its own workflow until linked, and a completed exam waits for
the instances its MPPS referenced on a timer, then says which are missing. The PACS index is
built from the resulting events."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.apply_command import CommandActivities
from adapters.event_store import EventStore, open_event_store
from adapters.settings import Settings
from adapters.sql import Database
from domain.commands import (
    CompleteProcedure,
    LinkStudy,
    PerformedSeries,
    ReferencedInstance,
    StartProcedure,
    StoreInstances,
    command_from_dict,
    workflow_id_for,
)
from domain.exam import exam_id
from domain.provenance import Provenance, Source
from projections.pacs_index import PacsIndexProjection
from projections.runner import ProjectionRunner
from tests.integration.builders import place_order, provenance
from tests.integration.test_exam_workflow import eventually
from workflows.exam import ExamWorkflow
from workflows.patient import PatientWorkflow
from workflows.study import StudyWorkflow

pytestmark = pytest.mark.temporal
CT = "1.2.840.10008.5.1.4.1.1.2"
TIMEOUT_S = 1.5


@dataclass
class Radflow:
    client: Client
    task_queue: str
    store: EventStore
    settings: Settings

    async def submit(self, command: Any) -> None:
        workflow_id = workflow_id_for(command_from_dict(command) if isinstance(command, dict) else command)
        workflow_type = "StudyWorkflow" if workflow_id.startswith("study-") else "ExamWorkflow"
        await self.client.start_workflow(
            workflow_type,
            None,
            id=workflow_id,
            task_queue=self.task_queue,
            start_signal="submit",
            start_signal_args=[command if isinstance(command, dict) else command.as_dict()],
        )

    def event_types(self, accession: str) -> list[str]:
        return [type(e).__name__ for e in self.store.events_of(exam_id(accession))]


@pytest.fixture
async def radflow(temporal_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Radflow]:
    settings = Settings(data_dir=tmp_path, database_url="")
    store = open_event_store(settings)
    task_queue = f"images-{uuid.uuid4().hex[:8]}"
    activities = CommandActivities(store, None, images_timeout_s=TIMEOUT_S)
    try:
        with ThreadPoolExecutor(max_workers=4) as executor:
            async with Worker(
                temporal_env.client,
                task_queue=task_queue,
                workflows=[ExamWorkflow, PatientWorkflow, StudyWorkflow],
                activities=[activities.apply_command],
                activity_executor=executor,
            ):
                yield Radflow(temporal_env.client, task_queue, store, settings)
    finally:
        store.close()


def dicom(message_id: str) -> Provenance:
    return Provenance(
        actor="CT01",
        source=Source(kind="dicom", application="CT01", control_id=message_id, message_id=message_id),
        occurred_at="2026-11-28T10:00:00",
    )


def batch(
    study_uid: str, series_uid: str, sops: list[str], message_id: str, accession: str = ""
) -> StoreInstances:
    return StoreInstances(
        provenance=dicom(message_id),
        study_instance_uid=study_uid,
        study={
            "patient_id": "P1",
            "patient_name": "DOE^JANE",
            "accession_number": accession,
            "study_date": "20261128",
        },
        series=(
            {
                "series_instance_uid": series_uid,
                "modality": "CT",
                "series_number": "1",
                "instances": [
                    {
                        "sop_instance_uid": s,
                        "sop_class_uid": CT,
                        "instance_number": str(n),
                        "path": f"/d/{s}",
                        "size": 1,
                    }
                    for n, s in enumerate(sops, start=1)
                ],
            },
        ),
        accession=accession,
        calling_ae="CT01",
    )


async def started_and_completed(radflow: Radflow, acc: str, series_uid: str, referenced: list[str]) -> None:
    await radflow.submit(place_order(acc, f"hl7:{acc}"))
    await radflow.submit(
        StartProcedure(provenance=dicom(f"mpps:{acc}:1"), accession=acc, mpps_uid=f"2.25.{len(acc)}")
    )
    await radflow.submit(
        CompleteProcedure(
            provenance=dicom(f"mpps:{acc}:2"),
            accession=acc,
            mpps_uid=f"2.25.{len(acc)}",
            series=(
                PerformedSeries(series_uid, instances=tuple(ReferencedInstance(CT, s) for s in referenced)),
            ),
        )
    )


async def test_images_before_the_wait_ends_complete_the_exam_without_a_missing_event(
    radflow: Radflow,
) -> None:
    acc, study, series = f"IMG{uuid.uuid4().hex[:6]}", f"2.25.{uuid.uuid4().int}", "1.9.1"
    await started_and_completed(radflow, acc, series, ["1.9.1.1", "1.9.1.2"])
    await radflow.submit(batch(study, series, ["1.9.1.1", "1.9.1.2"], f"dicom-batch:{acc}", accession=acc))
    await eventually(lambda: _async("ImagesCompleted" in radflow.event_types(acc)))
    types = radflow.event_types(acc)
    assert types.count("ImagesStored") == 1 and "ImagesFoundMissing" not in types


async def test_a_completed_exam_says_which_instances_are_missing_when_the_wait_runs_out(
    radflow: Radflow,
) -> None:
    acc, study, series = f"MIS{uuid.uuid4().hex[:6]}", f"2.25.{uuid.uuid4().int}", "1.9.2"
    await started_and_completed(radflow, acc, series, ["1.9.2.1", "1.9.2.2"])
    await radflow.submit(batch(study, series, ["1.9.2.1"], f"dicom-batch:{acc}:1", accession=acc))
    await eventually(lambda: _async("ImagesFoundMissing" in radflow.event_types(acc)), timeout=TIMEOUT_S + 15)
    missing = [e for e in radflow.store.events_of(exam_id(acc)) if type(e).__name__ == "ImagesFoundMissing"]
    assert missing[0].missing == [{"series_instance_uid": "1.9.2", "sop_instance_uid": "1.9.2.2"}]  # type: ignore[attr-defined]
    assert missing[0].provenance["source"]["kind"] == "timer"  # type: ignore[attr-defined]
    # the straggler arrives later: complete after all, and the history keeps both
    await radflow.submit(batch(study, series, ["1.9.2.2"], f"dicom-batch:{acc}:2", accession=acc))
    await eventually(lambda: _async("ImagesCompleted" in radflow.event_types(acc)))


async def test_an_unmatched_study_waits_in_its_own_workflow_and_a_link_attaches_it_to_the_exam(
    radflow: Radflow,
) -> None:
    acc, study, series = f"LNK{uuid.uuid4().hex[:6]}", f"2.25.{uuid.uuid4().int}", "1.9.3"
    await radflow.submit(batch(study, series, ["1.9.3.1", "1.9.3.2"], f"dicom-batch:{acc}:u"))
    await radflow.submit(place_order(acc, f"hl7:{acc}"))
    await radflow.submit(
        LinkStudy(
            provenance=provenance(f"dicom-batch:{acc}:link"),
            study_instance_uid=study,
            accession=acc,
            reason="late order",
        )
    )
    await eventually(lambda: _async("ImagesStored" in radflow.event_types(acc)))

    db = Database.for_file(radflow.settings, radflow.settings.projections_sqlite_path)
    runner = ProjectionRunner(radflow.store, db, PacsIndexProjection())
    runner.create_schema()
    runner.catch_up()
    row = db.query("SELECT * FROM pacs_studies WHERE study_instance_uid = ?", (study,))[0]
    assert (row["linked_accession"], row["instance_count"], row["series_count"], row["modalities"]) == (
        acc,
        2,
        1,
        "CT",
    )
    instances = db.query(
        "SELECT sop_instance_uid, instance_number FROM pacs_instances WHERE study_instance_uid = ? ORDER BY 1",
        (study,),
    )
    assert [(i["sop_instance_uid"], i["instance_number"]) for i in instances] == [
        ("1.9.3.1", "1"),
        ("1.9.3.2", "2"),
    ]
    db.close()


async def _async(value: bool) -> bool:
    return value
