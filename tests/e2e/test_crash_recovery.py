"""Nothing acknowledged is lost and nothing is applied twice when radflow's processes are killed
with SIGKILL: the worker in the middle of a burst, the listener right after its ACKs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Stack, free_port, make_stack
from tests.e2e.mllp import MllpConnection, cancel, history_types, log_rows, order, parse_ack

N_ORDERS = 30
CANCELLED = {2, 9, 16, 23, 29}  # indexes of the orders that are then cancelled
RECOVERY_S = 120.0  # a killed worker's in-flight activity is retried only after its timeout


@pytest.fixture
def bare(tmp_path: Path, temporal_address: str) -> Iterator[Stack]:
    """A stack whose parts each test starts itself."""
    s = make_stack(tmp_path, temporal_address)
    try:
        yield s
    finally:
        s.stop_all()


def _start(stack: Stack, *parts: str) -> None:
    for part in parts:
        stack.start(part)
    if "listen" in parts:
        stack.wait_for_port(stack.mllp_port)
    if "api" in parts:
        stack.wait_for_port(stack.http_port)


def _send_burst(stack: Stack, tag: str) -> dict[str, str]:
    """N orders, then cancels of some of them, over two connections; every ACK must be AA.
    Returns accession -> the state each exam must end in."""
    accessions = [f"{tag}{n:03d}" for n in range(N_ORDERS)]
    with MllpConnection(stack.mllp_port) as first, MllpConnection(stack.mllp_port) as second:
        for n, accession in enumerate(accessions):
            conn = first if n % 2 else second
            ack = parse_ack(conn.request(order(accession, f"O-{accession}", patient_id=f"P{n}").encode()))
            assert (ack.code, ack.control_id) == ("AA", f"O-{accession}")
        for n in sorted(CANCELLED):
            ack = parse_ack(first.request(cancel(accessions[n], f"CA-{accessions[n]}").encode()))
            assert (ack.code, ack.control_id) == ("AA", f"CA-{accessions[n]}")
    return {a: ("cancelled" if n in CANCELLED else "ordered") for n, a in enumerate(accessions)}


def _states(stack: Stack, tag: str) -> dict[str, str]:
    body = stack.get("/api/exams", limit=500).json()
    return {e["accession"]: e["state"] for e in body["exams"] if e["accession"].startswith(tag)}


def _assert_applied_exactly_once(stack: Stack, expected: dict[str, str], tag: str) -> None:
    stack.wait_until(lambda: _states(stack, tag) == expected, timeout=RECOVERY_S, interval=0.2)
    for accession, state in expected.items():
        events = history_types(stack, accession)
        wanted = ["ExamOrdered"] + (["ExamCancelled"] if state == "cancelled" else [])
        assert events == wanted, (accession, events)
    # the message log agrees: every accepted message relayed and its outcome recorded once
    stack.wait_until(
        lambda: all(r["relayed_at"] and r["applied_status"] for r in log_rows(stack, "status = 'accepted'")),
        timeout=RECOVERY_S,
    )
    rows = log_rows(stack, "status = 'accepted'")
    assert len(rows) == len(expected) + len(CANCELLED)
    # 'duplicate' is what a retried activity reports after its first attempt was killed
    assert {r["applied_status"] for r in rows} <= {"applied", "duplicate"}, rows


def test_a_worker_killed_mid_burst_ends_with_every_acknowledged_order_applied_exactly_once(
    bare: Stack,
) -> None:
    _start(bare, "listen", "api")
    expected = _send_burst(bare, "WK")
    # no worker yet: the relay hands everything to Temporal, nothing is applied
    bare.wait_until(lambda: all(r["relayed_at"] for r in log_rows(bare, "status = 'accepted'")))
    assert _states(bare, "WK") == {}

    bare.start("worker")
    bare.wait_until(lambda: len(_states(bare, "WK")) >= N_ORDERS // 3, timeout=30, interval=0.01)
    bare.stop("worker", kill=True)
    at_kill = _states(bare, "WK")  # the projections run in the worker: frozen until it is back
    print(f"\nworker killed with {len(at_kill)}/{N_ORDERS} exams visible")
    assert len(at_kill) < len(expected), "the kill came too late to interrupt anything"

    bare.start("worker")
    started = time.monotonic()
    _assert_applied_exactly_once(bare, expected, "WK")
    print(f"recovered in {time.monotonic() - started:.1f}s after the restart")


def test_a_listener_killed_right_after_its_acks_relays_the_rest_after_restart_and_doubles_nothing(
    bare: Stack,
) -> None:
    _start(bare, "worker", "listen", "api")
    expected = _send_burst(bare, "LK")
    bare.stop("listen", kill=True)  # the relay is most likely mid-way through the burst
    unrelayed = len(log_rows(bare, "status = 'accepted' AND relayed_at IS NULL"))
    print(f"\nlistener killed with {unrelayed} accepted messages not yet marked relayed")

    _start(bare, "listen")
    _assert_applied_exactly_once(bare, expected, "LK")


def test_acked_messages_wait_in_the_log_through_a_listener_crash_until_temporal_is_reachable(
    bare: Stack,
) -> None:
    _start(bare, "worker", "api")
    real_env = bare.env
    bare.env = {**real_env, "RADFLOW_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"}  # nobody there
    _start(bare, "listen")
    bare.env = real_env
    expected = _send_burst(bare, "TK")
    assert len(log_rows(bare, "status = 'accepted' AND relayed_at IS NULL")) == len(expected) + len(CANCELLED)
    bare.stop("listen", kill=True)
    assert _states(bare, "TK") == {}

    _start(bare, "listen")  # now with the real Temporal: the relay resumes from the log
    _assert_applied_exactly_once(bare, expected, "TK")


def test_instances_stored_by_a_listener_killed_mid_association_reach_their_exam_after_restart(
    bare: Stack, tmp_path: Path
) -> None:
    """The C-STORE successes were sent, then the listener died before the association ended (so
    before any batch): the restarted listener's flusher batches what the log holds, once."""
    from pydicom.uid import CTImageStorage
    from pynetdicom import AE

    from tests.dicom_builders import StudySpec, ct_image
    from tests.dicom_scu import associate
    from tests.e2e.test_storage import indexed

    _start(bare, "worker", "listen", "api")
    bare.wait_for_port(bare.dicom_port)
    acc = "CRASHIMG1"
    with MllpConnection(bare.mllp_port) as conn:
        assert parse_ack(conn.request(order(acc, f"O-{acc}").encode())).code == "AA"
    study = StudySpec(acc)
    series = "1.2.826.0.1.3680043.8.498.1"
    ae = AE(ae_title="CT01")
    ae.add_requested_context(CTImageStorage)
    assoc = associate(ae, bare.dicom_port)
    assert assoc.is_established
    for number in range(1, 4):
        assert assoc.send_c_store(ct_image(study, series, number)).Status == 0x0000
    bare.stop("listen", kill=True)  # SIGKILL with the association still open
    assoc.abort()

    _start(bare, "listen")
    bare.wait_until(lambda: indexed(bare, study.study_instance_uid) == 3, timeout=30)
    bare.wait_until(lambda: "ImagesStored" in history_types(bare, acc), timeout=30)
    assert history_types(bare, acc).count("ImagesStored") == 1
