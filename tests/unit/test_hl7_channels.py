"""Channels as configuration: the loader refuses bad files naming file, line and key; a message
goes to the first channel taking its sender and type; overrides and code tables change the
commands the base mapping produced; strict channels refuse what tolerant ones only warn about."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.yaml_config import ConfigError
from interfaces.hl7.channels import ChannelConfig, builtin, load_channels
from interfaces.hl7.intake import interpret
from tests.unit.hl7_builders import ipc, message, msh, obr, orc, pid, segment, zds

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "config"
RECEIVED_AT = "2024-03-15T09:00:00+00:00"


def site(tmp_path: Path, channels: dict[str, str], tables: str = "") -> Path:
    (tmp_path / "channels").mkdir()
    for name, text in channels.items():
        (tmp_path / "channels" / name).write_text(text)
    if tables:
        (tmp_path / "code_tables.yaml").write_text(tables)
    return tmp_path


def orm(
    sender: str = "EPIC", facility: str = "MAIN", version: str = "2.5.1", *orders: str, control_id: str = "C1"
) -> bytes:
    body = orders or (orc(priority="S"), obr(accession="A1", procedure="CTHEAD", modality="cat"))
    return message(
        msh(sending_application=sender, sending_facility=facility, version=version, control_id=control_id),
        pid(),
        *body,
    ).encode()


def place_orders(raw: bytes, config: ChannelConfig) -> list[dict[str, object]]:
    inbound = interpret(raw, "peer", RECEIVED_AT, config)
    assert inbound.refusal is None, inbound.refusal
    return [e["command"] for e in inbound.commands if e["command"]["kind"] == "place_order"]


def test_missing_folder_or_no_channel_files_means_the_built_in_default(tmp_path: Path) -> None:
    assert load_channels(None) is builtin()
    assert load_channels(tmp_path / "absent") is builtin()
    assert [c.name for c in builtin().channels] == ["default"]
    assert builtin().channels[0].is_plain


def test_the_example_site_config_loads_in_file_name_order() -> None:
    config = load_channels(EXAMPLES)
    assert [c.name for c in config.channels] == ["ris-main", "any-other"]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("name: a\ncolour: red\n", 2, "colour: unknown key"),
        ("name: a\nvalidation: picky\n", 2, "validation: must be tolerant or strict"),
        (
            "name: a\nfields:\n  place_order.modality: {path: OBR24}\n",
            3,
            "fields.place_order.modality.path: bad HL7 path 'OBR24'",
        ),
        (
            "name: a\nfields:\n  place_order.colour: {path: OBR-24}\n",
            3,
            "unknown domain field 'colour' of place_order",
        ),
        ("name: a\nfields:\n  fly_plane.modality: OBR-24\n", 3, "unknown command 'fly_plane'"),
        (
            "name: a\nfields:\n\n  place_order.modality:\n    path: OBR-24\n    table: nope\n",
            6,
            "unknown code table 'nope'",
        ),
        (
            "name: a\nfields:\n  place_order.modality: {path: OBR-24, normalise: shout}\n",
            3,
            "unknown normaliser 'shout'",
        ),
        ("name: a\nsenders: EPIC\n", 2, "senders: must be a list"),
        ("name: a\nversions: {x: 1}\n", 2, "versions: must be a list of strings"),
        ("name: a\nack: {mode: loud}\n", 2, "ack: must be"),
        ("senders: []\n", 1, "name: every channel needs a name"),
    ],
)
def test_a_bad_channel_file_is_refused_naming_file_line_and_key(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    folder = site(tmp_path, {"10-a.yaml": text})
    with pytest.raises(ConfigError) as caught:
        load_channels(folder)
    assert f"{folder / 'channels' / '10-a.yaml'}:{line}: " in str(caught.value)
    assert message in str(caught.value)


def test_duplicate_channel_names_and_bad_code_tables_are_refused(tmp_path: Path) -> None:
    folder = site(tmp_path, {"10-a.yaml": "name: a\n", "20-b.yaml": "# again\nname: a\n"})
    with pytest.raises(ConfigError, match=r"20-b.yaml:2: name: duplicate channel name 'a'"):
        load_channels(folder)
    (folder / "channels" / "20-b.yaml").write_text("name: b\n")
    (folder / "code_tables.yaml").write_text("procedures:\n  CT1:\n    description: x\n    price: 3\n")
    with pytest.raises(ConfigError, match=r"code_tables.yaml:4: procedures.CT1.price: unknown key"):
        load_channels(folder)


def test_selection_by_sender_then_type_and_ar_for_senders_nobody_takes(tmp_path: Path) -> None:
    folder = site(
        tmp_path,
        {
            "10-epic.yaml": "name: epic\nsenders: [{application: EPIC*, facility: MAIN}]\nmessage_types: ['ADT^A*']\n",
            "20-epic-orders.yaml": "name: epic-orders\nsenders: [{application: EPIC*}]\nmessage_types: ['ORM^O01']\n",
            "30-lab.yaml": "name: lab\nsenders: [{application: LAB}]\nmessage_types: ['ADT^A*']\n",
        },
    )
    config = load_channels(folder)
    assert interpret(orm("EPIC2", "MAIN"), "peer", RECEIVED_AT, config).channel == "epic-orders"
    refused = interpret(orm("LAB", "X"), "peer", RECEIVED_AT, config)
    assert refused.refusal == ("AR", "message type ORM^O01 not accepted by channel lab")
    nobody = interpret(orm("PACS", "X"), "peer", RECEIVED_AT, config)
    assert nobody.refusal == ("AR", "no channel accepts sender PACS/X")
    ack = nobody.build_ack(*nobody.refusal).decode()
    assert "MSA|AR|C1|" in ack and "|204^Unknown key identifier^HL70357|" in ack


def test_a_version_the_channel_does_not_take_is_ar_with_err_203(tmp_path: Path) -> None:
    config = load_channels(site(tmp_path, {"a.yaml": "name: modern\nversions: ['2.5', '2.5.1']\n"}))
    inbound = interpret(orm(version="2.3"), "peer", RECEIVED_AT, config)
    assert inbound.refusal == ("AR", "HL7 version 2.3 not accepted by channel modern")
    ack = inbound.build_ack(*inbound.refusal).decode()
    assert "|MSH^1^12|203^Unsupported version id^HL70357|" in ack


def test_overrides_and_code_tables_change_the_mapped_order() -> None:
    config = load_channels(EXAMPLES)
    raw = message(
        msh(sending_application="EPIC", sending_facility="MAIN"),
        pid(),
        orc(priority="S"),
        segment("OBR", {1: "1", 4: "CTHEAD", 16: "123^HOUSE^GREGORY", 18: "A1", 24: "cat"}),
        zds("1.2.840.99"),
    ).encode()
    [order] = place_orders(raw, config)
    assert order["modality"] == "CT"  # upper + modality_aliases: 'cat' -> 'CT'
    assert order["referring_physician"] == "HOUSE GREGORY"  # concat OBR-16.2, OBR-16.3
    assert order["study_instance_uid"] == "1.2.840.99"
    assert order["priority"] == "STAT"  # ORC-7.6 'S' through the priorities table
    assert order["procedure_text"] == "CT head without contrast"  # filled from procedures table
    assert order["placer_order_number"] == "PL0001"


def test_multi_order_messages_read_each_orders_own_group() -> None:
    config = load_channels(EXAMPLES)
    raw = message(
        msh(sending_application="EPIC", sending_facility="MAIN"),
        pid(),
        orc(placer="P1", priority="R"),
        obr(accession="A1", procedure="CTHEAD", modality="CAT"),
        zds("1.1"),
        orc(placer="P2", priority="S"),
        obr(accession="A2", procedure="MRBRAIN", modality="MRI"),
        zds("2.2"),
    ).encode()
    orders = place_orders(raw, config)
    assert [(o["accession"], o["modality"], o["study_instance_uid"], o["priority"]) for o in orders] == [
        ("A1", "CT", "1.1", "ROUTINE"),
        ("A2", "MR", "2.2", "STAT"),
    ]


def test_strict_channel_refuses_empty_required_fields_and_unknown_procedures_with_ae() -> None:
    config = load_channels(EXAMPLES)
    no_birth_date = message(
        msh(sending_application="EPIC", sending_facility="MAIN"),
        pid(birth_date=""),
        orc(),
        obr(accession="A1", procedure="CTHEAD"),
    ).encode()
    inbound = interpret(no_birth_date, "peer", RECEIVED_AT, config)
    assert inbound.refusal == ("AE", "required field PID-7 is empty (channel ris-main)")
    assert "|PID^1^7|101^Required field missing^HL70357|" in inbound.build_ack(*inbound.refusal).decode()
    unknown = orm("EPIC", "MAIN", "2.5.1", orc(), obr(accession="A1", procedure="XYZ^Mystery"))
    refused = interpret(unknown, "peer", RECEIVED_AT, config)
    assert refused.refusal == ("AE", "procedure code XYZ is not in channel ris-main's procedure table")


def test_tolerant_channel_accepts_what_strict_refuses(tmp_path: Path) -> None:
    folder = site(tmp_path, {"a.yaml": "name: lenient\nrequired: [PID-7]\n"})
    raw = message(msh(), pid(birth_date=""), orc(), obr(accession="A1"), ipc()).encode()
    inbound = interpret(raw, "peer", RECEIVED_AT, load_channels(folder))
    assert inbound.refusal is None and inbound.channel == "lenient"
    applied = load_channels(folder).channels[0]
    assert applied.validation == "tolerant"


def test_the_built_in_channel_leaves_the_base_mapping_untouched() -> None:
    raw = orm("ANY", "WHERE")
    with_default = interpret(raw, "peer", RECEIVED_AT)
    explicit = interpret(raw, "peer", RECEIVED_AT, builtin())
    assert with_default.channel == explicit.channel == "default"
    assert with_default.commands == explicit.commands


def test_the_hl7apy_strict_profile_refuses_a_structurally_invalid_message_with_ae(tmp_path: Path) -> None:
    config = load_channels(site(tmp_path, {"a.yaml": "name: conformant\nprofile: hl7apy-strict\n"}))
    header = "MSH|^~\\&|HIS|GEN|RAD|RAD|20240315103000||ADT^A01^ADT_A01|C1|P|2.5"
    complete = f"{header}\rEVN|A01|20240315103000\rPID|1||P1^^^HOSP||DOE^JANE\rPV1|1|I".encode()
    assert interpret(complete, "peer", RECEIVED_AT, config).refusal is None
    without_pv1 = f"{header}\rEVN|A01|20240315103000\rPID|1||P1^^^HOSP||DOE^JANE".encode()
    refusal = interpret(without_pv1, "peer", RECEIVED_AT, config).refusal
    assert refusal is not None and refusal[0] == "AE" and "ADT_A01.PV1" in refusal[1]


def test_warnings_and_procedure_table_facts_are_on_the_inbound_for_the_dry_run(tmp_path: Path) -> None:
    folder = site(
        tmp_path,
        {"a.yaml": "name: lenient\nrequired: [PID-7]\n"},
        tables="procedures:\n  CTHEAD: {description: CT head, modality: CT, cpt: '70450', duration_min: 15}\n",
    )
    raw = message(msh(), pid(birth_date=""), orc(), obr(accession="A1", procedure="CTHEAD")).encode()
    inbound = interpret(raw, "peer", RECEIVED_AT, load_channels(folder))
    assert inbound.refusal is None
    assert inbound.warnings == [
        "required field PID-7 is empty (channel lenient)",
        "procedure CTHEAD (accession A1): CPT 70450, 15 min",
    ]
    [entry] = inbound.commands
    assert (entry["command"]["modality"], entry["command"]["procedure_text"]) == ("CT", "CT head")


def test_refused_orders_keep_their_order_numbers_for_the_browser(tmp_path: Path) -> None:
    folder = site(tmp_path, {"a.yaml": "name: only-lab\nsenders: [{application: LAB}]\n"})
    raw = message(msh(), pid(), orc(placer="PL9", filler="FL9"), obr(accession="A9")).encode()
    inbound = interpret(raw, "peer", RECEIVED_AT, load_channels(folder))
    assert inbound.refusal is not None and inbound.refusal[0] == "AR"
    assert (inbound.placer_order_number, inbound.filler_order_number) == ("PL9", "FL9")
    accepted = interpret(raw, "peer", RECEIVED_AT)
    assert (accepted.placer_order_number, accepted.filler_order_number) == ("PL9", "FL9")
