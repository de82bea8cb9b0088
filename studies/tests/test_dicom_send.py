"""Outbound C-STORE (studies/outbound.py): a study sent to a known peer in the background, from the API and the
admin, with a result per instance, retries and an audit event. Real peers: dcmtk's storescp, and a pynetdicom
Storage SCP on a free port whose answers the test chooses (to cause a peer's refusals for real)."""

from __future__ import annotations

import io
import signal
import time

import pydicom
import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt

from studies.models import AuditEvent, DicomPeer, DicomSend, Instance, Study

from .conftest import assert_error, client_for, dicom_bytes, upload
from .processes import free_port
from .test_dicom_node import destination  # noqa: F401 - dcmtk's storescp as a fixture

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def quick_retries(settings):
    settings.DICOM_SEND_RETRY_SECONDS = 0


def study_of(owner, n: int = 2) -> Study:
    first = pydicom.dcmread(io.BytesIO(dicom_bytes()))
    client = client_for(owner)
    for _ in range(n):
        data = dicom_bytes(new_uids=False, SOPInstanceUID=pydicom.uid.generate_uid(), StudyInstanceUID=first.StudyInstanceUID,
                           SeriesInstanceUID=first.SeriesInstanceUID)  # fmt: skip
        assert upload(client, data, raw=True).status_code == 201
    return Study.objects.get(owner=owner, study_instance_uid=first.StudyInstanceUID)


def add_peer(owner, port: int, ae_title: str = "PACS") -> DicomPeer:
    return DicomPeer.objects.create(ae_title=ae_title, host="127.0.0.1", port=port, owner=owner)


def finished(client, url: str, seconds: float = 30) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        body = client.get(url).json()
        if body["status"] not in ("queued", "running"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"the send did not finish: {body}")


class ChosenAnswers:
    """A pynetdicom Storage SCP answering each C-STORE with the next status of `answers` (then 0x0000)."""

    def __init__(self, *answers: int) -> None:
        self.answers = list(answers)
        self.received: list[str] = []
        ae = AE(ae_title="PACS")
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax)
        self.port = free_port()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.on_store)])

    def on_store(self, event):
        status = self.answers.pop(0) if self.answers else 0x0000
        if status == 0x0000:
            self.received.append(event.dataset.SOPInstanceUID)
        return status

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def pacs():
    made: list[ChosenAnswers] = []
    yield lambda *answers: made.append(ChosenAnswers(*answers)) or made[-1]
    for server in made:
        server.stop()


def test_the_api_sends_a_study_to_dcmtk_storescp(owner, destination):  # noqa: F811
    port, folder = destination
    add_peer(owner, port, "DEST")
    study = study_of(owner)
    client = client_for(owner)
    response = client.post(f"/api/studies/{study.pk}/send/", {"ae_title": "DEST"}, format="json")
    assert response.status_code == 202, response.content
    assert response["Location"] == response.json()["url"]
    body = finished(client, response.json()["url"])
    assert (body["status"], body["instance_count"], body["sent_count"], body["failed_count"]) == ("done", 2, 2, 0)
    assert {r["status"] for r in body["results"]} == {"0x0000"} and {r["attempts"] for r in body["results"]} == {1}
    received = {pydicom.dcmread(p).SOPInstanceUID for p in folder.iterdir()}
    assert received == set(study.instances.values_list("sop_instance_uid", flat=True))
    event = AuditEvent.objects.get(action="dicom-send")
    assert (event.user_id, event.outcome, event.object_type, event.object_id) == (owner.pk, "success", "study", str(study.pk))
    assert client.get("/api/sends/").json()["results"][0]["id"] == body["id"]


def test_out_of_resources_is_tried_again_and_a_refusal_is_final(owner, pacs):
    peer = pacs(0xA700, 0xC000)  # first instance: out of resources (retried); second: cannot understand (final)
    add_peer(owner, peer.port)
    study = study_of(owner)
    client = client_for(owner)
    body = finished(client, client.post(f"/api/studies/{study.pk}/send/", {"ae_title": "PACS"}, format="json").json()["url"])
    assert (body["status"], body["sent_count"], body["failed_count"]) == ("partial", 1, 1)
    by_status = {r["status"]: r["attempts"] for r in body["results"]}
    assert by_status == {"0x0000": 2, "0xC000": 1}
    assert len(peer.received) == 1


def test_an_unreachable_peer_fails_after_every_attempt(owner, settings):
    settings.DICOM_SEND_ATTEMPTS = 2
    add_peer(owner, free_port())  # nothing listens there
    study = study_of(owner, 1)
    client = client_for(owner)
    body = finished(client, client.post(f"/api/studies/{study.pk}/send/", {"ae_title": "PACS"}, format="json").json()["url"])
    assert (body["status"], body["sent_count"], body["failed_count"]) == ("failed", 0, 1)
    assert "association refused or failed" in body["error"]
    assert [r["attempts"] for r in body["results"]] == [2]
    assert AuditEvent.objects.get(action="dicom-send").outcome == "error"


def test_sends_are_refused_clearly(owner, other, pacs):
    peer = pacs()
    add_peer(other, peer.port, "THEIRS")
    study = study_of(owner, 1)
    client = client_for(owner)
    assert_error(client.post(f"/api/studies/{study.pk}/send/", {"ae_title": "NOSUCH"}, format="json"), 400, "unknown_peer")
    assert_error(client.post(f"/api/studies/{study.pk}/send/", {"ae_title": "THEIRS"}, format="json"), 400, "unknown_peer")
    assert_error(client.post(f"/api/studies/{study.pk}/send/", {}, format="json"), 400, "invalid")
    theirs = study_of(other, 1)
    assert_error(client.post(f"/api/studies/{theirs.pk}/send/", {"ae_title": "THEIRS"}, format="json"), 404, "not_found")
    assert not DicomSend.objects.exists()
    assert peer.received == []


def test_the_admin_action_sends_the_selected_studies(client, owner, pacs):
    owner.is_staff = True
    owner.save()
    peer = pacs()
    row = add_peer(owner, peer.port)
    study = study_of(owner)
    client.force_login(owner)
    page = client.get("/admin/studies/study/")
    assert f"send_to_{row.pk}" in page.content.decode()
    response = client.post("/admin/studies/study/", {"action": f"send_to_{row.pk}", "_selected_action": [study.pk]}, follow=True)
    assert "queued for PACS" in response.content.decode()
    send = DicomSend.objects.get()
    deadline = time.monotonic() + 30
    while send.status in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.1)
        send.refresh_from_db()
    assert (send.status, send.sent_count) == ("done", 2)
    assert sorted(peer.received) == sorted(Instance.objects.values_list("sop_instance_uid", flat=True))
    assert client.get(f"/admin/studies/dicomsend/{send.pk}/change/").status_code == 200


def test_with_the_queue_a_send_is_an_rq_job_holding_only_its_id_and_a_worker_runs_it(owner, pacs, settings):
    """DICOM_SEND_QUEUE on Redis db 12: the send waits as a job of the `dicom` queue; an RQ worker (in this process,
    burst mode: the test database is this process's) then sends it."""
    import redis
    from rq import Queue, SimpleWorker

    connection = redis.Redis.from_url("redis://127.0.0.1:6379/12", socket_connect_timeout=2)
    try:
        connection.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis at 127.0.0.1:6379 (.ci/run starts one)")
    connection.flushdb()
    settings.REDIS_URL, settings.DICOM_SEND_QUEUE = "redis://127.0.0.1:6379/12", True
    settings.RQ_QUEUES = {"dicom": {"URL": "redis://127.0.0.1:6379/12", "DEFAULT_TIMEOUT": 300}}
    try:
        peer = pacs()
        add_peer(owner, peer.port)
        study = study_of(owner)
        client = client_for(owner)
        url = client.post(f"/api/studies/{study.pk}/send/", {"ae_title": "PACS"}, format="json").json()["url"]
        queue = Queue("dicom", connection=connection)
        [job] = queue.get_jobs()
        send = DicomSend.objects.get()
        assert job.args == (str(send.pk),) and not job.kwargs
        assert client.get(url).json()["status"] == "queued"
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            SimpleWorker([queue], connection=connection).work(burst=True)
        finally:  # the worker installs its own; later tests send this process a real SIGINT
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        assert client.get(url).json()["status"] == "done"
        assert len(peer.received) == 2
    finally:
        connection.flushdb()
        connection.close()
