"""Outbound C-STORE: "send this study to AE X" (the API's POST /api/studies/{id}/send/, the admin's study action).

`queue_send` records a DicomSend and runs it in the background: with DICOM_SEND_QUEUE (and REDIS_URL) an RQ job
on the `dicom` queue (`manage.py rqworker dicom`, beside the pre-render jobs), else a thread of this process (not a
daemon: a clean exit waits for it). `run_send` opens one association to the peer per attempt, sends every instance not yet
stored there, and records each instance's status. An instance is tried again (DICOM_SEND_ATTEMPTS in all, every
DICOM_SEND_RETRY_SECONDS) when the association failed, the peer did not answer, or answered 0xA7xx (out of
resources); any other failure status is the peer's final word. One audit event per send (`dicom-send`).
"""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import close_old_connections, connections, transaction
from django.utils import timezone
from pynetdicom import AE

from . import dimse
from .audit.events import write_event
from .errors import UnknownPeer
from .models import DicomPeer, DicomSend, Study

logger = logging.getLogger(__name__)

QUEUE = "dicom"


def peers_for(user):
    """The peers a user may send to: their own, every one for staff."""
    peers = DicomPeer.objects.all()
    return peers if user.is_staff or user.is_superuser else peers.filter(owner=user)


def queue_send(user, study: Study, ae_title: str) -> DicomSend:
    """Record the send and start it once this transaction commits; UnknownPeer if `ae_title` is not one of
    peers_for(user)."""
    peer = peers_for(user).filter(ae_title=ae_title.strip()).first()
    if peer is None:
        raise UnknownPeer(f"'{ae_title[:16]}' is not a DICOM peer you may send to (manage.py dicom_peer list)")
    send = DicomSend.objects.create(owner=user, study=study, peer=peer, ae_title=peer.ae_title, instance_count=study.instances.count())
    transaction.on_commit(lambda: _start(str(send.pk)))
    return send


def _start(send_id: str) -> None:
    if settings.DICOM_SEND_QUEUE and settings.REDIS_URL:
        try:
            import django_rq

            django_rq.get_queue(QUEUE).enqueue(run_send, send_id, job_timeout=3600)
            return
        except Exception:  # Redis unreachable: the send still happens, here
            logger.exception("dicom send: the queue is unreachable, sending from this process id=%s", send_id)
    threading.Thread(target=_in_thread, args=(send_id,), name=f"dicom-send-{send_id[:8]}").start()


def _in_thread(send_id: str) -> None:
    try:
        run_send(send_id)
    finally:
        connections.close_all()


def run_send(send_id: str) -> str:
    """Send every instance of the study to the peer; the final state ("done", "partial" or "failed")."""
    close_old_connections()
    send = DicomSend.objects.select_related("peer", "study", "owner").get(pk=send_id)
    instances = [] if send.study is None else list(
        send.study.instances.defer("header").order_by("series__series_number", "series_id", "instance_number", "id")
    )
    results = {str(i.pk): {"instance": str(i.pk), "sop_instance_uid": i.sop_instance_uid, "status": None, "attempts": 0, "error": ""}
               for i in instances}  # fmt: skip
    send.status, send.instance_count = DicomSend.RUNNING, len(instances)
    send.save(update_fields=["status", "instance_count"])
    error = ""
    if send.peer is None:
        error = "the peer was removed"
    for attempt in range(1, settings.DICOM_SEND_ATTEMPTS + 1):
        pending = [i for i in instances if _retryable(results[str(i.pk)])]
        if not pending or send.peer is None:
            break
        if attempt > 1:
            time.sleep(settings.DICOM_SEND_RETRY_SECONDS)
        error = _attempt(send.peer, pending, results)
    sent = sum(1 for r in results.values() if r["status"] == "0x0000")
    send.results = list(results.values())
    send.sent_count, send.failed_count = sent, len(results) - sent
    if send.peer is None or send.study is None:
        send.status, error = DicomSend.FAILED, error or "the study was deleted"
    elif sent == len(results):
        send.status, error = DicomSend.DONE, ""
    else:
        send.status = DicomSend.PARTIAL if sent else DicomSend.FAILED
    send.error = error[:255]
    send.finished_at = timezone.now()
    send.save()
    write_event(
        user=send.owner, action="dicom-send", method="DIMSE", object_type="study", object_id=str(send.study_id or ""),
        outcome="success" if send.status == DicomSend.DONE else "error", status=200 if send.status == DicomSend.DONE else 502,
        client_address=None, request_id=f"send-{send.pk}",
    )  # fmt: skip
    logger.info("dicom send %s id=%s to=%s sent=%d failed=%d", send.status, send.pk, send.ae_title, sent, send.failed_count)
    return send.status


def _retryable(result: dict) -> bool:
    status = result["status"]
    return result["attempts"] < settings.DICOM_SEND_ATTEMPTS and (status is None or status.startswith("0xA7"))


def _attempt(peer: DicomPeer, pending: list, results: dict) -> str:
    """One association: each pending instance sent, its result recorded; the association's error, if any."""
    ae = AE(ae_title=settings.DICOM_AE_TITLE)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, contexts=dimse.storage_contexts(pending))
    if not assoc.is_established:
        for instance in pending:
            results[str(instance.pk)]["attempts"] += 1
            results[str(instance.pk)]["error"] = "association refused or failed"
        return f"{peer.ae_title} at {peer.host}:{peer.port}: association refused or failed"
    try:
        for instance in pending:
            result = results[str(instance.pk)]
            result["attempts"] += 1
            dataset = dimse.stored_dataset(instance)
            if dataset is None:
                result.update(status="unreadable", error="the stored file cannot be read", attempts=settings.DICOM_SEND_ATTEMPTS)
                continue
            try:
                answer = assoc.send_c_store(dataset)
            except Exception as exc:  # noqa: BLE001 - no presentation context for it, or the association went down
                result["error"] = f"{type(exc).__name__}: {str(exc)[:150]}"
                if not assoc.is_established:
                    return "the association ended during the send"
                result["status"], result["attempts"] = "not sent", settings.DICOM_SEND_ATTEMPTS
                continue
            if "Status" in answer:
                result["status"] = f"0x{int(answer.Status):04X}"
                result["error"] = str(answer.get("ErrorComment", ""))[:120]
            else:  # no answer within the DIMSE timeout
                result["error"] = "no answer"
            if not assoc.is_established:
                return "the association ended during the send"
    finally:
        if assoc.is_established:
            assoc.release()
    return ""
