"""Reading fields out of an HL7 v2 message: the header by hand (so that even a broken message
can be answered), the rest through python-hl7's parser."""

from __future__ import annotations

from dataclasses import dataclass

import hl7


class ParseError(ValueError):
    """The text is not an HL7 v2 message we can read."""


@dataclass(frozen=True)
class Header:
    """MSH as received; enough to address an ACK and to deduplicate."""

    field_separator: str
    encoding_characters: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    sent_at: str
    message_code: str
    trigger_event: str
    control_id: str
    processing_id: str
    version: str
    charset: str

    @property
    def message_type(self) -> str:
        return f"{self.message_code}^{self.trigger_event}" if self.trigger_event else self.message_code

    @property
    def component_separator(self) -> str:
        return self.encoding_characters[:1] or "^"


def read_header(text: str) -> Header | None:
    """The MSH segment split by its own separator, or None when there is no MSH."""
    segment = next((s for s in text.split("\r") if s.startswith("MSH")), "")
    if len(segment) < 8:
        return None
    separator = segment[3]
    if separator.isalnum() or separator.isspace() or separator in "-_.":
        return None
    fields = ["MSH", separator, *segment[4:].split(separator)]
    encoding = fields[2]
    component = encoding[:1] or "^"

    def field(n: int) -> str:
        return fields[n] if n < len(fields) else ""

    def first(n: int) -> str:
        return field(n).split(encoding[1:2] or "~")[0].split(component)[0].strip()

    message_type = field(9).split(component)
    return Header(
        field_separator=separator,
        encoding_characters=encoding,
        sending_application=first(3),
        sending_facility=first(4),
        receiving_application=first(5),
        receiving_facility=first(6),
        sent_at=first(7),
        message_code=message_type[0].strip().upper(),
        trigger_event=(message_type[1] if len(message_type) > 1 else "").strip().upper(),
        control_id=field(10).strip(),
        processing_id=first(11),
        version=first(12),
        charset=first(18),
    )


class Message:
    """A parsed message with field access by HL7 position (1-based, as in the standard)."""

    def __init__(self, text: str) -> None:
        try:
            self._msg = hl7.parse(text)
        except Exception as error:  # python-hl7 raises assorted errors on bad input
            raise ParseError(f"cannot parse message: {error}") from error
        if not self._msg or str(self._msg[0][0]) != "MSH":
            raise ParseError("message does not start with an MSH segment")
        self._separators = self._msg.separators  # segment, field, repetition, component, sub
        self._escape = self._msg.esc

    def has(self, segment: str) -> bool:
        return any(str(s[0]) == segment for s in self._msg)

    def segment_ids(self) -> list[str]:
        return [str(s[0]) for s in self._msg]

    def groups(self, leader: str, members: tuple[str, ...]) -> list[dict[str, list[hl7.Segment]]]:
        """Split segments into groups that each start at `leader` (e.g. one order per ORC)."""
        groups: list[dict[str, list[hl7.Segment]]] = []
        for segment in self._msg:
            sid = str(segment[0])
            if sid == leader:
                groups.append({leader: [segment]})
            elif sid in members:
                if not groups:
                    groups.append({})
                groups[-1].setdefault(sid, []).append(segment)
        return groups

    def first_segment(self, segment: str) -> hl7.Segment | None:
        for s in self._msg:
            if str(s[0]) == segment:
                return s
        return None

    def value(
        self,
        segment: hl7.Segment | str | None,
        field: int,
        component: int | None = 1,
        subcomponent: int | None = 1,
        repetition: int = 1,
    ) -> str:
        """One value, unescaped; '' when absent. component=None returns the whole repetition."""
        if isinstance(segment, str):
            segment = self.first_segment(segment)
        if segment is None:
            return ""
        raw = _field_text(segment, field)
        _, _, rep_sep, comp_sep, sub_sep = (self._separators + "    ")[:5]
        reps = raw.split(rep_sep) if rep_sep.strip() else [raw]
        if repetition > len(reps):
            return ""
        text = reps[repetition - 1]
        if component is not None:
            comps = text.split(comp_sep)
            text = comps[component - 1] if component <= len(comps) else ""
            if subcomponent is not None:
                subs = text.split(sub_sep) if sub_sep.strip() else [text]
                text = subs[subcomponent - 1] if subcomponent <= len(subs) else ""
        text = text.strip()
        if text == '""':  # HL7 explicit null
            return ""
        return self.unescape(text)

    def unescape(self, text: str) -> str:
        if self._escape not in text:
            return text
        if text.count(self._escape) % 2:
            # an unterminated sequence (a lone, unescaped backslash): python-hl7 would silently
            # drop it and everything after it, turning accession 'A\1' into 'A'
            return text
        try:
            return str(self._msg.unescape(text))
        except Exception:  # a broken escape sequence: keep the text as sent
            return text

    @property
    def component_separator(self) -> str:
        return self._separators[3] if len(self._separators) > 3 else "^"


def _field_text(segment: hl7.Segment, field: int) -> str:
    # python-hl7 keeps MSH-1 as its own element, so MSH-n is segment[n] like any other segment
    if field >= len(segment):
        return ""
    return str(segment[field])
