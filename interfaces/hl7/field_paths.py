"""Field paths an interface analyst writes in a channel file (`OBR-18`, `PID-3.4`, `PID-3[2].1`,
`ZDS-1`) and the rules that turn what they point at into a domain value: first non-empty of
several paths, concatenation, normalisers, a code table, a default."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from interfaces.hl7.mapping import hl7_timestamp
from interfaces.hl7.message import Message

# segments that belong to one order: in a multi-order message they are read from that order
ORDER_GROUP_SEGMENTS = frozenset(
    ["ORC", "TQ1", "OBR", "IPC", "ZDS", "NTE", "OBX", "DG1", "CTD", "FT1", "BLG", "CTI", "TQ2"]
)
_PATH = re.compile(r"^([A-Z][A-Z0-9]{2})-(\d{1,3})(?:\[(\d{1,3})\])?(?:\.(\d{1,3}))?(?:\.(\d{1,3}))?$")
NORMALISERS = ("date", "datetime", "name", "upper", "lower", "trim")

Group = Mapping[str, list[Any]]


class PathSyntaxError(ValueError):
    """A field path that is not SEG-FIELD[REP].COMPONENT.SUBCOMPONENT."""


@dataclass(frozen=True)
class FieldPath:
    segment: str
    field: int
    repetition: int = 1
    component: int | None = None  # None: component 1, or the whole repetition when asked
    subcomponent: int | None = None

    @classmethod
    def parse(cls, text: str) -> FieldPath:
        match = _PATH.match(str(text).strip())
        if match is None:
            raise PathSyntaxError(
                f"bad HL7 path {text!r}: expected SEG-FIELD[.COMPONENT[.SUB]] with an optional"
                " [REPETITION] after FIELD, e.g. OBR-18, PID-3.4, PID-3[2].1, ZDS-1"
            )
        seg, fld, rep, comp, sub = match.groups()
        if int(fld) < 1 or (comp is not None and int(comp) < 1) or (sub is not None and int(sub) < 1):
            raise PathSyntaxError(f"bad HL7 path {text!r}: positions start at 1")
        return cls(seg, int(fld), int(rep or 1), int(comp) if comp else None, int(sub) if sub else None)

    def read(self, message: Message, group: Group | None = None, whole: bool = False) -> str:
        """The value, unescaped; '' when absent. Order-group segments come from `group`.
        Without a component it is component 1 (`OBR-18`, `ZDS-1` mean the identifier), or the
        whole repetition when `whole` (a name normaliser wants family^given^middle)."""
        if group is not None and self.segment in ORDER_GROUP_SEGMENTS:
            segment = (group.get(self.segment) or [None])[0]
        else:
            segment = message.first_segment(self.segment)
        if segment is None:
            return ""
        if self.component is None and whole:
            text = message.value(segment, self.field, None, None, self.repetition)
            return text.rstrip(message.component_separator)
        return message.value(
            segment, self.field, self.component or 1, self.subcomponent or 1, self.repetition
        )

    def __str__(self) -> str:
        text = f"{self.segment}-{self.field}" + (f"[{self.repetition}]" if self.repetition != 1 else "")
        if self.component is not None:
            text += f".{self.component}"
        if self.subcomponent is not None:
            text += f".{self.subcomponent}"
        return text


def _name(value: str, message: Message) -> str:
    """XPN family^given^middle (the domain's name form), trailing empties dropped."""
    comp = message.component_separator
    return comp.join(value.split(comp)[:3]).rstrip(comp)


def normalise(kind: str, value: str, message: Message) -> str:
    if kind == "date":
        return hl7_timestamp(value)[:10]
    if kind == "datetime":
        return hl7_timestamp(value)
    if kind == "name":
        return _name(value, message)
    if kind == "upper":
        return value.upper()
    if kind == "lower":
        return value.lower()
    if kind == "trim":
        return value.strip()
    raise ValueError(f"unknown normaliser {kind!r}")


@dataclass(frozen=True)
class FieldRule:
    """How one domain field is read: `paths` (first non-empty) or `concat` (joined)."""

    paths: tuple[FieldPath, ...] = ()
    concat: tuple[FieldPath, ...] = ()
    separator: str = " "
    normalise: tuple[str, ...] = ()
    table: str = ""
    default: str | None = None

    def evaluate(
        self,
        message: Message,
        group: Group | None,
        tables: Mapping[str, Mapping[str, Any]],
        warn: Callable[[str], None] | None = None,
    ) -> str | None:
        """The new value, or None to leave what the base mapping produced."""
        whole = "name" in self.normalise
        if self.concat:
            value = self.separator.join(p for p in (c.read(message, group, whole) for c in self.concat) if p)
        else:
            value = next((v for v in (p.read(message, group, whole) for p in self.paths) if v), "")
        for kind in self.normalise:
            if value:
                value = normalise(kind, value, message)
        if value and self.table:
            entry = tables.get(self.table, {}).get(value)
            if entry is None:
                entry = tables.get(self.table, {}).get(value.upper())
            if entry is None:
                if warn is not None:
                    warn(f"{value!r} is not in code table {self.table}")
                value = ""
            else:
                value = str(entry.get("value", "")) if isinstance(entry, Mapping) else str(entry)
        if not value:
            return self.default
        return value
