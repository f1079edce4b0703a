"""C-GET role selection changes the association's contexts, never the server's, which every
association starts from (interfaces/dicom/server.py shares them instead of copying)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet  # type: ignore[attr-defined]

from adapters.dicom_config import DicomConfig
from adapters.sql import Database
from interfaces.dicom.query_retrieve import QueryRetrieve
from interfaces.dicom.server import _copy_contexts


def test_the_requesters_storage_role_is_granted_on_copies_of_the_servers_contexts() -> None:
    server_ct = build_context(
        CTImageStorage, [ImplicitVRLittleEndian, JPEGBaseline8Bit, ExplicitVRLittleEndian]
    )
    server_contexts = [server_ct, build_context(StudyRootQueryRetrieveInformationModelGet)]
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = CTImageStorage
    role.scp_role = True
    acceptor = SimpleNamespace(supported_contexts=_copy_contexts(server_contexts))
    requestor = SimpleNamespace(
        requested_contexts=[
            build_context(StudyRootQueryRetrieveInformationModelGet),
            build_context(CTImageStorage),
        ],
        role_selection={CTImageStorage: role},
    )
    event = SimpleNamespace(assoc=SimpleNamespace(acceptor=acceptor, requestor=requestor))

    QueryRetrieve("RADFLOW", DicomConfig(), cast(Database, None)).handle_requested(cast(Any, event))

    granted = next(c for c in acceptor.supported_contexts if c.abstract_syntax == CTImageStorage)
    assert (granted.scu_role, granted.scp_role) == (True, True)
    assert granted.transfer_syntax == [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit]
    assert (server_ct.scu_role, server_ct.scp_role) == (None, None)
    assert server_ct.transfer_syntax == [ImplicitVRLittleEndian, JPEGBaseline8Bit, ExplicitVRLittleEndian]
