"""C-FIND matching (DICOM PS3.4 C.2.2.2): a query identifier compiled once, then matched against
candidate entities and turned into response identifiers holding only the requested keys.

Candidates are plain mappings (tag -> value) rather than pydicom datasets, so that a worklist of
hundreds of rows is filtered without building a dataset per row; a response dataset is built only
for a match. Values: `str` (one value), `tuple[str, ...]` (multi-valued), `list[Item]` (a
sequence), `None` (absent for this entity: a type 1C attribute whose condition is not met).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Union

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag

Value = Union[str, tuple[str, ...], list["Item"], None]  # noqa: UP007 - a recursive alias
Item = Mapping[int, Value]
# which attributes the candidates hold: tag -> None, or for a sequence the schema of its items
Schema = Mapping[int, Union["Schema", None]]  # noqa: UP007

SPECIFIC_CHARACTER_SET = 0x00080005
# attributes that steer the query rather than select entities (PS3.4 C.4.1.1.3.1)
NOT_KEYS = frozenset({SPECIFIC_CHARACTER_SET, 0x00080052, 0x00080201})
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_DATETIME_PART = r"\d{4}(?:\d{2}){0,5}(?:\.\d{1,6})?(?:[+-]\d{4})?"
_DATETIME = re.compile(_DATETIME_PART)
_DATETIME_RANGE = re.compile(f"({_DATETIME_PART})?-({_DATETIME_PART})?")


class InvalidQuery(ValueError):
    """The identifier breaks a matching rule; answered with a failure status, not matched."""

    def __init__(self, tag: int, reason: str) -> None:
        super().__init__(f"{Tag(tag)}: {reason}")
        self.tag = Tag(tag)
        self.reason = reason


class Condition(Protocol):
    def matches(self, value: str) -> bool: ...


@dataclass(frozen=True)
class Exact:
    """Single value matching; person names compare without regard to case or trailing empty
    components (PS3.4 C.2.2.2.1 lets PN matching ignore case; modalities type names in any)."""

    value: str
    person_name: bool = False

    def matches(self, value: str) -> bool:
        return (normalise_name(value).casefold() if self.person_name else value) == self.value


@dataclass(frozen=True)
class Wildcard:
    """`*` any run of characters (even none), `?` exactly one (PS3.4 C.2.2.2.4)."""

    pattern: re.Pattern[str]
    person_name: bool = False

    def matches(self, value: str) -> bool:
        return self.pattern.fullmatch(normalise_name(value) if self.person_name else value) is not None


@dataclass(frozen=True)
class Empty:
    """Empty value matching: a key of `""` selects entities holding no value (PS3.4 C.2.2.2.8)."""

    def matches(self, value: str) -> bool:
        return value == ""


@dataclass(frozen=True)
class Range:
    """Range matching on DA, TM or DT. Both bounds are normalised to full precision (a partial
    upper bound covers its whole span: `-1012` runs to 10:12:59.999999), so bounds and values
    compare as strings. An open end is None."""

    vr: str
    low: str | None
    high: str | None

    def matches(self, value: str) -> bool:
        if not value:
            return False
        normalised = _normalise(self.vr, value, upper=False)
        if normalised is None:
            return False
        if self.low is not None and normalised < self.low:
            return False
        return self.high is None or normalised <= self.high


@dataclass(frozen=True)
class AnyOf:
    """A multi-valued key: UID list matching (PS3.4 C.2.2.2.2), or any of several values."""

    conditions: tuple[Condition, ...]

    def matches(self, value: str) -> bool:
        return any(c.matches(value) for c in self.conditions)


@dataclass(frozen=True)
class ReturnKey:
    tag: int
    vr: str
    query: Query | None = None  # for a sequence: its item's keys; None returns whole items


@dataclass
class Query:
    """A compiled identifier: what to match and what to return, in the identifier's order."""

    conditions: list[tuple[int, Condition]] = field(default_factory=list)
    sequences: list[tuple[int, Query]] = field(default_factory=list)
    returns: list[ReturnKey] = field(default_factory=list)
    # keys with a value on attributes the candidates don't hold: ignored for matching, and
    # reported with the pending status 0xFF01 (PS3.4 C.4.1.1.4: optional keys not supported)
    unsupported: list[int] = field(default_factory=list)

    @property
    def is_universal(self) -> bool:
        return not self.conditions and not self.sequences

    def condition(self, tag: int) -> Condition | None:
        return next((c for t, c in self.conditions if t == tag), None)

    def sequence(self, tag: int) -> Query | None:
        return next((q for t, q in self.sequences if t == tag), None)

    def all_unsupported(self) -> list[int]:
        nested = (t for key in self.returns if key.query is not None for t in key.query.all_unsupported())
        return [*self.unsupported, *nested]

    def matches(self, item: Item) -> bool:
        for tag, condition in self.conditions:
            if not any(condition.matches(v) for v in _values(item.get(tag))):
                return False
        for tag, query in self.sequences:
            items = item.get(tag)
            if not isinstance(items, list) or not any(query.matches(i) for i in items):
                return False
        return True

    def respond(self, item: Item) -> Dataset:
        """The response identifier: every requested key, with the entity's value or empty."""
        response = Dataset()
        for key in self.returns:
            value = item.get(key.tag, "")
            if key.vr == "SQ":
                if value is None:
                    continue  # a 1C sequence the entity does not have: absent, not empty
                items = value if isinstance(value, list) else []
                if key.query is not None:
                    items = [i for i in items if key.query.matches(i)]
                    response.add(DataElement(key.tag, "SQ", DicomSequence([key.query.respond(i) for i in items])))
                else:
                    response.add(DataElement(key.tag, "SQ", DicomSequence([whole(i) for i in items])))
            elif isinstance(value, tuple):
                response.add(DataElement(key.tag, key.vr, list(value)))
            elif isinstance(value, str) and value:
                response.add(DataElement(key.tag, key.vr, value))
            else:
                response.add(DataElement(key.tag, key.vr, None))
        return response


def compile_query(identifier: Dataset, schema: Schema) -> Query:
    """Compile an identifier against the attributes the candidates hold; raises InvalidQuery."""
    query = Query()
    for element in identifier:
        tag = int(element.tag)
        if tag in NOT_KEYS or element.tag.element == 0:  # group lengths are not keys
            continue
        vr = _vr(element)
        nested = schema.get(tag) if tag in schema else None
        if vr == "SQ":
            items = element.value or []
            if len(items) > 1:
                raise InvalidQuery(tag, "a sequence key may hold one item only")
            if not items or len(items[0]) == 0:
                query.returns.append(ReturnKey(tag, "SQ"))
                continue
            # against an attribute the candidates don't hold, every nested key is unsupported, so
            # the item compiles universal and only reports its keys through `all_unsupported`
            sub = compile_query(items[0], nested or {})
            query.returns.append(ReturnKey(tag, "SQ", sub))
            if not sub.is_universal:
                query.sequences.append((tag, sub))
            continue
        query.returns.append(ReturnKey(tag, vr))
        condition = compile_condition(tag, vr, element.value)
        if condition is None:
            continue
        if tag in schema:
            query.conditions.append((tag, condition))
        else:
            query.unsupported.append(tag)
    return query


def compile_condition(tag: int, vr: str, raw: Any) -> Condition | None:
    """The condition for one key's value, or None for universal matching."""
    values = [_text(v) for v in raw] if isinstance(raw, (MultiValue, list, tuple)) else [_text(raw)]
    values = [v for v in values if v.strip()]
    if not values:
        return None
    conditions = [_single(tag, vr, v) for v in values]
    if any(c is None for c in conditions):
        return None  # one universal alternative makes the whole key universal
    found = [c for c in conditions if c is not None]
    return found[0] if len(found) == 1 else AnyOf(tuple(found))


def _single(tag: int, vr: str, value: str) -> Condition | None:
    value = value.strip()
    if value == '""':
        return Empty()
    if vr in ("DA", "TM", "DT"):
        return _range(tag, vr, value)
    if vr == "PN":
        value = normalise_name(value)
        if not value:
            return None
    if vr in WILDCARD_VRS and ("*" in value or "?" in value):
        if set(value) == {"*"}:
            return None
        pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value)
        flags = re.DOTALL | (re.IGNORECASE if vr == "PN" else 0)
        return Wildcard(re.compile(pattern, flags), person_name=vr == "PN")
    if vr == "PN":
        return Exact(value.casefold(), person_name=True)
    return Exact(value)


def _range(tag: int, vr: str, value: str) -> Condition | None:
    if vr == "DT":
        # a negative UTC offset also uses '-': a value that reads as one DT is a single value
        found = None if _DATETIME.fullmatch(value) else _DATETIME_RANGE.fullmatch(value)
        low, sep, high = (found.group(1) or "", "-", found.group(2) or "") if found else (value, "", "")
    else:
        if value.count("-") > 1:
            raise InvalidQuery(tag, f"{vr} range {value!r} has more than one '-'")
        low, sep, high = value.partition("-")
    if sep and not low and not high:
        raise InvalidQuery(tag, f"{vr} range {value!r} has no bound")
    bounds: list[str | None] = []
    for bound, upper in ((low, False), (high if sep else low, True)):
        if not bound:
            bounds.append(None)
            continue
        normalised = _normalise(vr, bound, upper=upper)
        if normalised is None:
            raise InvalidQuery(tag, f"{vr} value {bound!r} is not valid")
        bounds.append(normalised)
    return Range(vr, bounds[0], bounds[1])


def _normalise(vr: str, value: str, *, upper: bool) -> str | None:
    """Full precision as a sortable string; a partial value extends to its span's end when it
    is an upper bound. None when the value is not of the VR's form."""
    value = value.strip()
    fill = "9" if upper else "0"
    if vr == "DA":
        return value if _DATE.fullmatch(value) else None
    if vr == "TM":
        value = value.replace(":", "")  # ACR-NEMA style times still come from old modalities
        if not _TIME.fullmatch(value):
            return None
        whole_part, _, fraction = value.partition(".")
        span = {2: "5959", 4: "59", 6: ""} if upper else {2: "0000", 4: "00", 6: ""}
        return f"{whole_part}{span[len(whole_part)]}.{fraction.ljust(6, fill)}"
    if vr == "DT":
        if not _DATETIME.fullmatch(value):
            return None
        body = value[:-5] if len(value) > 5 and value[-5] in "+-" else value  # offset ignored
        whole_part, _, fraction = body.partition(".")
        return f"{whole_part.ljust(14, fill)}.{fraction.ljust(6, fill)}"
    return value


def normalise_name(value: str) -> str:
    """The alphabetic group of a PN without trailing empty components or padding, so that
    `DOE^JANE^^` and `DOE^JANE` are the same person."""
    return value.split("=")[0].strip().rstrip("^ ")


def _values(value: Value) -> Sequence[str]:
    if value is None or isinstance(value, list):
        return ("",)
    if isinstance(value, tuple):
        return value or ("",)
    return (value,)


def _text(raw: Any) -> str:
    return "" if raw is None else str(raw)


def _vr(element: DataElement) -> str:
    # with implicit VR, or a peer that sent UN, trust the data dictionary
    if element.VR in ("UN", None) or " or " in str(element.VR):
        try:
            return str(dictionary_VR(element.tag)).split(" or ")[0]
        except KeyError:
            return "UN"
    return str(element.VR)


def whole(item: Item) -> Dataset:
    """An entity's sequence item with every attribute it has (for universal sequence keys)."""
    dataset = Dataset()
    for tag in sorted(item):
        value = item[tag]
        vr = str(dictionary_VR(BaseTag(tag))).split(" or ")[0]
        if value is None:
            continue
        if isinstance(value, list):
            dataset.add(DataElement(tag, "SQ", DicomSequence([whole(i) for i in value])))
        elif isinstance(value, tuple):
            dataset.add(DataElement(tag, vr, list(value)))
        else:
            dataset.add(DataElement(tag, vr, value or None))
    return dataset
