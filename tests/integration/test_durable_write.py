"""interfaces.dicom.storage.durable_write: which files and folders reach the disk before a
C-STORE is answered. Nothing here can pull the power, so the test watches what fsync(2) is
asked to flush, by path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from interfaces.dicom import storage
from interfaces.dicom.storage import durable_root, durable_write


@pytest.fixture
def flushed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """The paths fsync was called on, in order (the real fsync still runs)."""
    paths: list[Path] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        paths.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(storage, "_durable_folders", set())
    yield paths


def test_the_first_file_of_a_series_makes_the_new_folders_durable_then_only_its_folder(
    tmp_path: Path, flushed: list[Path]
) -> None:
    series = tmp_path / "1.2.3" / "1.2.3.4"
    first, second = series / "1.dcm", series / "2.dcm"
    durable_write(first, b"one")
    # the file (as its partial name), the series folder, the study folder, the root
    assert flushed[1:] == [series, series.parent, tmp_path]
    assert flushed[0].parent == series and flushed[0].name.endswith(".partial")
    flushed.clear()
    durable_write(second, b"two")
    assert flushed[1:] == [series]
    assert first.read_bytes() == b"one" and second.read_bytes() == b"two"
    assert sorted(p.name for p in series.iterdir()) == ["1.dcm", "2.dcm"], "a partial file was left"


def test_a_series_folder_already_on_disk_but_new_to_the_process_is_flushed_once(
    tmp_path: Path, flushed: list[Path]
) -> None:
    """An earlier run may have made the folder and stopped before its fsync."""
    series = tmp_path / "study" / "series"
    series.mkdir(parents=True)
    durable_write(series / "a.dcm", b"a")
    assert flushed[1:] == [series, series.parent, tmp_path]


def test_a_folder_removed_after_a_write_is_made_again(tmp_path: Path, flushed: list[Path]) -> None:
    series = tmp_path / "study" / "series"
    durable_write(series / "a.dcm", b"a")
    (series / "a.dcm").unlink()
    series.rmdir()
    flushed.clear()
    durable_write(series / "b.dcm", b"b")
    assert (series / "b.dcm").read_bytes() == b"b"
    assert flushed[1:] == [series, series.parent, tmp_path], "the new folder's entry was not flushed"


def test_the_remembered_folders_are_bounded(
    tmp_path: Path, flushed: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "DURABLE_FOLDERS_KEPT", 3)
    for n in range(7):
        durable_write(tmp_path / "study" / f"series{n}" / "x.dcm", b"x")
    assert len(storage._durable_folders) <= 3


def test_the_storage_folder_is_made_at_start_with_its_entry_flushed(
    tmp_path: Path, flushed: list[Path]
) -> None:
    root = tmp_path / "data" / "dicom"
    durable_root(root)
    assert root.is_dir() and flushed == [root.parent]
    flushed.clear()
    durable_root(root)  # already there: nothing to flush
    assert flushed == []
