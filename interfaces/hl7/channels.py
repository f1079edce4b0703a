"""Channels as configuration: which senders and message types a feed may send, how strictly it
is checked, which fields the site reads differently from the built-in mapping, its code tables
and its ACK mode. Loaded from `<hl7_config_dir>/channels/*.yaml` once at start and validated
with errors naming file, line and key, so the site can keep and diff its feeds in git."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from adapters.yaml_config import ConfigError, Loaded, load
from domain.commands import COMMANDS, Command, PatientDemographics
from interfaces.hl7 import acks
from interfaces.hl7.field_paths import NORMALISERS, FieldPath, FieldRule, PathSyntaxError
from interfaces.hl7.mapping import ORDER_SEGMENTS, Refused
from interfaces.hl7.message import Header, Message

DEFAULTS = Path(__file__).parent / "defaults"
CHANNEL_KEYS = frozenset(
    [
        "name",
        "senders",
        "message_types",
        "versions",
        "validation",
        "required",
        "profile",
        "fields",
        "code_tables",
        "ack",
    ]
)
RULE_KEYS = frozenset(["path", "concat", "separator", "normalise", "table", "default"])
PROCEDURE_KEYS = frozenset(["description", "modality", "cpt", "duration_min"])
ACK_MODES = ("original", "enhanced-when-asked")
PROFILES = ("hl7apy-strict",)
ChannelConfigError = ConfigError


@dataclass(frozen=True)
class Sender:
    application: str = "*"
    facility: str = "*"

    def matches(self, header: Header) -> bool:
        return fnmatch.fnmatchcase(header.sending_application, self.application) and fnmatch.fnmatchcase(
            header.sending_facility, self.facility
        )


@dataclass(frozen=True)
class Applied:
    """What a channel made of the base mapping's commands."""

    commands: list[Command]
    warnings: list[str] = field(default_factory=list)
    enrichment: list[dict[str, Any]] = field(default_factory=list)  # per order: cpt, duration


@dataclass(frozen=True)
class Channel:
    name: str
    file: str = ""
    senders: tuple[Sender, ...] = ()  # empty: any sender
    message_types: tuple[str, ...] = ()  # patterns like ADT^A*; empty: whatever the mapping takes
    versions: tuple[str, ...] = ()  # empty: any MSH-12
    validation: str = "tolerant"
    required: tuple[FieldPath, ...] = ()
    profile: str = ""
    fields: Mapping[str, Mapping[str, FieldRule]] = field(default_factory=dict)  # kind -> field -> rule
    tables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    ack_mode: str = "enhanced-when-asked"

    def accepts_sender(self, header: Header) -> bool:
        return not self.senders or any(s.matches(header) for s in self.senders)

    def accepts_type(self, header: Header) -> bool:
        return not self.message_types or any(
            fnmatch.fnmatchcase(header.message_type, p) or fnmatch.fnmatchcase(header.message_code, p)
            for p in self.message_types
        )

    @property
    def is_plain(self) -> bool:
        """Nothing to do after the base mapping: the listener's fast path."""
        return not (
            self.fields
            or self.required
            or self.profile
            or self.validation == "strict"
            or "procedures" in self.tables
        )

    def check(self, message_text: str, header: Header) -> None:
        """Refuse (AR) what this channel does not take: version; profile errors (AE)."""
        if self.versions and header.version not in self.versions:
            raise Refused(
                "AR",
                f"HL7 version {header.version or '(empty)'} not accepted by channel {self.name}",
                acks.UNSUPPORTED_VERSION,
                "MSH^1^12",
            )
        if self.profile == "hl7apy-strict":
            _hl7apy_strict(message_text)

    def apply(self, message: Message, commands: list[Command]) -> Applied:
        """Overrides, code tables and strict validation on the base mapping's commands."""
        warnings: list[str] = []
        for path in self.required:
            if not path.read(message):
                problem = f"required field {path} is empty (channel {self.name})"
                if self.validation == "strict":
                    raise Refused("AE", problem, acks.REQUIRED_FIELD_MISSING, _location(path))
                warnings.append(problem)
        groups = [g for g in message.groups("ORC", ORDER_SEGMENTS) if "ORC" in g] if self.fields else []
        out: list[Command] = []
        enrichment: list[dict[str, Any]] = []
        for index, command in enumerate(commands):
            rules = self.fields.get(command.kind)
            if rules:
                group = (
                    groups[index]
                    if len(groups) == len(commands)
                    else (groups[0] if len(groups) == 1 else None)
                )
                command = _override(command, rules, message, group, self.tables, warnings.append)
            out.append(self._procedure(command, warnings, enrichment))
        return Applied(out, warnings, enrichment)

    def _procedure(self, command: Command, warnings: list[str], enrichment: list[dict[str, Any]]) -> Command:
        code = getattr(command, "procedure_code", None)
        table = self.tables.get("procedures")
        if code is None or table is None:
            return command
        entry = table.get(code)
        if entry is None:
            problem = f"procedure code {code or '(empty)'} is not in channel {self.name}'s procedure table"
            if self.validation == "strict":
                raise Refused("AE", problem, acks.TABLE_VALUE_NOT_FOUND, "OBR^1^4")
            warnings.append(problem)
            return command
        changes: dict[str, Any] = {}
        if not getattr(command, "procedure_text", "x") and entry.get("description"):
            changes["procedure_text"] = str(entry["description"])
        if not getattr(command, "modality", "x") and entry.get("modality"):
            changes["modality"] = str(entry["modality"])
        extra = {k: entry[k] for k in ("cpt", "duration_min") if k in entry}
        if extra:
            enrichment.append(
                {"accession": getattr(command, "accession", ""), "procedure_code": code, **extra}
            )
        return dataclasses.replace(command, **changes) if changes else command


def _location(path: FieldPath) -> str:
    return f"{path.segment}^1^{path.field}" + (
        f"^{path.repetition}^{path.component}" if path.component else ""
    )


def _override(
    command: Command,
    rules: Mapping[str, FieldRule],
    message: Message,
    group: Any,
    tables: Mapping[str, Mapping[str, Any]],
    warn: Callable[[str], None],
) -> Command:
    changes: dict[str, Any] = {}
    patient_changes: dict[str, Any] = {}
    for name, rule in rules.items():
        value = rule.evaluate(message, group, tables, warn)
        if value is None:
            continue
        if name.startswith("patient."):
            patient_changes[name.split(".", 1)[1]] = value
        elif _FIELD_TYPES[command.kind].get(name) == "int":
            try:
                changes[name] = int(value)
            except ValueError:
                warn(f"{command.kind}.{name}: {value!r} is not a number; kept the mapped value")
        else:
            changes[name] = value
    if patient_changes:
        changes["patient"] = dataclasses.replace(command.patient, **patient_changes)  # type: ignore[attr-defined]
    return dataclasses.replace(command, **changes) if changes else command


# the domain fields a channel may set: every plain field of every command (and patient.*)
_FIELD_TYPES: dict[str, dict[str, str]] = {
    kind: {f.name: str(f.type) for f in dataclasses.fields(cls) if f.name != "provenance"}
    for kind, cls in COMMANDS.items()
}
_PATIENT_FIELDS = frozenset(f.name for f in dataclasses.fields(PatientDemographics))


def _hl7apy_strict(text: str) -> None:
    from hl7apy.parser import parse_message  # optional, and slow: only for channels that ask

    try:
        from hl7apy.consts import VALIDATION_LEVEL

        parsed = parse_message(
            text.replace("\n", "\r"), validation_level=VALIDATION_LEVEL.STRICT, find_groups=True
        )
        parsed.validate()  # parsing alone checks little: structure and cardinality are checked here
    except Exception as error:
        raise Refused(
            "AE", f"conformance (hl7apy strict): {error}"[:200], acks.REQUIRED_FIELD_MISSING
        ) from error


@dataclass(frozen=True)
class ChannelConfig:
    channels: tuple[Channel, ...]
    source: str = "built-in"

    def select(self, header: Header) -> Channel:
        """The first channel (file-name order) taking this sender and type, or `Refused` AR."""
        by_sender = [c for c in self.channels if c.accepts_sender(header)]
        if not by_sender:
            raise Refused(
                "AR",
                f"no channel accepts sender {header.sending_application}/{header.sending_facility}",
                acks.UNKNOWN_KEY,
                "MSH^1^3",
            )
        for channel in by_sender:
            if channel.accepts_type(header):
                return channel
        names = ", ".join(c.name for c in by_sender)
        raise Refused(
            "AR",
            f"message type {header.message_type} not accepted by channel {names}",
            acks.UNSUPPORTED_MESSAGE_TYPE,
            "MSH^1^9",
        )

    def by_name(self, name: str) -> Channel:
        for channel in self.channels:
            if channel.name == name:
                return channel
        raise KeyError(f"no channel named {name!r} (have: {', '.join(c.name for c in self.channels)})")


@cache
def builtin() -> ChannelConfig:
    """The default channel shipped with radflow (IHE Scheduled Workflow feeds)."""
    return load_channels(DEFAULTS)


def load_channels(folder: Path | None) -> ChannelConfig:
    """`folder/channels/*.yaml` in file-name order, with `folder/code_tables.yaml`; the
    built-in defaults when the folder or its channels are absent."""
    if folder is None or not (folder / "channels").is_dir() or not any((folder / "channels").glob("*.yaml")):
        return builtin() if folder != DEFAULTS else _load(DEFAULTS)
    return _load(folder)


def _load(folder: Path) -> ChannelConfig:
    shared: dict[str, dict[str, Any]] = {}
    tables_file = folder / "code_tables.yaml"
    if tables_file.exists():
        doc = load(tables_file)
        shared = _tables(doc, doc.data, ())
    channels: list[Channel] = []
    seen: dict[str, str] = {}
    for file in sorted((folder / "channels").glob("*.yaml")):
        doc = load(file)
        channel = _channel(doc, shared)
        if channel.name in seen:
            raise doc.error(
                ("name",), f"duplicate channel name {channel.name!r} (also in {seen[channel.name]})"
            )
        seen[channel.name] = str(file)
        channels.append(channel)
    return ChannelConfig(tuple(channels), str(folder))


def _tables(doc: Loaded, data: Any, at: tuple[str | int, ...]) -> dict[str, dict[str, Any]]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise doc.error(at, "code tables must be a mapping of table name -> {code: value}")
    tables: dict[str, dict[str, Any]] = {}
    for name, table in data.items():
        if not isinstance(table, dict):
            raise doc.error((*at, name), "a code table must be a mapping of code -> value")
        for code, entry in table.items():
            if name == "procedures":
                if not isinstance(entry, dict):
                    raise doc.error(
                        (*at, name, code), "a procedure needs {description, modality, cpt, duration_min}"
                    )
                for key in entry:
                    if key not in PROCEDURE_KEYS:
                        raise doc.error(
                            (*at, name, code, key),
                            f"unknown key (allowed: {', '.join(sorted(PROCEDURE_KEYS))})",
                        )
                if "duration_min" in entry and not isinstance(entry["duration_min"], int):
                    raise doc.error((*at, name, code, "duration_min"), "must be a whole number of minutes")
            elif isinstance(entry, (list, dict)) and not (isinstance(entry, dict) and "value" in entry):
                raise doc.error((*at, name, code), "a code maps to a plain value (or {value: ...})")
        tables[str(name)] = {str(k): v for k, v in table.items()}
    return tables


def _strings(doc: Loaded, data: Any, at: tuple[str | int, ...]) -> tuple[str, ...]:
    if isinstance(data, (str, int, float)):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(v, (str, int, float)) for v in data):
        raise doc.error(at, "must be a list of strings")
    return tuple(str(v) for v in data)


def _path(doc: Loaded, text: Any, at: tuple[str | int, ...]) -> FieldPath:
    try:
        return FieldPath.parse(str(text))
    except PathSyntaxError as error:
        raise doc.error(at, str(error)) from error


def _paths(doc: Loaded, data: Any, at: tuple[str | int, ...]) -> tuple[FieldPath, ...]:
    items = data if isinstance(data, list) else [data]
    return tuple(_path(doc, item, (*at, i) if isinstance(data, list) else at) for i, item in enumerate(items))


def _channel(doc: Loaded, shared: dict[str, dict[str, Any]]) -> Channel:
    data = doc.data
    if not isinstance(data, dict):
        raise doc.error((), "a channel file must be a mapping (name:, senders:, fields:, ...)")
    for key in data:
        if key not in CHANNEL_KEYS:
            raise doc.error((key,), f"unknown key (allowed: {', '.join(sorted(CHANNEL_KEYS))})")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise doc.error(("name",), "every channel needs a name")
    senders: list[Sender] = []
    raw_senders = data.get("senders") or []
    if not isinstance(raw_senders, list):
        raise doc.error(("senders",), "must be a list of {application, facility}")
    for i, item in enumerate(raw_senders):
        if not isinstance(item, dict) or set(item) - {"application", "facility"}:
            raise doc.error(("senders", i), "each sender is {application: ..., facility: ...} (* wildcards)")
        senders.append(Sender(str(item.get("application", "*")), str(item.get("facility", "*"))))
    validation = data.get("validation", "tolerant")
    if validation not in ("tolerant", "strict"):
        raise doc.error(("validation",), "must be tolerant or strict")
    profile = data.get("profile") or ""
    if profile and profile not in PROFILES:
        raise doc.error(("profile",), f"unknown profile (available: {', '.join(PROFILES)})")
    ack = data.get("ack") or {}
    if not isinstance(ack, dict) or set(ack) - {"mode"} or ack.get("mode", ACK_MODES[1]) not in ACK_MODES:
        raise doc.error(("ack",), f"must be {{mode: {' | '.join(ACK_MODES)}}}")
    tables = dict(shared)
    tables.update(_tables(doc, data.get("code_tables"), ("code_tables",)))
    return Channel(
        name=name,
        file=str(doc.file),
        senders=tuple(senders),
        message_types=_strings(doc, data["message_types"], ("message_types",))
        if "message_types" in data
        else (),
        versions=_strings(doc, data["versions"], ("versions",)) if "versions" in data else (),
        validation=validation,
        required=_paths(doc, data.get("required") or [], ("required",)),
        profile=profile,
        fields=_fields(doc, data.get("fields") or {}, tables),
        tables=tables,
        ack_mode=ack.get("mode", ACK_MODES[1]),
    )


def _fields(doc: Loaded, data: Any, tables: Mapping[str, Any]) -> dict[str, dict[str, FieldRule]]:
    if not isinstance(data, dict):
        raise doc.error(("fields",), "must be a mapping of command.field -> rule")
    result: dict[str, dict[str, FieldRule]] = {}
    for target, spec in data.items():
        at = ("fields", target)
        kind, _, name = target.partition(".")
        if kind not in _FIELD_TYPES:
            raise doc.error(at, f"unknown command {kind!r} (known: {', '.join(sorted(_FIELD_TYPES))})")
        sub = name.split(".", 1)[1] if name.startswith("patient.") else None
        if sub is not None:
            if "patient" not in _FIELD_TYPES[kind] or sub not in _PATIENT_FIELDS:
                raise doc.error(at, f"unknown domain field {target!r}")
        elif (
            name not in _FIELD_TYPES[kind]
            or "dict" in _FIELD_TYPES[kind][name]
            or "tuple" in _FIELD_TYPES[kind][name]
            or name == "patient"
        ):
            plain = [f for f, t in _FIELD_TYPES[kind].items() if t in ("str", "int")]
            raise doc.error(at, f"unknown domain field {name!r} of {kind} (settable: {', '.join(plain)})")
        if isinstance(spec, str):
            spec = {"path": spec}
        if not isinstance(spec, dict):
            raise doc.error(at, "a rule is a path or {path|concat, separator, normalise, table, default}")
        for key in spec:
            if key not in RULE_KEYS:
                raise doc.error((*at, key), f"unknown key (allowed: {', '.join(sorted(RULE_KEYS))})")
        if ("path" in spec) == ("concat" in spec) and "default" not in spec:
            raise doc.error(at, "needs exactly one of path: or concat:")
        normalisers = _strings(doc, spec["normalise"], (*at, "normalise")) if "normalise" in spec else ()
        for n in normalisers:
            if n not in NORMALISERS:
                raise doc.error(
                    (*at, "normalise"), f"unknown normaliser {n!r} (known: {', '.join(NORMALISERS)})"
                )
        table = str(spec.get("table", ""))
        if table and table not in tables:
            raise doc.error(
                (*at, "table"),
                f"unknown code table {table!r} (defined: {', '.join(sorted(tables)) or 'none'})",
            )
        separator = spec.get("separator", " ")
        if not isinstance(separator, str):
            raise doc.error((*at, "separator"), "must be a string")
        default = spec.get("default")
        rule = FieldRule(
            paths=_paths(doc, spec["path"], (*at, "path")) if "path" in spec else (),
            concat=_paths(doc, spec["concat"], (*at, "concat")) if "concat" in spec else (),
            separator=separator,
            normalise=normalisers,
            table=table,
            default=None if default is None else str(default),
        )
        result.setdefault(kind, {})[name] = rule
    return result
