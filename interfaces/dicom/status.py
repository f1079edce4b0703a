"""DIMSE status data sets with the Error Comment (and Offending Element) every refusal carries."""

from __future__ import annotations

from pydicom.dataset import Dataset


def status(code: int, comment: str = "", offending: int | None = None) -> Dataset:
    answer = Dataset()
    answer.Status = code
    if comment:
        answer.ErrorComment = comment[:64]  # LO: at most 64 characters
    if offending is not None:
        answer.OffendingElement = [offending]
    return answer
