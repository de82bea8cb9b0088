"""The DICOM node (`manage.py dicomserver`): known peers, C-FIND, C-GET, C-MOVE, C-STORE, each scoped to the peer's
owner. A real pynetdicom server in this process; real peers: dcmtk's findscu, getscu, movescu (with dcmtk's storescp
as the move destination), echoscu, storescu, and pynetdicom's SCU for exact statuses and C-CANCEL.

`transaction=True`: the server works in its association threads, on their own database connections.
"""

from __future__ import annotations

import io
import re
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from django.core.management import CommandError, call_command
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # pynetdicom adds its SOP classes at import time
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from studies import dimse
from studies.models import AuditEvent, DicomPeer, Instance, Study

from .conftest import CT_SMALL, PYDICOM_TEST_FILES, client_for, dicom_bytes, pydicom_data_dir, stored_bytes, upload
from .processes import free_port
from .test_storescp import dcmtk, dcmtk_tool, staging  # noqa: F401 - staging: autouse here too

pytestmark = pytest.mark.django_db(transaction=True)

NODE = "DICOMSITE"
PEER = "WORKSTATION"


def peer(owner, ae_title: str = PEER, *, port: int = 104, allow: str = "store,find,move,get") -> DicomPeer:
    services = allow.split(",")
    return DicomPeer.objects.create(
        ae_title=ae_title, host="127.0.0.1", port=port, owner=owner, **{f"may_{s}": s in services for s in DicomPeer.SERVICES}
    )


@pytest.fixture
def node():
    """dicomserver on a free local port (known peers only); the port."""
    server = dimse.start_server(port=0, ae_title=NODE, host="127.0.0.1", block=False, peers=True)
    yield server.server_address[1]
    dimse.stop_server(server)


def stored(owner, *, patient: str = "Doe^Jane", pid: str = "PID-1", study_date: str = "20240105", modality: str = "CT",
           study: str | None = None, series: str | None = None, source: Path = CT_SMALL, description: str = "Head") -> pydicom.Dataset:  # fmt: skip
    """One instance in `owner`'s catalogue (uploaded through the API); its data set."""
    data = dicom_bytes(source, PatientName=patient, PatientID=pid, StudyDate=study_date, Modality=modality, StudyDescription=description)
    ds = pydicom.dcmread(io.BytesIO(data))
    if study or series:
        ds.StudyInstanceUID = study or ds.StudyInstanceUID
        ds.SeriesInstanceUID = series or ds.SeriesInstanceUID
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
    response = upload(client_for(owner), data, raw=True)
    assert response.status_code == 201, response.content
    return ds


def associate(port: int, ae_title: str = PEER, contexts=(StudyRootQueryRetrieveInformationModelFind,), **kwargs):
    ae = AE(ae_title=ae_title)
    for context in contexts:
        ae.add_requested_context(context)
    return ae.associate("127.0.0.1", port, ae_title=NODE, **kwargs)


def query(**elements) -> Dataset:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def find(port: int, identifier: Dataset, model=StudyRootQueryRetrieveInformationModelFind, ae_title: str = PEER) -> tuple[list, int]:
    """(the pending identifiers, the final status) of one C-FIND."""
    assoc = associate(port, ae_title, (model,))
    assert assoc.is_established
    try:
        answers, final = [], None
        for status, answer in assoc.send_c_find(identifier, model):
            if status.Status == 0xFF00:
                answers.append(answer)
            else:
                final = status.Status
        return answers, final
    finally:
        assoc.release()


# --- known peers -----------------------------------------------------------------------------------------------


def test_an_unknown_calling_ae_is_refused_at_association_and_a_new_peer_connects_at_once(node, owner):
    refused = associate(node, "STRANGER", (Verification,))
    assert refused.is_rejected
    assert associate(node, PEER, (Verification,)).is_rejected  # no peer yet
    peer(owner)
    accepted = associate(node, PEER, (Verification,))
    assert accepted.is_established
    assert accepted.send_c_echo().Status == 0x0000
    accepted.release()


def test_dcmtk_echoscu_and_storescu_as_a_known_peer(node, owner, tmp_path):
    peer(owner)
    echo = dcmtk("echoscu", "-aet", PEER, "-aec", NODE, "127.0.0.1", str(node))
    assert echo.returncode == 0, echo.stderr
    path = tmp_path / "ct.dcm"
    path.write_bytes(dicom_bytes())
    store = dcmtk("storescu", "-aet", PEER, "-aec", NODE, "127.0.0.1", str(node), path)
    assert store.returncode == 0, store.stderr
    assert Instance.objects.get(sop_instance_uid=pydicom.dcmread(path).SOPInstanceUID).owner == owner
    stranger = dcmtk("storescu", "-aet", "STRANGER", "-aec", NODE, "127.0.0.1", str(node), path)
    assert stranger.returncode != 0 and "Association Rejected" in stranger.stdout + stranger.stderr


def test_each_service_is_refused_to_a_peer_not_allowed_it(node, owner):
    peer(owner, allow="")
    stored(owner)
    answers, status = find(node, query(QueryRetrieveLevel="STUDY", StudyInstanceUID=""))
    assert (answers, status) == ([], 0x0124)
    assoc = associate(node, PEER, (CTImageStorage,))
    assert assoc.send_c_store(pydicom.dcmread(io.BytesIO(dicom_bytes()))).Status == 0x0124
    assoc.release()
    assert Instance.objects.count() == 1
    events = AuditEvent.objects.filter(action__in=["dimse-c-find", "dimse-c-store"]).values_list("action", "outcome", "status")
    assert sorted(events) == [("dimse-c-find", "denied", 403), ("dimse-c-store", "denied", 403)]


def test_unknown_senders_store_for_the_unknown_owner_when_one_is_given(owner, other):
    server = dimse.start_server(owner=other, port=0, ae_title=NODE, host="127.0.0.1", block=False, peers=True)
    try:
        port = server.server_address[1]
        assoc = associate(port, "STRANGER", (CTImageStorage, StudyRootQueryRetrieveInformationModelFind))
        assert assoc.is_established
        assert assoc.send_c_store(pydicom.dcmread(io.BytesIO(dicom_bytes()))).Status == 0x0000
        statuses = [s.Status for s, _ in assoc.send_c_find(query(QueryRetrieveLevel="STUDY"), StudyRootQueryRetrieveInformationModelFind)]
        assert statuses == [0x0124]  # storing is all an unknown AE may do
        assoc.release()
    finally:
        dimse.stop_server(server)
    assert Instance.objects.get().owner == other


# --- C-FIND ----------------------------------------------------------------------------------------------------


@pytest.fixture
def catalogue(owner, other):
    """owner: Doe^Jane (two CT studies, 2024-01-05 and 2023-06-01) and Roe^Richard (an MR); other: Doe^Jane too."""
    a = stored(owner, patient="Doe^Jane", pid="PID-1", study_date="20240105", description="Head")
    stored(owner, patient="Doe^Jane", pid="PID-1", study_date="20240105", study=a.StudyInstanceUID, series=a.SeriesInstanceUID)
    b = stored(owner, patient="Doe^Jane", pid="PID-1", study_date="20230601", description="Chest")
    c = stored(owner, patient="Roe^Richard", pid="PID-2", study_date="20220303", modality="MR", description="Knee")
    theirs = stored(other, patient="Doe^Jane", pid="PID-9", study_date="20240105")
    return {"a": a, "b": b, "c": c, "theirs": theirs}


def sop_uids(owner, study_uid: str) -> set[str]:
    return set(Instance.objects.filter(study__study_instance_uid=study_uid, owner=owner).values_list("sop_instance_uid", flat=True))


def uids(answers, keyword: str = "StudyInstanceUID") -> set[str]:
    return {str(getattr(answer, keyword)) for answer in answers}


def test_c_find_study_level_matching_kinds_and_scope(node, owner, catalogue):
    peer(owner)
    a, b, c = (catalogue[k].StudyInstanceUID for k in "abc")
    cases = [
        (query(QueryRetrieveLevel="STUDY", StudyInstanceUID=""), {a, b, c}),  # universal
        (query(QueryRetrieveLevel="STUDY", StudyInstanceUID="", PatientName="Doe^Jane"), {a, b}),  # single value
        (query(QueryRetrieveLevel="STUDY", StudyInstanceUID="", PatientName="do*"), {a, b}),  # wildcard, PN case-insensitive
        (query(QueryRetrieveLevel="STUDY", StudyInstanceUID="", PatientName="R?e^Richard"), {c}),
        (query(QueryRetrieveLevel="STUDY", StudyInstanceUID="", StudyDate="20230101-20231231"), {b}),  # date range
        (query(QueryRetrieveLevel="STUDY", StudyInstanceUID="", StudyDate="20230601-"), {a, b}),  # open range
        (query(QueryRetrieveLevel="STUDY", StudyInstanceUID=[a, c]), {a, c}),  # UID list
        (query(QueryRetrieveLevel="STUDY", StudyInstanceUID="", ModalitiesInStudy="MR"), {c}),
        (query(QueryRetrieveLevel="STUDY", StudyInstanceUID=catalogue["theirs"].StudyInstanceUID), set()),  # another owner's
    ]
    for identifier, expected in cases:
        answers, status = find(node, identifier)
        assert status == 0x0000
        assert uids(answers) == expected, identifier


def test_c_find_fills_every_return_key_from_the_catalogue(node, owner, catalogue):
    peer(owner)
    a = catalogue["a"]
    identifier = query(
        QueryRetrieveLevel="STUDY", StudyInstanceUID=a.StudyInstanceUID, PatientName="", PatientID="", StudyDate="",
        StudyDescription="", ModalitiesInStudy="", NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances="",
        AccessionNumber="", InstitutionName="", RetrieveAETitle="",
    )  # fmt: skip
    [answer], status = find(node, identifier)
    assert status == 0x0000
    assert (str(answer.PatientName), answer.PatientID, answer.StudyDate, answer.StudyDescription) == ("Doe^Jane", "PID-1", "20240105", "Head")
    assert answer.ModalitiesInStudy == "CT"
    assert (int(answer.NumberOfStudyRelatedSeries), int(answer.NumberOfStudyRelatedInstances)) == (1, 2)
    assert answer.QueryRetrieveLevel == "STUDY" and answer.RetrieveAETitle == NODE
    assert answer.InstitutionName == a.get("InstitutionName", "")  # not a column: read from the stored header
    assert set(answer.keys()) == set(identifier.keys()) | {pydicom.tag.Tag("SpecificCharacterSet")}


def test_c_find_series_and_image_levels_are_hierarchical(node, owner, catalogue):
    peer(owner)
    a = catalogue["a"]
    answers, status = find(node, query(QueryRetrieveLevel="SERIES", StudyInstanceUID=a.StudyInstanceUID, SeriesInstanceUID="", Modality=""))
    assert status == 0x0000 and uids(answers, "SeriesInstanceUID") == {a.SeriesInstanceUID}
    assert [answer.Modality for answer in answers] == ["CT"]
    image_level = query(QueryRetrieveLevel="IMAGE", StudyInstanceUID=a.StudyInstanceUID, SeriesInstanceUID=a.SeriesInstanceUID, SOPInstanceUID="")
    images, status = find(node, image_level)
    assert status == 0x0000 and len(images) == 2
    for missing in (query(QueryRetrieveLevel="SERIES", SeriesInstanceUID=""), query(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2*")):
        answers, status = find(node, missing)
        assert (answers, status) == ([], 0xA900)
    answers, status = find(node, query(QueryRetrieveLevel="PATIENT", PatientID=""))  # not a Study Root level
    assert (answers, status) == ([], 0xA900)


def test_c_find_patient_root_patient_level_one_answer_per_patient_with_counts(node, owner, catalogue):
    peer(owner)
    identifier = query(QueryRetrieveLevel="PATIENT", PatientID="", PatientName="", NumberOfPatientRelatedStudies="", NumberOfPatientRelatedInstances="")
    answers, status = find(node, identifier, PatientRootQueryRetrieveInformationModelFind)
    assert status == 0x0000
    found = {
        answer.PatientID: (str(answer.PatientName), int(answer.NumberOfPatientRelatedStudies), int(answer.NumberOfPatientRelatedInstances))
        for answer in answers
    }
    assert found == {"PID-1": ("Doe^Jane", 2, 3), "PID-2": ("Roe^Richard", 1, 1)}
    studies, status = find(node, query(QueryRetrieveLevel="STUDY", PatientID="PID-2", StudyInstanceUID=""), PatientRootQueryRetrieveInformationModelFind)
    assert status == 0x0000 and uids(studies) == {catalogue["c"].StudyInstanceUID}
    answers, status = find(node, query(QueryRetrieveLevel="STUDY", StudyInstanceUID=""), PatientRootQueryRetrieveInformationModelFind)
    assert (answers, status) == ([], 0xA900)  # Patient Root: a STUDY query names its patient


def test_c_find_is_cancelled_between_matches(node, owner):
    """2000 matching studies (catalogue rows only: C-FIND reads no file): the cancel, sent on the first pending
    answer, arrives while the node is still answering."""
    peer(owner)
    Study.objects.bulk_create(Study(owner=owner, study_instance_uid=f"1.2.3.{n}", patient_id=f"PID-{n}") for n in range(2000))
    assoc = associate(node)
    try:
        statuses = []
        responses = assoc.send_c_find(query(QueryRetrieveLevel="STUDY", StudyInstanceUID=""), StudyRootQueryRetrieveInformationModelFind, msg_id=7)
        for status, _ in responses:
            statuses.append(status.Status)
            if len(statuses) == 1:
                assoc.send_c_cancel(7, query_model=StudyRootQueryRetrieveInformationModelFind)
        assert statuses[-1] == 0xFE00
        assert 1 <= statuses.count(0xFF00) < 2000
    finally:
        assoc.release()


def test_dcmtk_findscu_finds_the_peers_studies_only(node, owner, catalogue, tmp_path):
    peer(owner)
    result = dcmtk(
        "findscu", "-S", "-aet", PEER, "-aec", NODE, "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=Doe*",
        "-k", "StudyInstanceUID", "-k", "NumberOfStudyRelatedInstances", "127.0.0.1", str(node),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    found = set(re.findall(r"\(0020,000d\) UI \[([0-9.]+)", output))  # an odd-length UID shows its NUL padding
    assert found == {catalogue["a"].StudyInstanceUID, catalogue["b"].StudyInstanceUID}
    assert catalogue["theirs"].StudyInstanceUID not in output


def test_c_find_is_audited_with_the_peers_owner(node, owner, catalogue):
    peer(owner)
    find(node, query(QueryRetrieveLevel="STUDY", StudyInstanceUID=catalogue["a"].StudyInstanceUID))
    event = AuditEvent.objects.get(action="dimse-c-find")
    assert (event.user_id, event.method, event.outcome, event.object_type, event.object_id) == (
        owner.pk, "DIMSE", "success", "study", catalogue["a"].StudyInstanceUID,
    )  # fmt: skip


# --- C-GET -----------------------------------------------------------------------------------------------------


def corpus_files() -> list[Path]:
    return sorted(p for root in (PYDICOM_TEST_FILES, pydicom_data_dir()) for p in root.rglob("*") if p.is_file())


def get(port: int, identifier: Dataset, pairs: set[tuple[str, str]]) -> tuple[dict, int, Dataset]:
    """C-GET with a storage context per (SOP class, transfer syntax) pair and the SCP role for each SOP class;
    (the received data sets by SOP Instance UID, the final status, the final response)."""
    received: dict[str, Dataset] = {}

    def on_store(event):
        received[event.dataset.SOPInstanceUID] = event.dataset
        return 0x0000

    ae = AE(ae_title=PEER)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class, syntax in sorted(pairs)[:127]:
        ae.add_requested_context(sop_class, syntax)
    roles = [build_role(sop_class, scp_role=True) for sop_class in sorted({s for s, _ in pairs})]
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    assert not assoc.rejected_contexts
    try:
        responses = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    final = responses[-1][0]
    return received, final.Status, final


def test_the_corpus_retrieved_by_c_get_is_the_stored_data_sets(node, owner):
    peer(owner)
    client = client_for(owner)
    keys, pairs = {}, set()
    for path in corpus_files():
        response = upload(client, path.read_bytes(), raw=True)
        if response.status_code != 201:
            continue
        row = Instance.objects.get(pk=response.json()["id"])
        keys[row.sop_instance_uid] = row.file.name
        # The data set's own SOP Class UID picks the context a sub-operation goes on (one corpus file's differs
        # from its file meta's Media Storage SOP Class UID).
        sent = pydicom.dcmread(io.BytesIO(stored_bytes(row.file.name)), stop_before_pixels=True)
        pairs.add((str(sent.SOPClassUID), row.transfer_syntax_uid))
    assert len(keys) >= 100
    studies = sorted(set(Instance.objects.values_list("study__study_instance_uid", flat=True)))
    received, status, final = get(node, query(QueryRetrieveLevel="STUDY", StudyInstanceUID=studies), pairs)
    assert status == 0x0000, final
    assert int(final.NumberOfCompletedSuboperations) == len(keys)
    assert set(received) == set(keys)
    for sop_uid, key in keys.items():
        original = pydicom.dcmread(io.BytesIO(stored_bytes(key)))
        for tag in [t for t in original.keys() if t.element == 0]:  # group lengths: retired, not sent over DIMSE (PS3.5 7.2)
            del original[tag]
        assert received[sop_uid] == original, sop_uid  # every element (file meta aside) equal


def test_c_get_of_a_series_and_of_another_owners_study(node, owner, other, catalogue):
    peer(owner)
    a = catalogue["a"]
    pairs = {(CTImageStorage, ExplicitVRLittleEndian), (CTImageStorage, ImplicitVRLittleEndian)}
    received, status, final = get(node, query(QueryRetrieveLevel="SERIES", StudyInstanceUID=a.StudyInstanceUID, SeriesInstanceUID=a.SeriesInstanceUID), pairs)
    assert status == 0x0000 and len(received) == 2 and int(final.NumberOfCompletedSuboperations) == 2
    received, status, final = get(node, query(QueryRetrieveLevel="STUDY", StudyInstanceUID=catalogue["theirs"].StudyInstanceUID), pairs)
    assert (received, status, int(final.NumberOfCompletedSuboperations)) == ({}, 0x0000, 0)
    received, status, _ = get(node, query(QueryRetrieveLevel="STUDY"), pairs)  # no StudyInstanceUID
    assert (received, status) == ({}, 0xA900)


def test_dcmtk_getscu_retrieves_a_study_into_a_folder(node, owner, catalogue, tmp_path):
    peer(owner)
    out = tmp_path / "got"
    out.mkdir()
    result = dcmtk(
        "getscu", "-S", "-aet", PEER, "-aec", NODE, "-od", out, "-k", "QueryRetrieveLevel=STUDY",
        "-k", f"StudyInstanceUID={catalogue['a'].StudyInstanceUID}", "127.0.0.1", str(node),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = {pydicom.dcmread(p).SOPInstanceUID for p in out.iterdir()}
    assert got == sop_uids(owner, catalogue["a"].StudyInstanceUID)
    assert len(got) == 2


# --- C-MOVE ----------------------------------------------------------------------------------------------------


@pytest.fixture
def destination(tmp_path):
    """dcmtk's storescp on a free port, writing what it receives to a folder: (port, folder)."""
    if dcmtk_tool("storescp") is None:
        pytest.skip("dcmtk's storescp is not installed (apt-get install dcmtk)")
    port, folder = free_port(), tmp_path / "moved"
    folder.mkdir()
    process = subprocess.Popen([dcmtk_tool("storescp"), "-aet", "DEST", "-od", str(folder), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    yield port, folder
    process.terminate()
    process.wait(timeout=10)


def test_dcmtk_movescu_moves_a_study_to_a_known_destination(node, owner, catalogue, destination):
    port, folder = destination
    peer(owner)
    peer(owner, "DEST", port=port, allow="")
    result = dcmtk(
        "movescu", "-S", "-aet", PEER, "-aec", NODE, "-aem", "DEST", "-k", "QueryRetrieveLevel=STUDY",
        "-k", f"StudyInstanceUID={catalogue['a'].StudyInstanceUID}", "127.0.0.1", str(node),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    moved = {pydicom.dcmread(p).SOPInstanceUID for p in folder.iterdir()}
    assert len(moved) == 2
    assert moved == sop_uids(owner, catalogue["a"].StudyInstanceUID)
    event = AuditEvent.objects.get(action="dimse-c-move")
    assert (event.user_id, event.outcome, event.object_id) == (owner.pk, "success", catalogue["a"].StudyInstanceUID)


def test_c_move_to_an_unknown_destination_is_a801_and_sends_nothing(node, owner, catalogue, destination):
    port, folder = destination
    peer(owner)
    assoc = associate(node, PEER, (StudyRootQueryRetrieveInformationModelMove,))
    try:
        identifier = query(QueryRetrieveLevel="STUDY", StudyInstanceUID=catalogue["a"].StudyInstanceUID)
        statuses = [s.Status for s, _ in assoc.send_c_move(identifier, "NOWHERE", StudyRootQueryRetrieveInformationModelMove)]
    finally:
        assoc.release()
    assert statuses == [0xA801]
    assert list(folder.iterdir()) == []


# --- manage.py dicom_peer and dicomserver ------------------------------------------------------------------------


def test_dicom_peer_add_list_update_remove(owner, capsys):
    call_command("dicom_peer", "add", "PACS1", "--host", "10.0.0.5", "--port", "104", "--owner", "owner", "--allow", "store,find")
    assert DicomPeer.objects.get().allowed == ["store", "find"]
    call_command("dicom_peer", "add", "PACS1", "--host", "10.0.0.6", "--port", "11112", "--owner", "owner", "--allow", "move")
    peer = DicomPeer.objects.get()
    assert (peer.host, peer.port, peer.allowed) == ("10.0.0.6", 11112, ["move"])
    call_command("dicom_peer", "list")
    assert "PACS1 10.0.0.6:11112 owner=owner allow=move" in capsys.readouterr().out
    call_command("dicom_peer", "remove", "PACS1")
    assert not DicomPeer.objects.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "PACS1", "--host", "h", "--port", "104", "--owner", "nobody"], "no user named 'nobody'"),
        (["add", "PACS1", "--host", "h", "--port", "104", "--owner", "owner", "--allow", "find,delete"], "not delete"),
        (["add", "PACS1", "--host", "h", "--port", "70000", "--owner", "owner"], "port"),
        (["add", "A" * 17, "--host", "h", "--port", "104", "--owner", "owner"], "ae_title"),
        (["add", "BACK\\SLASH", "--host", "h", "--port", "104", "--owner", "owner"], "AE title"),
        (["remove", "NOPE"], "no DICOM peer with AE title 'NOPE'"),
    ],
)
def test_dicom_peer_refuses_clearly(owner, args, message):
    with pytest.raises(CommandError, match=re.escape(message)):
        call_command("dicom_peer", *args)
    assert not DicomPeer.objects.exists()


def test_dicomserver_refuses_an_unknown_unknown_owner():
    with pytest.raises(CommandError, match="no user named 'ghost'"):
        call_command("dicomserver", "--unknown-owner", "ghost", "--port", "0")


def test_the_peers_are_managed_in_the_admin(client, superuser, owner):
    peer(owner)
    client.force_login(superuser)
    page = client.get("/admin/studies/dicompeer/")
    assert page.status_code == 200 and PEER in page.content.decode()
    added = client.post(
        "/admin/studies/dicompeer/add/",
        {"ae_title": "ROUTER", "host": "10.1.1.1", "port": "104", "owner": owner.pk, "may_find": "on", "description": ""},
    )  # fmt: skip
    assert added.status_code == 302, added.content[:2000]
    assert DicomPeer.objects.get(ae_title="ROUTER").allowed == ["find"]
    refused = client.post("/admin/studies/dicompeer/add/", {"ae_title": "X", "host": "h", "port": "0", "owner": owner.pk})
    assert refused.status_code == 200 and not DicomPeer.objects.filter(ae_title="X").exists()




def test_c_get_is_cancelled_between_sub_operations(node, owner):
    """A C-CANCEL sent when the first instance arrives: the node stops before the last (0xFE00), counts say so."""
    peer(owner)
    first = stored(owner)
    for _ in range(29):
        stored(owner, study=first.StudyInstanceUID, series=first.SeriesInstanceUID)
    received = []
    ae = AE(ae_title=PEER)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)

    def on_store(event):
        received.append(event.dataset.SOPInstanceUID)
        if len(received) == 1:
            event.assoc.send_c_cancel(9, query_model=StudyRootQueryRetrieveInformationModelGet)
        return 0x0000

    assoc = ae.associate("127.0.0.1", node, ae_title=NODE, ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])  # fmt: skip
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_get(query(QueryRetrieveLevel="STUDY", StudyInstanceUID=first.StudyInstanceUID),
                                          StudyRootQueryRetrieveInformationModelGet, msg_id=9))  # fmt: skip
    finally:
        assoc.release()
    final = responses[-1][0]
    assert final.Status == 0xFE00
    assert 1 <= len(received) < 30
    assert int(final.NumberOfCompletedSuboperations) == len(received)
    assert int(final.NumberOfRemainingSuboperations) == 30 - len(received)
