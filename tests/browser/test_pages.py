"""The server-rendered side of the web UI without a browser: the shell, the pages' 404, the
assets, escaping, and how events read on the timeline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from adapters.settings import Settings
from api.app import create_app
from api.web import NAV, birth_date, person_name, timeline_entry
from tests.conftest import authorise, authorised_client


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with authorised_client(create_app(Settings(data_dir=tmp_path)), "dr.cuddy", ("radiologist",)) as test_client:
        yield test_client


def test_the_worklist_page_has_the_shell_its_filters_and_the_signed_in_user(client: TestClient) -> None:
    page = client.get("/ui/reading", params={"modality": "MR", "body_part": "KNEE", "status": "all"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for label, href in NAV:
        assert f'href="{href}"' in page.text and label in page.text
    assert '<a href="/ui/reading" aria-current="page">' in page.text
    assert '<strong id="whoami-name">dr.cuddy</strong>' in page.text and 'data-user="dr.cuddy"' in page.text
    assert 'action="/ui/logout"' in page.text
    assert "<option selected>MR</option>" in page.text
    assert 'name="body_part" value="KNEE"' in page.text
    assert '<option value="all" selected>' in page.text
    assert '<script src="/ui/static/ui.js">' in page.text


def test_what_a_person_typed_is_escaped_not_run(client: TestClient) -> None:
    client.headers.update(authorise(client.app, '"><script>alert(1)</script>', ("radiologist",)))
    page = client.get("/ui/reading", params={"service": "<img src=x onerror=alert(2)>"})
    assert "<script>alert(1)" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;alert(1)" in page.text and "&lt;img src=x onerror=alert(2)&gt;" in page.text


def test_an_unknown_exam_is_a_404_page_in_the_shell(client: TestClient) -> None:
    page = client.get("/ui/exams/NO-SUCH-EXAM")
    assert page.status_code == 404
    assert "No exam NO-SUCH-EXAM" in page.text and 'id="whoami"' in page.text


def test_only_the_ui_assets_are_served(client: TestClient) -> None:
    script = client.get("/ui/static/ui.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/static/ui.css").headers["content-type"].startswith("text/css")
    for name in ("hl7_messages.html", "..%2Fweb.py", "nothing.js"):
        assert client.get(f"/ui/static/{name}").status_code == 404
    assert client.get("/ui", follow_redirects=False).headers["location"] == "/ui/reading"


def test_names_and_birth_dates_read_as_people_write_them() -> None:
    assert person_name("DOE^JANE^M") == "DOE, JANE M"
    assert person_name("DOE") == "DOE"
    assert person_name("") == ""
    assert birth_date("19710304") == "1971-03-04"
    assert birth_date("1971") == "1971"


class ReadingClaimed:
    def __init__(self) -> None:
        self.radiologist = "dr.house"
        self.expires_at = "2026-12-05T05:30:00+00:00"
        self.provenance = {
            "actor": "dr.house",
            "occurred_at": "2026-12-05T05:00:00+00:00",
            "source": {"kind": "api"},
        }


class ReportIssued:
    def __init__(self) -> None:
        self.revision = {"revision": 2, "kind": "addendum", "result_status": "C", "critical": True}
        self.provenance = {
            "actor": "dr.house",
            "occurred_at": "2026-12-05T06:00:00+00:00",
            "source": {"kind": "api"},
        }


class ExamImagesCompleted:
    def __init__(self) -> None:
        self.provenance = {"occurred_at": "2026-12-05T04:00:00+00:00", "source": {"application": "CT01"}}


def test_timeline_entries_say_who_did_what() -> None:
    claimed = timeline_entry(ReadingClaimed())
    assert claimed["title"] == "Claimed by dr.house"
    assert claimed["detail"] == "until 2026-12-05 05:30:00 UTC"
    assert (claimed["actor"], claimed["source"]) == ("dr.house", "api")
    issued = timeline_entry(ReportIssued())
    assert issued["title"] == "Addendum report signed"
    assert issued["detail"] == "revision 2, OBR-25 C · critical"
    other = timeline_entry(ExamImagesCompleted())
    assert (other["title"], other["actor"]) == ("Images completed", "CT01")
