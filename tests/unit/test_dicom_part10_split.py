"""A stored file is split into its Transfer Syntax UID and data set exactly as pydicom reads it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.filereader import read_dataset, read_preamble

from interfaces.dicom.header import file_meta, split_part10


def pydicom_split(raw_path: Path) -> tuple[str, bytes]:
    with open(raw_path, "rb") as fp:
        read_preamble(fp, False)
        meta = read_dataset(fp, False, True, stop_when=lambda tag, *_: tag.group != 2)
        return str(meta.TransferSyntaxUID), fp.read()


def test_radflows_own_files_are_split_at_their_meta_group(tmp_path: Path) -> None:
    body = b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100"
    path = tmp_path / "one.dcm"
    path.write_bytes(
        file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.4.70", "CT1") + body
    )
    syntax, data = split_part10(path.read_bytes())
    assert (syntax, bytes(data)) == pydicom_split(path) == ("1.2.840.10008.1.2.4.70", body)


def test_every_corpus_file_with_a_meta_group_length_splits_as_pydicom_reads_it(corpus_dir: Path) -> None:
    split = 0
    for path in sorted(p for p in (corpus_dir / "dicom").rglob("*") if p.is_file()):
        raw = path.read_bytes()
        try:
            syntax, data = split_part10(raw)
        except ValueError:
            continue  # no Part-10 meta group with a length: read_stored gives it to pydicom
        split += 1
        assert (syntax, bytes(data)) == pydicom_split(path), path
    assert split >= 50


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00" * 132,
        b"\x00" * 128 + b"DICM" + b"\x02\x00\x01\x00OB\x00\x00\x02\x00\x00\x00\x00\x01",
        b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00\xff\x00\x00\x00\x02\x00\x10\x00UI\x40\x00",
    ],
)
def test_a_file_without_a_meta_group_length_is_left_to_pydicom(raw: bytes) -> None:
    with pytest.raises(ValueError):
        split_part10(raw)
