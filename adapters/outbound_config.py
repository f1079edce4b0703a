"""Where radflow sends HL7: the destinations in `<hl7_config_dir>/destinations.yaml`, a file the
site keeps in git. No file, no destinations: nothing is sent. Example::

    destinations:
      - name: RIS_A               # MSH-5 of what it gets; also the queue's name
        facility: HOSP            # MSH-6
        host: 10.0.0.5
        port: 2575
        tls: {ca: /etc/radflow/ca.pem, cert: ..., key: ..., verify: true}   # optional
        events: [order_status, report]   # order_status -> ORM^O01 (ORC-1 SC) on every exam
                                  # state change; report -> ORU^R01 on every issued report
                                  # (preliminary P, final F, addendum / correction C). DFT later
        filters:                  # each absent or empty: no filter
          modality: [CT, MR]
          patient_class: [I, O, E]
          sending_application: [HIS]   # MSH-3 of the order that created the exam
        max_attempts: 8
        backoff: {initial_s: 1, max_s: 300}
        on_ae: retry              # retry | dead_letter
        on_ar: dead_letter
        ack_timeout_s: 10

Errors name the file, the line and the key (`destinations[1].port`); `radflow worker` refuses
to start on them. Written without `adapters/yaml_config.py` (not there yet when this was
written): the YAML is composed into nodes so each value keeps its line. TLS contexts come
from adapters/tls.py and are built while loading, so a bad certificate is a load error too.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adapters.tls import TlsConfigError, client_context

FILE_NAME = "destinations.yaml"
EVENT_MESSAGE_TYPES = {"order_status": "ORM^O01", "report": "ORU^R01"}
POLICIES = ("retry", "dead_letter")
FILTER_KEYS = ("modality", "patient_class", "sending_application")


class OutboundConfigError(ValueError):
    """The file is wrong; the message says where (file, line, key) and why."""


@dataclass(frozen=True)
class TlsOptions:
    ca: str = ""
    cert: str = ""
    key: str = ""
    verify: bool = True

    def client_context(self) -> ssl.SSLContext:
        """The client context for this destination (mutual TLS when cert/key are given)."""
        return client_context(self.ca or None, self.cert or None, self.key or None, verify=self.verify)


@dataclass(frozen=True)
class Destination:
    name: str
    host: str
    port: int
    facility: str = ""
    events: tuple[str, ...] = ("order_status",)
    modality: tuple[str, ...] = ()
    patient_class: tuple[str, ...] = ()
    sending_application: tuple[str, ...] = ()
    max_attempts: int = 8
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 300.0
    on_ae: str = "retry"
    on_ar: str = "dead_letter"
    ack_timeout_s: float = 10.0
    tls: TlsOptions | None = None

    def wants(self, event: str, *, modality: str, patient_class: str, sending_application: str) -> bool:
        """Whether this destination gets this event for an exam with these attributes."""
        checks = (
            (self.modality, modality),
            (self.patient_class, patient_class),
            (self.sending_application, sending_application),
        )
        return event in self.events and all(not allowed or value in allowed for allowed, value in checks)

    def policy_for(self, ack_code: str) -> str:
        """What an AE/AR (or CE/CR) answer does to the message: retry or dead_letter."""
        return self.on_ar if ack_code in ("AR", "CR") else self.on_ae

    def delivery_options(self) -> dict[str, Any]:
        """What the lane workflow needs to schedule attempts: it cannot read this file."""
        return {
            "max_attempts": self.max_attempts,
            "initial_backoff_s": self.initial_backoff_s,
            "max_backoff_s": self.max_backoff_s,
            "ack_timeout_s": self.ack_timeout_s,
        }


@dataclass(frozen=True)
class Destinations:
    items: tuple[Destination, ...] = ()
    source: str = ""

    def by_name(self, name: str) -> Destination | None:
        return next((d for d in self.items if d.name == name), None)

    def matching(
        self, event: str, *, modality: str, patient_class: str, sending_application: str
    ) -> list[Destination]:
        return [
            d
            for d in self.items
            if d.wants(
                event, modality=modality, patient_class=patient_class, sending_application=sending_application
            )
        ]


@dataclass
class _Reader:
    """Turns composed YAML nodes into values, raising errors that name file, line and key."""

    file: str
    errors: list[str] = field(default_factory=list)

    def fail(self, node: yaml.Node | None, key: str, why: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.errors.append(f"{self.file}:{line}: {key}: {why}")

    def mapping(self, node: yaml.Node, key: str) -> dict[str, yaml.Node] | None:
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, key, "must be a mapping")
            return None
        out: dict[str, yaml.Node] = {}
        for k, v in node.value:
            name = str(k.value)
            if name in out:
                self.fail(k, f"{key}.{name}" if key else name, "appears twice")
            out[name] = v
        return out

    def scalar(self, node: yaml.Node, key: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.fail(node, key, "must be a single value")
            return None
        return yaml.safe_load(yaml.serialize(node))

    def text(self, node: yaml.Node, key: str) -> str | None:
        value = self.scalar(node, key)
        if value is None or isinstance(value, (bool, dict, list)) or not str(value).strip():
            if value is not None or isinstance(node, yaml.ScalarNode):
                self.fail(node, key, "must be a non-empty text")
            return None
        return str(value).strip()

    def number(self, node: yaml.Node, key: str, *, integer: bool, low: float, high: float) -> Any:
        value = self.scalar(node, key)
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
            self.fail(node, key, f"must be a {'whole ' if integer else ''}number from {low:g} to {high:g}")
            return None
        return value

    def texts(self, node: yaml.Node, key: str) -> tuple[str, ...]:
        if isinstance(node, yaml.ScalarNode) and node.value in ("", "~", "null"):
            return ()
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, key, "must be a list")
            return ()
        values = [self.text(item, f"{key}[{i}]") for i, item in enumerate(node.value)]
        return tuple(v for v in values if v is not None)

    def choice(self, node: yaml.Node, key: str, allowed: Sequence[str]) -> str | None:
        value = self.text(node, key)
        if value is not None and value not in allowed:
            self.fail(node, key, f"must be one of {', '.join(allowed)} (got {value!r})")
            return None
        return value


_KNOWN = {
    "name",
    "facility",
    "host",
    "port",
    "tls",
    "events",
    "filters",
    "max_attempts",
    "backoff",
    "on_ae",
    "on_ar",
    "ack_timeout_s",
}


def _destination(r: _Reader, node: yaml.Node, key: str) -> Destination | None:
    fields_ = r.mapping(node, key)
    if fields_ is None:
        return None
    before = len(r.errors)
    for name, value in fields_.items():
        if name not in _KNOWN:
            r.fail(value, f"{key}.{name}", f"unknown key (known: {', '.join(sorted(_KNOWN))})")
    for required in ("name", "host", "port"):
        if required not in fields_:
            r.fail(node, f"{key}.{required}", "is required")
    values: dict[str, Any] = {}
    if "name" in fields_:
        given = r.text(fields_["name"], f"{key}.name")
        if given is not None and not all(c.isalnum() or c in "_-." for c in given):
            r.fail(fields_["name"], f"{key}.name", "may hold only letters, digits, '_', '-' and '.'")
        values["name"] = given
    for text_key in ("host", "facility"):
        if text_key in fields_:
            values[text_key] = r.text(fields_[text_key], f"{key}.{text_key}")
    if "port" in fields_:
        values["port"] = r.number(fields_["port"], f"{key}.port", integer=True, low=1, high=65535)
    if "events" in fields_:
        events = r.texts(fields_["events"], f"{key}.events")
        for i, name in enumerate(events):
            if name not in EVENT_MESSAGE_TYPES:
                r.fail(
                    fields_["events"],
                    f"{key}.events[{i}]",
                    f"unknown event {name!r} (known: {', '.join(EVENT_MESSAGE_TYPES)})",
                )
        values["events"] = events
    if "filters" in fields_:
        filters = r.mapping(fields_["filters"], f"{key}.filters") or {}
        for name, value in filters.items():
            if name not in FILTER_KEYS:
                r.fail(value, f"{key}.filters.{name}", f"unknown filter (known: {', '.join(FILTER_KEYS)})")
                continue
            values[name] = r.texts(value, f"{key}.filters.{name}")
    if "max_attempts" in fields_:
        values["max_attempts"] = r.number(
            fields_["max_attempts"], f"{key}.max_attempts", integer=True, low=1, high=1000
        )
    if "backoff" in fields_:
        backoff = r.mapping(fields_["backoff"], f"{key}.backoff") or {}
        for name, value in backoff.items():
            if name not in ("initial_s", "max_s"):
                r.fail(value, f"{key}.backoff.{name}", "unknown key (known: initial_s, max_s)")
                continue
            number = r.number(value, f"{key}.backoff.{name}", integer=False, low=0.01, high=86400)
            values["initial_backoff_s" if name == "initial_s" else "max_backoff_s"] = number
    for policy in ("on_ae", "on_ar"):
        if policy in fields_:
            values[policy] = r.choice(fields_[policy], f"{key}.{policy}", POLICIES)
    if "ack_timeout_s" in fields_:
        values["ack_timeout_s"] = r.number(
            fields_["ack_timeout_s"], f"{key}.ack_timeout_s", integer=False, low=0.05, high=3600
        )
    if "tls" in fields_:
        values["tls"] = _tls(r, fields_["tls"], f"{key}.tls")
    if len(r.errors) > before or any(v is None for k, v in values.items() if k != "tls"):
        return None
    destination = Destination(**values)
    if destination.initial_backoff_s > destination.max_backoff_s:
        r.fail(fields_.get("backoff"), f"{key}.backoff", "initial_s must not exceed max_s")
        return None
    return destination


def _tls(r: _Reader, node: yaml.Node, key: str) -> TlsOptions | None:
    if isinstance(node, yaml.ScalarNode) and r.scalar(node, key) is True:
        return TlsOptions()
    fields_ = r.mapping(node, key)
    if fields_ is None:
        return None
    before = len(r.errors)
    values: dict[str, Any] = {}
    for name, value in fields_.items():
        if name in ("ca", "cert", "key"):
            path = r.text(value, f"{key}.{name}")
            if path is not None and not Path(path).is_file():
                r.fail(value, f"{key}.{name}", f"file {path} does not exist")
            values[name] = path or ""
        elif name == "verify":
            flag = r.scalar(value, f"{key}.verify")
            if not isinstance(flag, bool):
                r.fail(value, f"{key}.verify", "must be true or false")
            values["verify"] = bool(flag)
        else:
            r.fail(value, f"{key}.{name}", "unknown key (known: ca, cert, key, verify)")
    options = TlsOptions(**values)
    if len(r.errors) > before:
        return None
    try:  # built once here so a bad certificate or key stops the worker at start
        options.client_context()
    except (TlsConfigError, ssl.SSLError, OSError) as error:
        r.fail(node, key, str(error))
    return options


def parse_destinations(text: str, file: str = FILE_NAME) -> Destinations:
    """Parse and validate; every problem in the file is reported at once."""
    reader = _Reader(file)
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise OutboundConfigError(
            f"{file}:{line}: not valid YAML: {getattr(error, 'problem', error)}"
        ) from None
    if root is None:
        return Destinations(source=file)
    top = reader.mapping(root, "")
    items: list[Destination] = []
    if top is not None:
        for name, value in top.items():
            if name != "destinations":
                reader.fail(value, name, "unknown key (known: destinations)")
        listed = top.get("destinations")
        if listed is not None and not isinstance(listed, yaml.SequenceNode):
            reader.fail(listed, "destinations", "must be a list")
        elif listed is not None:
            seen: dict[str, int] = {}
            for i, node in enumerate(listed.value):
                destination = _destination(reader, node, f"destinations[{i}]")
                if destination is None:
                    continue
                if destination.name in seen:
                    reader.fail(
                        node,
                        f"destinations[{i}].name",
                        f"{destination.name!r} is already used by destinations[{seen[destination.name]}]",
                    )
                    continue
                seen[destination.name] = i
                items.append(destination)
    if reader.errors:
        raise OutboundConfigError("\n".join(reader.errors))
    return Destinations(items=tuple(items), source=file)


def load_destinations(config_dir: Path | None) -> Destinations:
    """`<config_dir>/destinations.yaml`; no folder or no file: no destinations."""
    if config_dir is None:
        return Destinations()
    path = config_dir / FILE_NAME
    if not path.is_file():
        return Destinations(source=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise OutboundConfigError(f"{path}:1: cannot read: {error}") from None
    return parse_destinations(text, str(path))
