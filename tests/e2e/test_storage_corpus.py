"""Every DICOM file of the shared corpus goes to one running radflow with DCMTK's storescu, one
storescu run (one association, its own calling AE) per file, and each file ends in exactly one
category, read from radflow's side (its storage log) and from storescu's output:

- stored: radflow holds the instance, and the data set it wrote is byte for byte the one that
  came over the wire;
- refused: radflow answered the C-STORE with a failure status and logged the reason;
- not sent: storescu sent no C-STORE (it could not read the file, found no SOP class in it, or no
  presentation context was accepted), with storescu's words for why.

How the files are sent, and why:

- storescu proposes, for each file, its SOP class in the file's own transfer syntax first and
  the uncompressed ones as fallbacks (a DCMTK association profile written per file, `-xf`).
  storescu's default proposes only uncompressed transfer syntaxes for ~120 storage classes, which
  fills the 128 presentation contexts: every compressed file is then "converted" (impossible
  without codecs, so never sent) and SOP classes missing from DCMTK's list get no context at all.
  The `-xs`/`-xy`/... switches cover one compressed syntax each and not all of them (JPEG lossless
  process 14, 1.2.840.10008.1.2.4.57, has none); a profile names the exact one. `+sd` is not used:
  one file per run is what attributes a refusal to a single file.
- storescu re-encodes what it sends (explicit-length sequences, recalculated group lengths), so a
  data set often leaves storescu with other bytes than the file holds. radflow's promise is to
  store what it received, byte-exact; a relay between storescu and radflow records the bytes
  each association carried, and the stored data set is compared with those. Whether they also
  equal the file's own data set is reported per file.
- Modality worklist items (`.wl`), MWL queries and MPPS data sets are DICOM files but not storage
  objects. They are sent like the rest rather than skipped: whether a file can be stored is for
  the storage SCU to decide, as at a site where someone points a modality at the wrong folder.
  storescu refuses them before associating (no SOP Class UID in the data set); the report says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import UID

from tests.conftest import Stack, running_stack
from tests.e2e.test_storage import query

pytestmark = pytest.mark.corpus

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
# explicit VR elements with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2)
LONG_VRS = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"}
STORE_TIMEOUT_S = 60


# --- the corpus, read independently of radflow ------------------------------------------------


@dataclass
class Candidate:
    """A corpus file that looks like DICOM: `DICM` at offset 128, or a SOP Class UID found by
    pydicom reading it as a bare data set."""

    path: Path
    name: str  # relative to the corpus's dicom folder
    calling_ae: str  # one per file: radflow's logs attribute everything by it
    sop_class: str  # from the data set ("" when absent): what storescu looks at
    sop_instance: str
    transfer_syntax: str  # the file's own: its meta, or what pydicom found in a bare data set
    what: str  # a word on what the file is, for the report


def _what(name: str, meta_sop_class: str, sop_class: str) -> str:
    if sop_class:
        return UID(sop_class).name
    if name.endswith(".wl"):
        return "modality worklist item, not a storage object"
    if meta_sop_class:
        return f"{UID(meta_sop_class).name} data set, not a storage object"
    return "no SOP class: not a storage object"


def read_candidate(path: Path, name: str, index: int) -> Candidate | None:
    data = path.read_bytes()
    has_prefix = data[128:132] == b"DICM"
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        sop_class = str(ds.get("SOPClassUID", "") or "")
        sop_instance = str(ds.get("SOPInstanceUID", "") or "")
        meta = getattr(ds, "file_meta", None)
        meta_sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "") if meta is not None else ""
        syntax = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
        if not syntax:
            implicit, little = ds.original_encoding
            syntax = IMPLICIT_LE if implicit else (EXPLICIT_LE if little else EXPLICIT_BE)
    except Exception:
        # pydicom gave up: a candidate only by its prefix; storescu will say what it makes of it
        sop_class = sop_instance = meta_sop_class = syntax = ""
    if not has_prefix and not sop_class:
        return None
    return Candidate(
        path=path,
        name=name,
        calling_ae=f"CORPUS{index:03d}",
        sop_class=sop_class,
        sop_instance=sop_instance,
        transfer_syntax=syntax,
        what=_what(name, meta_sop_class, sop_class),
    )


def corpus_candidates(dicom_dir: Path) -> list[Candidate]:
    found: list[Candidate] = []
    for path in sorted(p for p in dicom_dir.rglob("*") if p.is_file()):
        candidate = read_candidate(path, str(path.relative_to(dicom_dir)), len(found) + 1)
        if candidate is not None:
            found.append(candidate)
    return found


def dataset_offset(data: bytes) -> int:
    """Where a file's data set starts: after the preamble, `DICM` and the meta group, walked
    element by element (explicit VR little endian) rather than trusting (0002,0000), which some
    corpus files get wrong. A bare data set starts at 0."""
    pos = 132 if data[128:132] == b"DICM" else 0
    while pos + 8 <= len(data) and struct.unpack("<H", data[pos : pos + 2])[0] == 0x0002:
        if data[pos + 4 : pos + 6] in LONG_VRS:
            pos += 12 + struct.unpack("<I", data[pos + 8 : pos + 12])[0]
        else:
            pos += 8 + struct.unpack("<H", data[pos + 6 : pos + 8])[0]
    return pos


def dataset_of(data: bytes) -> bytes:
    return data[dataset_offset(data) :]


# --- what went over the wire ------------------------------------------------------------------


class WireTap:
    """A TCP relay in front of radflow's DICOM port that keeps every byte the SCU sent, so a
    stored data set can be compared with what was received rather than with the file storescu
    read (storescu re-encodes)."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._lock = threading.Lock()
        self._streams: list[bytearray] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="wire-tap", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:  # closed
                return
            thread = threading.Thread(target=self._relay, args=(client,), daemon=True)
            with self._lock:
                self._threads.append(thread)
            thread.start()

    def _relay(self, client: socket.socket) -> None:
        sent = bytearray()
        with self._lock:
            self._streams.append(sent)
        with client, socket.create_connection(("127.0.0.1", self._target)) as upstream:
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            answers = threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True)
            answers.start()
            self._pump(client, upstream, sent)
            answers.join(timeout=STORE_TIMEOUT_S)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, record: bytearray | None) -> None:
        try:
            while chunk := source.recv(65536):
                if record is not None:
                    record += chunk
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)  # pass the end of the stream on

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._server.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=10)

    def datasets_by_calling_ae(self) -> dict[str, bytes]:
        """Calling AE (from each A-ASSOCIATE-RQ) -> the data set fragments its P-DATA-TF PDUs
        carried, joined (one C-STORE per association here)."""
        found: dict[str, bytes] = {}
        with self._lock:
            streams = [bytes(s) for s in self._streams]
        for stream in streams:
            calling, dataset = "", bytearray()
            pos = 0
            while pos + 6 <= len(stream):
                kind = stream[pos]
                length = struct.unpack(">I", stream[pos + 2 : pos + 6])[0]
                pdu = stream[pos + 6 : pos + 6 + length]
                pos += 6 + length
                if kind == 0x01:  # A-ASSOCIATE-RQ: calling AE at PDU bytes 26-41
                    calling = pdu[20:36].decode("ascii", "replace").strip()
                elif kind == 0x04:  # P-DATA-TF: PDV items (length, context id, header, fragment)
                    item = 0
                    while item + 6 <= len(pdu):
                        item_length = struct.unpack(">I", pdu[item : item + 4])[0]
                        header = pdu[item + 5]
                        if not header & 0x01:  # bit 0 clear: a data set fragment, not a command
                            dataset += pdu[item + 6 : item + 4 + item_length]
                        item += 4 + item_length
            if calling and dataset:
                found[calling] = bytes(dataset)
        return found


# --- sending ----------------------------------------------------------------------------------


def association_profile(candidate: Candidate, folder: Path) -> list[str]:
    """storescu options proposing the file's SOP class in its own transfer syntax, then in the
    uncompressed ones (a modality's usual offer). Files without a SOP class get storescu's
    defaults: it refuses them itself, which is the point of sending them."""
    if not candidate.sop_class or not candidate.transfer_syntax:
        return []
    fallback = [ts for ts in (EXPLICIT_LE, IMPLICIT_LE) if ts != candidate.transfer_syntax]
    config = folder / f"{candidate.calling_ae}.cfg"
    config.write_text(
        "[[TransferSyntaxes]]\n"
        f"[Own]\nTransferSyntax1 = {candidate.transfer_syntax}\n"
        "[Fallback]\n"
        + "".join(f"TransferSyntax{n} = {ts}\n" for n, ts in enumerate(fallback, start=1))
        + "[[PresentationContexts]]\n"
        f"[File]\nPresentationContext1 = {candidate.sop_class}\\Own\n"
        f"PresentationContext2 = {candidate.sop_class}\\Fallback\n"
        "[[Profiles]]\n[File]\nPresentationContexts = File\n"
    )
    return ["-xf", str(config), "File"]


@dataclass
class StoreRun:
    returncode: int
    output: str

    @property
    def success(self) -> bool:
        return "Received Store Response (Success)" in self.output

    def summary(self) -> str:
        """storescu's own account: its errors, or the response it got."""
        wanted = [
            line.strip()
            for line in self.output.splitlines()
            if line.startswith(("E:", "F:")) or "Received Store Response" in line
        ]
        return " | ".join(dict.fromkeys(wanted)) or f"exit {self.returncode}, nothing said"


def send(candidate: Candidate, port: int, folder: Path) -> StoreRun:
    env = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK keeps Nagle on unless told (DESIGN.md)
    result = subprocess.run(
        [
            "storescu",
            "-v",
            *association_profile(candidate, folder),
            "-aet",
            candidate.calling_ae,
            "-aec",
            "RADFLOW",
            "127.0.0.1",
            str(port),
            str(candidate.path),
        ],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=STORE_TIMEOUT_S,
        env=env,
    )
    return StoreRun(result.returncode, result.stdout + result.stderr)


# --- what radflow says ------------------------------------------------------------------------


@dataclass
class Outcome:
    file: str
    outcome: str  # stored | refused | not sent | unaccounted
    detail: str
    calling_ae: str
    what: str
    transfer_syntax: str
    checks: dict[str, Any] = field(default_factory=dict)


def judge(stack: Stack, candidate: Candidate, run: StoreRun, wire: bytes | None) -> Outcome:
    ae = candidate.calling_ae
    associations = query(
        stack, "messages.sqlite", "SELECT * FROM dicom_associations WHERE calling_ae = ?", (ae,)
    )
    instances = query(
        stack,
        "messages.sqlite",
        "SELECT i.* FROM dicom_instances i JOIN dicom_associations a ON a.id = i.association_id "
        "WHERE a.calling_ae = ?",
        (ae,),
    )
    failures = query(
        stack, "messages.sqlite", "SELECT * FROM dicom_store_failures WHERE calling_ae = ?", (ae,)
    )
    c_stores = sum(json.loads(a["exchanged"] or "{}").get("C-STORE-RQ", 0) for a in associations)
    base = {
        "file": candidate.name,
        "calling_ae": ae,
        "what": candidate.what,
        "transfer_syntax": candidate.transfer_syntax,
    }
    checks: dict[str, Any] = {
        "storescu_exit": run.returncode,
        "storescu_says": run.summary(),
        "associations": [a["status"] for a in associations],
        "c_store_requests": c_stores,
        "wire_dataset_bytes": None if wire is None else len(wire),
    }

    if len(instances) == 1 and run.success and not failures:
        row = instances[0]
        stored = Path(row["path"]).read_bytes()
        held = dataset_of(stored)
        source = dataset_of(candidate.path.read_bytes())
        meta_syntax = str(
            pydicom.dcmread(Path(row["path"]), stop_before_pixels=True).file_meta.TransferSyntaxUID
        )
        checks |= {
            "stored_transfer_syntax": row["transfer_syntax"],
            "stored_equals_wire": wire is not None and held == wire,
            "stored_equals_source": held == source,
            "wire_equals_source": wire == source,
            "meta_transfer_syntax_matches_row": meta_syntax == row["transfer_syntax"],
            "sop_instance_matches": row["sop_instance_uid"] == candidate.sop_instance,
        }
        if row["transfer_syntax"] != candidate.transfer_syntax:
            how = f"sent converted to {UID(row['transfer_syntax']).name}"
        elif checks["stored_equals_source"]:
            how = "identical to the file's data set"
        else:
            how = f"storescu re-encoded the data set ({len(source)} -> {len(held)} bytes)"
        wire_word = "byte-exact as received" if checks["stored_equals_wire"] else "DIFFERS from the wire"
        detail = f"{UID(row['transfer_syntax']).name}, {wire_word}; {how}"
        return Outcome(outcome="stored", detail=detail, checks=checks, **base)

    if failures and not instances and not run.success:
        failure = failures[-1]
        checks["failures"] = [{"status": f["status"], "reason": f["reason"]} for f in failures]
        detail = f"status 0x{failure['status']:04X}: {failure['reason']}"
        return Outcome(outcome="refused", detail=detail, checks=checks, **base)

    if not instances and not failures and c_stores == 0 and wire is None and not run.success:
        says = run.summary().replace(str(candidate.path), candidate.name)
        if "No Acceptable Presentation Contexts" in says or "No presentation context" in says:
            sop_class = UID(candidate.sop_class)
            retired = " (retired)" if sop_class.is_retired else ""
            why = f"radflow accepted no presentation context for {sop_class.name}{retired} {sop_class}"
        elif associations:
            why = f"association {associations[-1]['status']} without a C-STORE"
        else:
            why = "no association"
        if not candidate.sop_class:
            why += f" [{candidate.what}]"
        return Outcome(outcome="not sent", detail=f"{why}; storescu: {says}", checks=checks, **base)

    checks |= {"instances": len(instances), "failures": len(failures), "storescu_success": run.success}
    return Outcome(outcome="unaccounted", detail="radflow and storescu disagree", checks=checks, **base)


# --- the test ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def radflow(tmp_path_factory: pytest.TempPathFactory, temporal_address: str) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("storage-corpus"), temporal_address) as stack:
        yield stack


def report_table(outcomes: list[Outcome]) -> str:
    width = max(len(o.file) for o in outcomes)
    lines = [f"{'FILE':<{width}}  {'OUTCOME':<11}  DETAIL"]
    lines += [f"{o.file:<{width}}  {o.outcome:<11}  {o.detail}" for o in outcomes]
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.outcome] = counts.get(o.outcome, 0) + 1
    lines.append(
        ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) + f" of {len(outcomes)} files"
    )
    return "\n".join(lines)


def echo(port: int, aet: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-v", "-aet", aet, "-aec", "RADFLOW", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


def test_every_corpus_dicom_file_is_stored_byte_exact_refused_with_a_reason_or_not_sent_with_storescus_reason(
    radflow: Stack, corpus_dir: Path, tmp_path: Path
) -> None:
    candidates = corpus_candidates(corpus_dir / "dicom")
    assert len(candidates) > 50, "the corpus's DICOM folder looks incomplete"
    profiles = tmp_path / "profiles"
    profiles.mkdir()

    tap = WireTap(radflow.dicom_port)
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:  # a 2-core machine shared with others
            runs = list(pool.map(lambda c: send(c, tap.port, profiles), candidates))
    finally:
        tap.close()
    wire = tap.datasets_by_calling_ae()

    # the association rows close when radflow sees the release, a moment after storescu exits
    ours = tuple(c.calling_ae for c in candidates)
    marks = ", ".join("?" for _ in ours)
    radflow.wait_until(
        lambda: (
            not query(
                radflow,
                "messages.sqlite",
                f"SELECT id FROM dicom_associations WHERE ended_at IS NULL AND calling_ae IN ({marks})",
                ours,
            )
        ),
        timeout=20,
    )
    outcomes = [
        judge(radflow, c, run, wire.get(c.calling_ae)) for c, run in zip(candidates, runs, strict=True)
    ]

    # named like DICOM but neither prefixed nor carrying a SOP class: not candidates, listed
    names = {c.name for c in candidates}
    dicom_dir = corpus_dir / "dicom"
    not_candidates = sorted(
        str(p.relative_to(dicom_dir))
        for p in dicom_dir.rglob("*")
        if p.suffix in {".dcm", ".wl", ".query"} and str(p.relative_to(dicom_dir)) not in names
    )
    table = report_table(outcomes)
    print("\n" + table)
    print(f"not DICOM candidates despite their names: {', '.join(not_candidates) or 'none'}")
    (tmp_path / "storage-corpus-report.json").write_text(
        json.dumps(
            {"files": [asdict(o) for o in outcomes], "not_candidates": not_candidates}, indent=2, default=str
        )
    )
    print(f"report: {tmp_path / 'storage-corpus-report.json'}")

    # nothing silently dropped: every file in exactly one category
    unaccounted = [o for o in outcomes if o.outcome == "unaccounted"]
    assert not unaccounted, json.dumps([asdict(o) for o in unaccounted], indent=2, default=str)
    stored = [o for o in outcomes if o.outcome == "stored"]
    assert stored, table
    for o in stored:
        assert o.checks["stored_equals_wire"], f"{o.file}: the stored data set is not what arrived"
        assert o.checks["meta_transfer_syntax_matches_row"], o.file
        assert o.checks["sop_instance_matches"], o.file
        if o.checks["wire_equals_source"]:  # storescu sent the file's data set unchanged
            assert o.checks["stored_equals_source"], o.file
    for o in outcomes:
        if o.outcome == "refused":
            assert all(f["reason"].strip() for f in o.checks["failures"]), o.file
        if o.outcome == "not sent":
            assert o.checks["storescu_says"] and not o.checks["storescu_says"].startswith("exit"), o.file
    # every storage object storescu could read and negotiate reached radflow and was answered
    storage_objects = {c.name for c in candidates if c.sop_class}
    assert {o.file for o in stored} <= storage_objects

    # the listener still serves
    still = echo(radflow.dicom_port, "CORPUSECHO")
    assert still.returncode == 0 and "Received Echo Response (Success)" in (still.stdout + still.stderr), (
        still.stdout + still.stderr
    )
    assert radflow.processes["listen"].poll() is None
