"""YAML config files keep the line of every key, so errors can name file:line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.yaml_config import ConfigError, load, loads


def test_every_key_and_list_item_has_its_line() -> None:
    loaded = loads("a: 1\nb:\n  - x: yes\n    y: [1, 2]\n  - 3\nc: text\n", "f.yaml")
    assert loaded.data == {"a": 1, "b": [{"x": True, "y": [1, 2]}, 3], "c": "text"}
    assert loaded.line(("b", 0, "y")) == 4
    assert loaded.line(("b", 1)) == 5
    assert loaded.line(("c", "missing", "deeper")) == 6  # nearest ancestor


def test_an_error_names_file_line_and_dotted_key() -> None:
    loaded = loads("fields:\n  place_order.modality:\n    table: nope\n", "chan.yaml")
    error = loaded.error(("fields", "place_order.modality", "table"), "unknown code table")
    assert str(error) == "chan.yaml:3: fields.place_order.modality.table: unknown code table"
    assert (error.file, error.line) == ("chan.yaml", 3)


def test_a_duplicate_key_is_an_error_at_its_second_line() -> None:
    with pytest.raises(ConfigError, match=r"^dup.yaml:3: a: duplicate key$"):
        loads("a: 1\nb: 2\na: 3\n", "dup.yaml")


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("name: x\nsenders: [a, b\nother: 1\n")
    with pytest.raises(ConfigError) as caught:
        load(file)
    assert caught.value.file == str(file) and caught.value.line >= 2


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "absent.yaml")
