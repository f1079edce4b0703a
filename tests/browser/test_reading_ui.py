"""The web UI in a real browser against the real stack: orders over MLLP, MPPS from a modality,
then a radiologist in headless Chromium claims from the worklist, writes, signs, and a python-hl7
peer receives the ORU^R01; a second radiologist's claim is refused on screen with the API's
reason. Screenshots land in the test's tmp folder (printed) for a person to look at."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import pytest
from playwright.sync_api import expect
from pydicom.uid import generate_uid

from tests.browser.conftest import TABLET, assert_screenshot
from tests.conftest import TEST_PASSWORD, Stack, running_stack
from tests.e2e.mllp import exchange, order, parse_ack, wait_for_exam
from tests.hl7_peer import PeerServer, destination_yaml
from tests.integration.mpps_builders import ended, in_progress, mpps_scu

TECHNIQUE = "Axial CT of the head without contrast."


@pytest.fixture(scope="module")
def peer() -> Iterator[PeerServer]:
    with PeerServer() as server:
        yield server


@pytest.fixture(scope="module")
def radflow(
    tmp_path_factory: pytest.TempPathFactory, temporal_address: str, peer: PeerServer
) -> Iterator[Stack]:
    config = tmp_path_factory.mktemp("ui-config")
    (config / "destinations.yaml").write_text(destination_yaml("REPORTS", peer.port, events=("report",)))
    (config / "reporting.yaml").write_text(
        # targets of about a second: the workflows' own timers breach both exams while setting up
        "turnaround_minutes: {STAT: 0.02, ROUTINE: 0.02}\n"
        f"templates:\n  CTHEAD:\n    technique: {TECHNIQUE}\n"
    )
    with running_stack(
        tmp_path_factory.mktemp("ui-stack"), temporal_address, {"RADFLOW_HL7_CONFIG_DIR": str(config)}
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("screenshots")
    print(f"\nscreenshots in {folder}")
    return folder


def performed(stack: Stack, acc: str, patient: str, priority: str, ended_at: str) -> None:
    """An order over MLLP, then the modality's MPPS: in progress, completed at `ended_at` (HHMMSS)."""
    ack = parse_ack(
        exchange(stack.mllp_port, order(acc, f"O-{acc}", patient_id=patient, priority=priority).encode())
    )
    assert ack.code == "AA", ack.raw
    wait_for_exam(stack, acc)
    step = generate_uid()
    with mpps_scu(stack.dicom_port, calling_ae="CT01") as scu:
        assert scu.create(in_progress(acc, patient_id=patient), step).status == 0x0000
        wait_for_exam(stack, acc, "in_progress")
        completion = ended("COMPLETED", [])
        completion.PerformedProcedureStepEndTime = ended_at
        assert scu.set(completion, step).status == 0x0000
    wait_for_exam(stack, acc, "completed")


def worklist(stack: Stack) -> list[dict[str, Any]]:
    response = stack.get("/api/reading/worklist")
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def report(stack: Stack, acc: str) -> dict[str, Any]:
    response = stack.get(f"/api/exams/{acc}/report")
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def orus_for(peer: PeerServer, acc: str) -> list[hl7.Message]:
    return [
        m
        for m in list(peer.received)
        if str(m["MSH.F9"]).startswith("ORU") and str(m.segment("OBR")[18]) == acc
    ]


def new_page(chromium: Any, stack: Stack, user: str) -> Any:
    """A tablet-sized tab of its own (own localStorage and cookies): one radiologist, signed in
    through the sign-in page (a page asked for first sends them there and back)."""
    stack.add_user(user, ("radiologist",))
    context = chromium.new_context(viewport=TABLET, base_url=stack.base_url)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.errors = []  # uncaught script errors fail the test
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto("/ui/reading")
    page.wait_for_url("**/ui/login?next=*")
    page.fill("#login-username", user)
    page.fill("#login-password", TEST_PASSWORD)
    page.click("#login button[type=submit]")
    page.wait_for_url("**/ui/reading")
    assert page.text_content("#whoami-name") == user
    return page


def assert_no_sideways_scroll(page: Any, width: int) -> None:
    """Nothing wider than the screen (a tablet cannot comfortably scroll sideways); scrolled
    back to the top so the full-page screenshot that follows starts at the banner."""
    scroll_width = page.evaluate("document.scrollingElement.scrollWidth")
    assert scroll_width <= width, f"{page.url} is {scroll_width}px wide on a {width}px screen"
    page.evaluate("window.scrollTo(0, 0)")


@pytest.fixture(scope="module")
def exams(radflow: Stack) -> dict[str, str]:
    """One patient: a routine CT done first (the prior), then a STAT CT; both await reading.
    Their turnaround targets are a second long, so both are breached by their workflows' timers."""
    tag = uuid.uuid4().hex[:6].upper()
    patient = f"MRN{tag}"
    prior, stat = f"UIR{tag}", f"UIS{tag}"
    performed(radflow, prior, patient, "R", ended_at="102000")
    performed(radflow, stat, patient, "S", ended_at="103000")
    radflow.wait_until(
        lambda: {prior, stat} <= {i["accession"] for i in worklist(radflow) if i["turnaround_breached"]},
        timeout=20,
    )
    return {"prior": prior, "stat": stat, "patient": patient}


def test_a_radiologist_claims_writes_and_signs_in_the_browser_and_the_peer_gets_the_oru(
    chromium_path: Path, radflow: Stack, peer: PeerServer, exams: dict[str, str], chromium: Any, shots: Path
) -> None:
    stat, prior = exams["stat"], exams["prior"]
    house = new_page(chromium, radflow, "dr.house")
    wilson = new_page(chromium, radflow, "dr.wilson")  # opened before the claim: a stale page

    # the worklist: STAT first, with the patient's earlier exam as its prior
    rows = house.locator("#worklist-rows tr[data-accession]")
    rows.first.wait_for()
    order_on_screen = [r.get_attribute("data-accession") for r in rows.all()]
    assert order_on_screen.index(stat) < order_on_screen.index(prior)
    stat_row = house.locator(f'tr[data-accession="{stat}"]')
    assert "STAT" in stat_row.locator(".prio").inner_text()
    expect(stat_row.locator(".badge.breach")).to_have_text("SLA breached")
    assert "1 prior" in stat_row.locator("details.priors summary").inner_text()
    house.screenshot(path=shots / "worklist.png", full_page=True)
    assert_screenshot(shots / "worklist.png", TABLET["width"])
    assert_no_sideways_scroll(house, TABLET["width"])

    stat_row.locator('button[data-action="claim"]').click()
    house.locator(f'tr[data-accession="{stat}"] [data-claimed-by="dr.house"]').wait_for()
    assert "claimed by you" in house.locator(f'tr[data-accession="{stat}"] .claim-cell').inner_text()

    # the second radiologist, on a page loaded before, tries too: the API's reason on screen
    wilson.locator(f'tr[data-accession="{stat}"] button[data-action="claim"]').click()
    expect(wilson.locator("#flash")).to_have_text(
        re.compile(rf"Could not claim {stat}: claimed by dr\.house until")
    )
    wilson.screenshot(path=shots / "claim-refused.png")
    assert_screenshot(shots / "claim-refused.png", TABLET["width"])
    assert_no_sideways_scroll(wilson, TABLET["width"])
    assert report(radflow, stat)["claimed_by"] == "dr.house"  # nothing changed

    # the exam page: banner, template, autosave
    house.locator(f'tr[data-accession="{stat}"] a.button').click()
    house.wait_for_url(f"**/ui/exams/{stat}")
    assert house.locator("#patient-name").inner_text() == "DOE, JANE"
    assert exams["patient"] in house.locator("#patient-id").inner_text()
    assert house.locator("#patient-birth").inner_text() == "1971-03-04"
    assert house.locator("#patient-sex").inner_text() == "F"
    assert house.locator("#exam-state").inner_text() == "completed"
    # the claim line is filled by the page's script after its own request: wait for it
    expect(house.locator("#claim-state")).to_have_text(re.compile(r"^Claimed by you"))
    technique = house.locator('textarea[name="technique"]')
    house.wait_for_function("document.querySelector('textarea[name=technique]').value.length > 0")
    assert technique.input_value() == TECHNIQUE
    assert prior in house.locator(f'#priors li[data-accession="{prior}"]').inner_text()

    house.fill('textarea[name="findings"]', "No intracranial haemorrhage. No mass effect.")
    house.fill('textarea[name="impression"]', "Normal CT of the head.")
    house.wait_for_function(
        "/^saved \\d\\d:\\d\\d:\\d\\d$/.test(document.getElementById('save-state').textContent)"
    )
    draft = radflow.wait_until(lambda: (r := report(radflow, stat))["draft"] and r["draft"])
    assert draft["author"] == "dr.house" and draft["sections"]["impression"] == "Normal CT of the head."
    assert_no_sideways_scroll(house, TABLET["width"])
    house.screenshot(path=shots / "exam-draft.png", full_page=True)
    assert_screenshot(shots / "exam-draft.png", TABLET["width"])

    # sign: the exam is reported, the peer gets the final ORU, the page shows it delivered
    house.click('button[data-kind="final"]')
    house.locator("#report-status", has_text="final").wait_for()
    house.locator("#exam-state", has_text="reported").wait_for()
    peer_got = radflow.wait_until(lambda: orus_for(peer, stat), timeout=20)
    assert str(peer_got[0].segment("OBR")[25]) == "F"
    house.locator('#deliveries tr[data-destination="REPORTS"][data-status="delivered"]').wait_for(
        timeout=20_000
    )
    assert "ORU^R01" in house.locator('#deliveries tr[data-destination="REPORTS"]').inner_text()
    assert "Final report signed" in house.locator("#timeline").inner_text()
    assert "final" in house.locator('#revisions li[data-kind="final"]').inner_text()
    expect(house.locator('button[data-kind="addendum"]')).to_be_enabled()
    expect(house.locator('button[data-kind="final"]')).to_be_disabled()
    expect(house.locator("#addendum-box")).to_be_visible()
    assert_no_sideways_scroll(house, TABLET["width"])
    house.screenshot(path=shots / "exam-signed.png", full_page=True)
    assert_screenshot(shots / "exam-signed.png", TABLET["width"])

    # tablet in portrait: one column, the delivery/timeline column under the editor
    house.set_viewport_size({"width": 768, "height": 1024})
    editor = house.locator("#report-form").bounding_box()
    side = house.locator("aside.side-col").bounding_box()
    assert editor and side and side["y"] >= editor["y"] + editor["height"], (editor, side)
    assert_no_sideways_scroll(house, 768)
    house.screenshot(path=shots / "exam-portrait.png", full_page=True)
    assert_screenshot(shots / "exam-portrait.png", 768)

    assert house.errors == [] and wilson.errors == []
    for page in (house, wilson):
        page.context.close()


def test_a_refusal_on_the_exam_page_and_a_critical_result_acknowledged_in_the_browser(
    chromium_path: Path, radflow: Stack, peer: PeerServer, exams: dict[str, str], chromium: Any, shots: Path
) -> None:
    acc = exams["prior"]
    house = new_page(chromium, radflow, "dr.house")
    wilson = new_page(chromium, radflow, "dr.wilson")

    # the filters are a plain GET form: no MR awaits; CT brings the exam back
    house.goto("/ui/reading?modality=MR")
    expect(house.locator("#worklist-rows")).to_have_text("Nothing awaits a report.")
    house.select_option('#filters select[name="modality"]', "CT")
    house.click('#filters button[type="submit"]')
    house.wait_for_url("**/ui/reading?modality=CT*")
    house.locator(f'tr[data-accession="{acc}"]').wait_for()

    house.goto(f"/ui/exams/{acc}")
    expect(house.locator("#priors")).to_have_text("No earlier exams of this patient.")  # the STAT came later
    house.click("#claim")
    house.locator("#claim-state", has_text="Claimed by you").wait_for()

    # another radiologist writes and signs on the same exam: refused, the reason on screen
    wilson.goto(f"/ui/exams/{acc}")
    wilson.locator("#claim-state", has_text="Claimed by dr.house").wait_for()
    wilson.fill('textarea[name="impression"]', "Not mine to write.")
    wilson.click('button[data-kind="final"]')
    expect(wilson.locator("#flash")).to_have_text(
        re.compile(r"Refused: claimed by dr\.house until \d\d:\d\d")
    )
    expect(wilson.locator("#save-state")).to_contain_text("not saved")
    after = report(radflow, acc)
    assert after["revisions"] == [] and after["claimed_by"] == "dr.house" and after["draft"] is None

    # the claimant issues a critical preliminary report; the chain waits for acknowledgement
    house.fill('textarea[name="findings"]', "Acute subdural haematoma, 8 mm, with 4 mm midline shift.")
    house.fill('textarea[name="impression"]', "Acute subdural haematoma.")
    house.check("#critical")
    house.click('button[data-kind="preliminary"]')
    house.locator("#report-status", has_text="preliminary").wait_for()
    panel = house.locator("#critical-panel")
    expect(panel).to_be_visible()
    expect(panel).to_contain_text("Awaiting acknowledgement from")
    expect(house.locator("#addendum-box")).to_be_hidden()  # nothing signed to add to yet
    assert house.locator('#revisions li[data-kind="preliminary"] .badge.critical').is_visible()
    oru = radflow.wait_until(lambda: orus_for(peer, acc), timeout=20)[0]
    assert str(oru.segment("OBR")[25]) == "P"
    house.locator('#deliveries tr[data-destination="REPORTS"][data-status="delivered"]').wait_for(
        timeout=20_000
    )
    assert_no_sideways_scroll(house, TABLET["width"])
    house.screenshot(path=shots / "exam-critical.png", full_page=True)
    assert_screenshot(shots / "exam-critical.png", TABLET["width"])

    # the worklist flags it until the report is final
    house.goto("/ui/reading")
    row = house.locator(f'tr[data-accession="{acc}"]')
    expect(row.locator(".badge.critical")).to_have_text("critical · awaiting")
    expect(row.locator(".badge.status")).to_have_text("preliminary")

    # the referring physician's acknowledgement, from another browser
    wilson.reload()
    expect(wilson.locator("#critical-panel")).to_be_visible()
    wilson.fill("#ack-note", "Told by phone, patient to theatre")
    wilson.click("#ack")
    expect(wilson.locator("#critical-state")).to_have_text("Acknowledged by dr.wilson.")
    expect(wilson.locator("#timeline")).to_contain_text("Critical result acknowledged by dr.wilson")
    assert report(radflow, acc)["critical"]["state"] == "acknowledged"

    assert house.errors == [] and wilson.errors == []
    for page in (house, wilson):
        page.context.close()
