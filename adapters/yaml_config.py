"""YAML configuration files that keep line numbers, so a validation error can say
"file:line: key: problem" instead of a bare "invalid value".

`load(path)` composes the file into nodes and returns a `Loaded`: plain Python data plus the
line of every key path (`("channels", 0, "port")`). `ConfigError` is the one error type config
loaders raise; `radflow listen`/`worker` turn it into exit code 2."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KeyPath = tuple[str | int, ...]


class ConfigError(Exception):
    """A configuration file is unreadable or invalid; names file, line and key."""

    def __init__(self, file: Path | str, line: int, key: str, problem: str) -> None:
        self.file = str(file)
        self.line = line
        self.key = key
        self.problem = problem
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.problem}" if self.key else f"{where}: {self.problem}"


@dataclass
class Loaded:
    """A YAML document as plain data, with the line (1-based) of each key path."""

    file: Path
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def line(self, path: KeyPath) -> int:
        """Line of `path`, or of its nearest recorded ancestor (0 when nothing is known)."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 0)

    def error(self, path: KeyPath, problem: str) -> ConfigError:
        return ConfigError(self.file, self.line(path), dotted(path), problem)


def dotted(path: KeyPath) -> str:
    """("channels", 0, "port") -> "channels[0].port"."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load(file: Path) -> Loaded:
    """Read and compose `file`; raises ConfigError for unreadable or malformed YAML."""
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(file, 0, "", f"cannot read: {error.strerror or error}") from error
    return loads(text, file)


def loads(text: str, file: Path | str = "<string>") -> Loaded:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise ConfigError(file, line, "", f"not valid YAML: {getattr(error, 'problem', error)}") from error
    loaded = Loaded(Path(file), None)
    if node is None:
        return loaded
    loaded.data = _walk(node, (), loaded)
    return loaded


def _walk(node: yaml.Node, path: KeyPath, loaded: Loaded) -> Any:
    loaded.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in out:
                raise ConfigError(
                    loaded.file, key_node.start_mark.line + 1, dotted((*path, key)), "duplicate key"
                )
            loaded.lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _walk(value_node, (*path, key), loaded)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, (*path, i), loaded) for i, item in enumerate(node.value)]
    return yaml.SafeLoader("").construct_object(node, deep=True)  # type: ignore[no-untyped-call]
