"""DICOM network service on pynetdicom: Verification, Storage and Query/Retrieve SCP.

    python manage.py dicomserver --port 11112 --ae-title DICOMSITE          # known peers (DicomPeer) only
    python manage.py storescp --port 11112 --ae-title DICOMSITE --owner alice   # C-STORE/C-ECHO from anyone, for alice

`dicomserver` answers the peers of `manage.py dicom_peer` (also in the admin), each acting for its owner and
allowed some of store / find / move / get; an unknown calling AE is refused at association unless an owner for
unknown senders' C-STOREs is given. C-FIND, C-MOVE and C-GET are studies/qr.py's; a service the peer may not use
is answered 0x0124 (Refused: Not Authorized).

Every instance a modality (or `storescu`) sends goes through the same ingest service as an API
upload, for one owner. Each C-STORE gets a DIMSE status (`DIMSE_STATUS`, keyed by the ingest
outcome's reason), and the association stays up whatever happens to one file:

| outcome                                    | DIMSE status | PS3.4 B.2.3 meaning              | audit status |
|--------------------------------------------|--------------|----------------------------------|--------------|
| stored                                     | 0x0000       | Success                          | 201          |
| identical bytes already stored (re-send)   | 0x0000       | Success                          | 200          |
| larger than DICOM_MAX_UPLOAD_BYTES         | 0xA700       | Refused: Out of Resources        | 413          |
| storage full or failing                    | 0xA700       | Refused: Out of Resources        | 503          |
| not a DICOM file the catalogue can hold    | 0xC000       | Error: Cannot understand         | 400          |
| same SOP Instance UID, different bytes     | 0xC409       | Error: Cannot understand (C409)  | 409          |
| its series is stored under another study   | 0xC409       | Error: Cannot understand (C409)  | 409          |
| catalogue busy (concurrent writers; resend)| 0xA700       | Refused: Out of Resources        | 409          |
| unexpected server error (logged)           | 0xC500       | Error: Cannot understand (C500)  | 500          |

The low byte of a Cxxx code is ours to choose (PS3.4 B.2.3); 0xC409 and 0xC500 echo the HTTP status
the REST API gives for the same outcome and keep clear of the codes pynetdicom uses for its own
failures (0xC001, 0xC002, 0xC211). Failures carry a short Error Comment (0000,0902).

Each C-STORE writes one AuditEvent (action "dimse-c-store", method "DIMSE"). Its `status` is the
HTTP-like status above, not the DIMSE code: DIMSE failure codes (0xA700 = 42752) do not fit the
PositiveSmallIntegerField, and HTTP-like values keep DIMSE events comparable with API uploads.

pynetdicom holds a data set in memory while it arrives. A file a little over the size limit still
gets its 0xA700 answer; a peer that keeps sending far beyond it (see `receive_ceiling`) is cut off
with an A-ABORT, so one association cannot fill the server's memory.

Logs carry ids, sizes, statuses and AE titles only: never patient data or file names.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.conf import settings
from django.db import close_old_connections, connections
from pydicom import dcmread, uid
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, build_context, evt
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # pynetdicom adds its SOP classes at import time

from dicomcore.constants import CHUNK_SIZE, DICM, PREAMBLE_LENGTH
from dicomsite.logging import request_id_var

from . import qr, services
from .audit.events import write_event
from .errors import ServiceError, UploadTooLarge
from .http.status import HTTP_STATUS
from .imaging import open_stored
from .models import DicomPeer
from .outcome import Outcome, Reason
from .uploads import stage_stream

logger = logging.getLogger(__name__)

DEFAULT_PORT = 11112
DEFAULT_AE_TITLE = "DICOMSITE"

# Accepted for every storage SOP class; the catalogue stores the bytes as sent (no transcoding).
TRANSFER_SYNTAXES = [
    getattr(uid, name)
    for name in (
        "ExplicitVRLittleEndian", "ImplicitVRLittleEndian", "DeflatedExplicitVRLittleEndian", "ExplicitVRBigEndian",
        "JPEGBaseline8Bit", "JPEGExtended12Bit", "JPEGLossless", "JPEGLosslessSV1", "JPEGLSLossless",
        "JPEGLSNearLossless", "JPEG2000Lossless", "JPEG2000", "RLELossless",
    )
]

def _storage_sop_classes() -> list[str]:
    """pynetdicom's storage SOP classes, and the retired ones of pydicom's UID dictionary (pynetdicom leaves them
    out, but old modalities still send them and the catalogue holds them: one of pydicom's own test files is a
    retired Ultrasound Image Storage, which a C-GET must be able to send back)."""
    classes = [str(context.abstract_syntax) for context in AllStoragePresentationContexts]
    try:
        from pydicom._uid_dict import UID_dictionary  # private, hence the guard: without it, pynetdicom's list
    except ImportError:
        return classes
    retired = [  # entries: (name, type, info, "Retired" or "", keyword)
        uid_ for uid_, entry in UID_dictionary.items()
        if entry[1] == "SOP Class" and entry[3] == "Retired" and entry[0].endswith("Storage") and "Commitment" not in entry[0]
    ]  # fmt: skip
    return classes + [uid_ for uid_ in sorted(retired) if uid_ not in classes]


STORAGE_SOP_CLASSES = _storage_sop_classes()

SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
NOT_AUTHORIZED = 0x0124
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
CONFLICT = 0xC409
PROCESSING_ERROR = 0xC500

# A data set may run this far past DICOM_MAX_UPLOAD_BYTES (at most the limit itself) and still be
# answered with 0xA700; beyond it the association is aborted.
ABORT_MARGIN = 64 * 1024 * 1024
ERROR_COMMENT_LENGTH = 64  # Error Comment is LO


@dataclass(frozen=True)
class StoreAnswer:
    """What one C-STORE came to: the DIMSE status, the audit trail's status, a word for the log
    (created, duplicate, or the service's error code), the object concerned (the stored instance,
    or what a conflict is with) and the Error Comment for the peer."""

    status: int
    audit_status: int
    result: str
    object_id: str = ""
    object_type: str = "instance"
    comment: str = ""
    size: int = 0

    @property
    def audit_outcome(self) -> str:
        if self.audit_status < 400:
            return "success"
        if self.audit_status in (401, 403):
            return "denied"
        return "refused" if self.audit_status < 500 else "error"


@dataclass(frozen=True)
class Policy:
    """Who a request acts for. peers=False (`storescp`): every caller stores for `unknown_owner`, nothing else.
    peers=True (`dicomserver`): a known peer (DicomPeer) acts for its owner, within what it may do; an unknown
    caller is refused at association, unless `unknown_owner` is set: then its C-STOREs are catalogued for them."""

    peers: bool = False
    unknown_owner: object = None


@dataclass
class _Session:
    """Per-association bookkeeping: an id for log lines, the size of the data set arriving, the calling peer."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    receiving: int = 0
    peer: DicomPeer | None = None
    looked_up: bool = False


def acting_for(event, policy: Policy, sessions: _Sessions, service: str):
    """The user this request acts for, or None when the caller may not use `service` (0x0124)."""
    if not policy.peers:
        return policy.unknown_owner if service == "store" else None
    session = sessions.get(event.assoc)
    if not session.looked_up:  # once per association: the peer's settings as they were when it connected
        session.peer = DicomPeer.objects.select_related("owner").filter(ae_title=event.assoc.requestor.ae_title.strip()).first()
        session.looked_up = True
    if session.peer is not None:
        return session.peer.owner if session.peer.may(service) and session.peer.owner.is_active else None
    return policy.unknown_owner if service == "store" else None


class _Sessions:
    """Sessions by association (weakly held: they go when pynetdicom drops the association)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_assoc: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, assoc) -> _Session:
        with self._lock:
            session = self._by_assoc.get(assoc)
            if session is None:
                session = self._by_assoc[assoc] = _Session()
            return session


def receive_ceiling() -> int:
    """Bytes of one data set after which the association is aborted instead of answered."""
    limit = settings.DICOM_MAX_UPLOAD_BYTES
    return limit + min(limit, ABORT_MARGIN)


class KnownPeersAE(AE):
    """An AE that accepts associations only from the AE titles of DicomPeer rows, read again for each association
    (pynetdicom consults `require_calling_aet` while negotiating), so a peer added in the admin can connect at once."""

    NOBODY = ["\x00"]  # an empty list would mean "anyone": no AE title is a NUL

    @property
    def require_calling_aet(self) -> list[str]:
        from django.db import connection

        try:
            titles = list(DicomPeer.objects.values_list("ae_title", flat=True))
        finally:
            connection.close()  # the association thread has no other use for it yet
        return titles or self.NOBODY

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        raise AttributeError("the known peers are the DicomPeer rows")


def build_ae(*, ae_title: str = DEFAULT_AE_TITLE, policy: Policy | None = None) -> AE:
    """An AE accepting Verification (C-ECHO) and every storage SOP class in TRANSFER_SYNTAXES; with a peers
    policy also the Query/Retrieve SOP classes (FIND, MOVE, GET of Patient Root and Study Root), with the storage
    contexts open to the requestor's SCP role (C-GET sends its instances back on the same association).

    Peers must call it by its AE title (`require_called_aet`): a modality configured for another
    node is refused at association time rather than filing its images here.
    """
    policy = policy or Policy()
    ae = KnownPeersAE(ae_title=ae_title) if policy.peers and policy.unknown_owner is None else AE(ae_title=ae_title)
    ae.require_called_aet = True
    for sop_class in STORAGE_SOP_CLASSES:
        if policy.peers:
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
        else:
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    if policy.peers:
        for sop_class in (*qr.FIND, *qr.MOVE, *qr.GET):
            ae.add_supported_context(sop_class, [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian])
    return ae


def start_server(
    *, owner=None, port: int = DEFAULT_PORT, ae_title: str = DEFAULT_AE_TITLE, host: str = "0.0.0.0", block: bool = True,
    peers: bool = False,
):  # fmt: skip
    """Listen on (host, port). peers=False (`storescp`): C-STORE and C-ECHO from anyone, catalogued for `owner`.
    peers=True (`dicomserver`): the known peers, with Query/Retrieve; `owner` (optional) takes unknown AEs' C-STOREs.

    With block=False, returns the running pynetdicom server (stop it with `stop_server`). With
    block=True, serves until KeyboardInterrupt, then stops cleanly and returns None.
    """
    if not peers and owner is None:
        raise ValueError("a receiver without peers stores for an owner")
    policy = Policy(peers=peers, unknown_owner=owner)
    sessions = _Sessions()
    handlers: list[EventHandlerType] = [
        (evt.EVT_C_STORE, handle_store, [policy, sessions]),
        (evt.EVT_PDU_RECV, _guard_receive, [sessions]),
        (evt.EVT_ACCEPTED, _log_accepted, [sessions]),
    ]
    if peers:
        handlers += [
            (evt.EVT_C_FIND, handle_find, [policy, sessions, ae_title]),
            (evt.EVT_C_GET, handle_get, [policy, sessions]),
            (evt.EVT_C_MOVE, handle_move, [policy, sessions]),
        ]
    server = build_ae(ae_title=ae_title, policy=policy).start_server((host, port), block=False, evt_handlers=handlers)
    # pynetdicom writes a response in several small sends: with Nagle's algorithm and the peer's delayed ACK each
    # C-FIND took ~90 ms (bench run dicom). Linux gives accepted sockets the listening socket's TCP_NODELAY.
    assert server is not None and server.socket is not None  # block=False returns the running server
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    logger.info("dimse scp listening host=%s port=%d ae_title=%s", host, server.server_address[1], ae_title)
    if not block:
        return server
    serve_until_interrupted(server)
    return None


def serve_until_interrupted(server) -> None:
    """Wait (the server runs in its own threads) until KeyboardInterrupt, then stop it cleanly."""
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(server)


def stop_server(server, *, timeout: float = 60.0) -> None:
    """Stop accepting, abort open associations, and wait for files being catalogued to finish.

    pynetdicom runs associations in daemon threads: without the wait, leaving the process right
    after Ctrl-C could cut an ingest short between storing a file and cataloguing it.
    """
    server.shutdown()
    associations = list(server.active_associations)
    for assoc in associations:
        assoc.abort()
    for assoc in associations:
        assoc.join(timeout)
    logger.info("dimse scp stopped (%d association(s) closed)", len(associations))


def handle_store(event, policy: Policy, sessions: _Sessions):
    """EVT_C_STORE: stage the received data set as a Part-10 file, ingest it, answer with a status.

    Never raises: whatever goes wrong, the peer gets a failure status and the association stays up.
    """
    session = sessions.get(event.assoc)
    token = request_id_var.set(f"dimse-{session.id}-{getattr(event.request, 'MessageID', 0) or 0}")
    calling_ae = event.assoc.requestor.ae_title
    owner = None
    try:
        try:
            close_old_connections()
            owner = acting_for(event, policy, sessions, "store")
            if owner is None:
                outcome = StoreAnswer(NOT_AUTHORIZED, 403, "not_authorized", comment="this AE may not store here")
            else:
                outcome = _store(event, owner)
        except Exception:
            logger.exception("dimse c-store failed calling_ae=%s", calling_ae)
            outcome = StoreAnswer(PROCESSING_ERROR, 500, "server_error", comment="internal error")
        _audit(event, owner, outcome)
        logger.info(
            "dimse c-store %s status=0x%04X id=%s size=%d calling_ae=%s",
            outcome.result, outcome.status, outcome.object_id or "-", outcome.size, calling_ae,
        )
        return _status(outcome)
    finally:
        request_id_var.reset(token)
        # The association thread lives on between requests: give its database connections back now.
        connections.close_all()


# Each ingest outcome in DIMSE terms (PS3.4 B.2.3): (Status, Error Comment; None = the refusal's own sentence).
DIMSE_STATUS: dict[Reason, tuple[int, str | None]] = {
    Reason.STORED: (SUCCESS, ""),
    Reason.SAME_BYTES: (SUCCESS, ""),
    Reason.SAME_UID: (CONFLICT, "SOP Instance UID already stored with other content"),
    Reason.SERIES_IN_OTHER_STUDY: (CONFLICT, "Series Instance UID already stored under another study"),
    Reason.CATALOGUE_BUSY: (OUT_OF_RESOURCES, "catalogue busy; send it again"),
    Reason.INVALID: (CANNOT_UNDERSTAND, None),
    Reason.UNREADABLE: (CANNOT_UNDERSTAND, None),
    Reason.WRONG_STUDY: (CANNOT_UNDERSTAND, None),
    Reason.NOT_AN_INSTANCE: (CANNOT_UNDERSTAND, None),
    Reason.TOO_LARGE: (OUT_OF_RESOURCES, "larger than this server accepts"),
    Reason.QUOTA_EXCEEDED: (OUT_OF_RESOURCES, "storage quota exceeded"),
    Reason.STORAGE_FAILED: (OUT_OF_RESOURCES, "storage unavailable"),
}


def store_answer(outcome: Outcome) -> StoreAnswer:
    """The DIMSE answer (and audit status, from the HTTP table) for one ingest outcome."""
    status, comment = DIMSE_STATUS[outcome.reason]
    word = str(outcome.status) if outcome.stored else (outcome.error.code if outcome.error else str(outcome.reason))
    return StoreAnswer(
        status, HTTP_STATUS[outcome.reason], word, outcome.object_id or "", outcome.object_type,
        outcome.message if comment is None else comment, outcome.size,
    )


def _store(event, owner) -> StoreAnswer:
    size = _received_size(event)
    try:
        staged = _stage(event, size)
    except ServiceError as exc:  # larger than the limit: refused before copying anything
        return store_answer(services.refusal(exc, size=size))
    return store_answer(services.ingest(owner=owner, staged=staged, label=""))


def _received_size(event) -> int:
    """Bytes of the data set as received (without the file meta)."""
    path = event.dataset_path  # set when pynetdicom's STORE_RECV_CHUNKED_DATASET writes it to disk
    if path is not None:
        return os.path.getsize(path)
    return event.request.DataSet.getbuffer().nbytes


def _stage(event, size: int):
    """The received data set as a StagedFile in DICOM file format (file meta from the request)."""
    if size > settings.DICOM_MAX_UPLOAD_BYTES:  # refused before copying anything
        raise UploadTooLarge(settings.DICOM_MAX_UPLOAD_BYTES)
    if event.dataset_path is not None:  # pynetdicom wrote preamble, file meta and data set
        with open(event.dataset_path, "rb") as handle:
            return stage_stream(handle)
    # What event.encoded_dataset() returns, without joining a second in-memory copy of the data set.
    head = bytes(PREAMBLE_LENGTH) + DICM + encode_file_meta(event.file_meta)
    return stage_stream(_Chained(head, event.request.DataSet))


class _Chained:
    """A read()-able stream over some bytes followed by a BytesIO (read from its start)."""

    def __init__(self, head: bytes, body: io.BytesIO) -> None:
        self._parts: Iterator = iter((io.BytesIO(head), body))
        self._current = next(self._parts)
        body.seek(0)

    def read(self, n: int = CHUNK_SIZE) -> bytes:
        while self._current is not None:
            chunk = self._current.read(n)
            if chunk:
                return chunk
            self._current = next(self._parts, None)
        return b""


def _status(outcome: StoreAnswer) -> Dataset:
    status = Dataset()
    status.Status = outcome.status
    if outcome.status != SUCCESS and outcome.comment:
        status.ErrorComment = _error_comment(outcome.comment)
    return status


def _error_comment(text: str) -> str:
    """An LO value: printable ASCII without backslashes, at most 64 characters."""
    cleaned = "".join(ch if " " <= ch <= "~" and ch != "\\" else " " for ch in text)
    return cleaned[:ERROR_COMMENT_LENGTH].strip()


def _audit(event, owner, answer: StoreAnswer) -> None:
    try:
        write_event(
            user=owner,
            action="dimse-c-store",
            method="DIMSE",
            object_type=answer.object_type,
            object_id=answer.object_id,
            outcome=answer.audit_outcome,
            status=answer.audit_status,
            client_address=event.assoc.requestor.address,
            request_id=request_id_var.get(),
        )
    except Exception:
        logger.exception("audit event could not be written")


def _guard_receive(event, sessions: _Sessions) -> None:
    """EVT_PDU_RECV (DUL thread): count data set bytes of the message arriving; abort past the ceiling."""
    items = getattr(event.pdu, "presentation_data_value_items", None)
    if not items:
        return
    session = sessions.get(event.assoc)
    for item in items:
        data = item.data or b""
        if not data or data[0] & 0x01:  # command fragments are small and not counted
            continue
        session.receiving += len(data) - 1
        if session.receiving > receive_ceiling():
            logger.warning(
                "dimse data set too large, aborting association calling_ae=%s received=%d",
                event.assoc.requestor.ae_title, session.receiving,
            )
            session.receiving = 0
            event.assoc.abort(block=False)  # blocking here, in the DUL's own thread, would wait for itself
            return
        if data[0] & 0x02:  # the last fragment: the next data set starts from zero
            session.receiving = 0


def _log_accepted(event, sessions: _Sessions) -> None:
    requestor = event.assoc.requestor
    logger.info(
        "dimse association accepted session=%s calling_ae=%s address=%s",
        sessions.get(event.assoc).id, requestor.ae_title, requestor.address,
    )


# --- Query/Retrieve (studies/qr.py decides what matches; these speak DIMSE) ----------------------------------------


def _request_scope(event, sessions: _Sessions):
    """The request id of a Q/R request's log lines and audit event (reset by the handler when it ends)."""
    session = sessions.get(event.assoc)
    return request_id_var.set(f"dimse-{session.id}-{getattr(event.request, 'MessageID', 0) or 0}")


def handle_find(event, policy: Policy, sessions: _Sessions, ae_title: str):
    """EVT_C_FIND: (0xFF00, identifier) per match, then pynetdicom's final Success; Cancel honoured between matches.

    Audited once per request (`dimse-c-find`), with the number of matches as the log line's count."""
    token = _request_scope(event, sessions)
    calling_ae = event.assoc.requestor.ae_title
    user, status, matches, object_type, object_id = None, 500, 0, "", ""
    try:
        close_old_connections()
        user = acting_for(event, policy, sessions, "find")
        if user is None:
            status = 403
            yield NOT_AUTHORIZED, None
            return
        try:
            request = qr.parse(event.identifier, qr.FIND[event.request.AffectedSOPClassUID])
            object_type, object_id = qr.audited_object(request)
            for answer in qr.find(user, request, ae_title=ae_title):
                if event.is_cancelled:
                    status = 200
                    yield CANCEL, None
                    return
                matches += 1
                yield PENDING, answer
        except qr.QRFailure as refused:
            status = 400
            yield _failure(refused.status, refused.comment), None
            return
        status = 200
    except Exception:
        logger.exception("dimse c-find failed calling_ae=%s", calling_ae)
        status = 500
        yield _failure(qr.UNABLE_TO_PROCESS, "internal error"), None
    finally:
        _audit_request(event, user, "dimse-c-find", status, object_type, object_id)
        logger.info("dimse c-find status=%d matches=%d calling_ae=%s", status, matches, calling_ae)
        request_id_var.reset(token)
        connections.close_all()


def handle_get(event, policy: Policy, sessions: _Sessions):
    """EVT_C_GET: the number of instances, then (0xFF00, data set) each; pynetdicom sends them back on this
    association as C-STORE sub-operations and answers with the counts (Success, or Warning when some failed)."""
    yield from _retrieve(event, policy, sessions, "get", qr.GET, destination=False)


def handle_move(event, policy: Policy, sessions: _Sessions):
    """EVT_C_MOVE: the destination (a known peer, else 0xA801), the number of instances, then each data set;
    pynetdicom opens the association to the destination and sends them as C-STORE sub-operations."""
    yield from _retrieve(event, policy, sessions, "move", qr.MOVE, destination=True)


def _retrieve(event, policy: Policy, sessions: _Sessions, service: str, models: dict, *, destination: bool):
    token = _request_scope(event, sessions)
    calling_ae = event.assoc.requestor.ae_title
    user, status, sent, object_type, object_id = None, 500, 0, "", ""
    action = f"dimse-c-{service}"
    try:
        close_old_connections()
        user = acting_for(event, policy, sessions, service)
        target = None
        if destination:
            target = DicomPeer.objects.filter(ae_title=str(event.move_destination or "").strip()).first()
            if target is None:
                status = 404
                yield None, None  # pynetdicom answers 0xA801 Refused: Move Destination unknown
                return
        found: list = []
        refusal = None
        if user is None:
            status, refusal = 403, _failure(NOT_AUTHORIZED, f"this AE may not {service} here")
        else:
            try:
                request = qr.parse(event.identifier, models[event.request.AffectedSOPClassUID])
                object_type, object_id = qr.audited_object(request)
                found = qr.instances(user, request)
            except qr.QRFailure as refused:
                status, refusal = 400, _failure(refused.status, refused.comment)
        if destination:
            assert target is not None
            contexts = storage_contexts(found) or [build_context(Verification)]
            yield target.host, target.port, {"contexts": contexts, "evt_handlers": [(evt.EVT_CONN_OPEN, _no_delay)]}
        if refusal is not None:
            # pynetdicom sends a status only after the number of sub-operations (and, for C-MOVE, after connecting
            # to the destination): the refusal is announced as one sub-operation, reported failed with its status.
            yield 1
            yield refusal, None
            return
        yield len(found)
        status = 200
        for instance in found:
            if event.is_cancelled:
                yield CANCEL, None
                return
            dataset = stored_dataset(instance)
            if dataset is None:
                # pynetdicom counts a pending answer without a data set as one failed sub-operation and goes on.
                yield PENDING, "the stored file cannot be read"
                continue
            sent += 1
            yield PENDING, dataset
    except Exception:
        logger.exception("dimse c-%s failed calling_ae=%s", service, calling_ae)
        status = 500
        yield _failure(qr.UNABLE_TO_PROCESS, "internal error"), None
    finally:
        _audit_request(event, user, action, status, object_type, object_id)
        logger.info("dimse c-%s status=%d instances=%d calling_ae=%s", service, status, sent, calling_ae)
        request_id_var.reset(token)
        connections.close_all()


def _no_delay(event) -> None:
    """EVT_CONN_OPEN of the association to a C-MOVE destination: TCP_NODELAY, as on the server's own sockets."""
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def stored_dataset(instance):
    """The stored file as a data set to send (None, logged, when storage has lost it or it no longer parses)."""
    try:
        with open_stored(instance) as handle:
            return dcmread(handle)
    except Exception:  # one unreadable file fails its own sub-operation only
        logger.exception("dimse retrieve: stored file unreadable id=%s", instance.pk)
        return None


def storage_contexts(instances) -> list:
    """Presentation contexts for sending these instances: per SOP class, each stored transfer syntax and, for the
    uncompressed ones, the other uncompressed syntaxes pynetdicom can re-encode to (at most 128 contexts)."""
    uncompressed = [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian]
    by_class: dict[str, list[str]] = {}
    for instance in instances:
        syntaxes = by_class.setdefault(instance.sop_class_uid, [])
        stored = instance.transfer_syntax_uid
        for syntax in [stored, *(uncompressed if uid.UID(stored).is_transfer_syntax and not uid.UID(stored).is_compressed else [])]:
            if syntax not in syntaxes:
                syntaxes.append(syntax)
    return [build_context(sop_class, syntaxes) for sop_class, syntaxes in list(by_class.items())[:128]]


def _failure(status: int, comment: str) -> Dataset:
    answer = Dataset()
    answer.Status = status
    answer.ErrorComment = _error_comment(comment)
    return answer


def _audit_request(event, user, action: str, status: int, object_type: str, object_id: str) -> None:
    outcome = "success" if status < 400 else "denied" if status == 403 else "not_found" if status == 404 else "refused" if status < 500 else "error"
    try:
        write_event(
            user=user, action=action, method="DIMSE", object_type=object_type, object_id=object_id, outcome=outcome,
            status=status, client_address=event.assoc.requestor.address, request_id=request_id_var.get(),
        )  # fmt: skip
    except Exception:
        logger.exception("audit event could not be written")
