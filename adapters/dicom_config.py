"""Who radflow's DICOM AE talks to: the peers C-MOVE may send to (AE title -> host, port) and
which calling AE titles may associate from where.

From a YAML file the site keeps in git (`RADFLOW_DICOM_CONFIG`) and, for peers, also from
`RADFLOW_DICOM_PEERS="AET=host:port,AET2=host:port"` (the environment wins on a clash).
Example file::

    peers:
      VIEWER1: {host: 10.0.0.21, port: 104}
    allowed_callers:          # absent: accept every calling AE (the embedded default)
      - ae_title: CT1
        hosts: [10.0.0.11]    # absent or empty: from any host
      - ae_title: VIEWER1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class DicomConfigError(ValueError):
    """The configuration names what is wrong and where; radflow refuses to start on it."""


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class AllowedCaller:
    ae_title: str
    hosts: tuple[str, ...] = ()  # empty: any host


@dataclass(frozen=True)
class DicomConfig:
    peers: dict[str, Peer] = field(default_factory=dict)
    allowed_callers: tuple[AllowedCaller, ...] | None = None  # None: accept all

    def refusal(self, calling_ae: str, host: str) -> str:
        """Why an association from (calling AE, host) is refused; empty when it is accepted."""
        if self.allowed_callers is None:
            return ""
        for caller in self.allowed_callers:
            if caller.ae_title == calling_ae.strip():
                if caller.hosts and host not in caller.hosts:
                    return f"calling AE {calling_ae.strip()!r} is not allowed from {host}"
                return ""
        return f"calling AE {calling_ae.strip()!r} is not in the allow-list"


def _ae_title(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > 16 or "\\" in value:
        raise DicomConfigError(f"{where}: AE title must be 1-16 characters without backslash, got {value!r}")
    return value.strip()


def _port(value: Any, where: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise DicomConfigError(f"{where}: port must be a number, got {value!r}") from None
    if not 0 < port < 65536:
        raise DicomConfigError(f"{where}: port {port} out of range")
    return port


def parse_peers_env(text: str) -> dict[str, Peer]:
    """`AET=host:port,AET2=host:port` (RADFLOW_DICOM_PEERS)."""
    peers: dict[str, Peer] = {}
    for position, entry in enumerate(filter(None, (e.strip() for e in text.split(","))), start=1):
        where = f"RADFLOW_DICOM_PEERS entry {position} ({entry!r})"
        title, equals, address = entry.partition("=")
        host, colon, port = address.rpartition(":")
        host = host.strip()
        if not equals or not colon or not host:
            raise DicomConfigError(f"{where}: expected AET=host:port")
        ae = _ae_title(title, where)
        peers[ae] = Peer(ae, host, _port(port, where))
    return peers


def parse_config(data: Any, source: str) -> DicomConfig:
    if data is None:
        return DicomConfig()
    if not isinstance(data, dict):
        raise DicomConfigError(f"{source}: expected a mapping at the top level")
    unknown = set(data) - {"peers", "allowed_callers"}
    if unknown:
        raise DicomConfigError(f"{source}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    peers: dict[str, Peer] = {}
    if not isinstance(data.get("peers") or {}, dict):
        raise DicomConfigError(f"{source}: peers must be a mapping of AE title to {{host: ..., port: ...}}")
    for title, entry in (data.get("peers") or {}).items():
        where = f"{source}: peers.{title}"
        if not isinstance(entry, dict) or "host" not in entry or "port" not in entry:
            raise DicomConfigError(f"{where}: expected {{host: ..., port: ...}}")
        ae = _ae_title(title, where)
        peers[ae] = Peer(ae, str(entry["host"]), _port(entry["port"], where))
    callers: tuple[AllowedCaller, ...] | None = None
    if "allowed_callers" in data:
        entries = data["allowed_callers"] or []
        if not isinstance(entries, list):
            raise DicomConfigError(f"{source}: allowed_callers must be a list")
        parsed = []
        for index, entry in enumerate(entries):
            where = f"{source}: allowed_callers[{index}]"
            if not isinstance(entry, dict) or "ae_title" not in entry:
                raise DicomConfigError(f"{where}: expected {{ae_title: ..., hosts: [...]}}")
            hosts = entry.get("hosts") or []
            if not isinstance(hosts, list):
                raise DicomConfigError(f"{where}.hosts: must be a list")
            parsed.append(AllowedCaller(_ae_title(entry["ae_title"], where), tuple(str(h) for h in hosts)))
        callers = tuple(parsed)
    return DicomConfig(peers=peers, allowed_callers=callers)


def load_dicom_config(config_file: Path | None, peers_env: str = "") -> DicomConfig:
    config = DicomConfig()
    if config_file is not None:
        try:
            text = config_file.read_text(encoding="utf-8")
        except OSError as error:
            raise DicomConfigError(f"{config_file}: cannot read ({error.strerror})") from error
        except UnicodeDecodeError as error:
            raise DicomConfigError(f"{config_file}: not UTF-8 text ({error})") from error
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise DicomConfigError(f"{config_file}{line}: not valid YAML ({error})") from error
        config = parse_config(data, str(config_file))
    if peers_env:
        config = DicomConfig(
            peers={**config.peers, **parse_peers_env(peers_env)}, allowed_callers=config.allowed_callers
        )
    return config
