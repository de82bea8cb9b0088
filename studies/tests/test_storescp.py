"""The DICOM C-STORE receiver: a real pynetdicom server in this process, real senders (dcmtk's
`storescu`/`echoscu` as subprocesses, pynetdicom's own SCU), real files from pydicom's test data.

`transaction=True`: the server catalogues files in its association threads, with their own
database connections, so the test must see committed rows (and the server the test's owner).
"""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from django.core.management import CommandError, call_command
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000, JPEGLossless, JPEGLSNearLossless, RLELossless, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from studies import dimse
from studies.models import AuditEvent, Instance

from .conftest import assert_storage_consistent, on_s3, stored_bytes

pytestmark = pytest.mark.django_db(transaction=True)

AE_TITLE = "DICOMSITE"


def sample(name: str) -> Path:
    return Path(get_testdata_file(name))


@functools.cache
def dcmtk_tool(tool: str) -> str | None:
    """dcmtk's `tool`, not pynetdicom's scripts of the same name in the virtualenv's bin/."""
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep) if not d.startswith(sys.prefix))
    found = shutil.which(tool, path=path)
    if found is None:
        return None
    version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=10)
    return found if "dcmtk" in version.stdout else None


def dcmtk(tool: str, *args: str | Path) -> subprocess.CompletedProcess:
    """Run a dcmtk tool; the test is skipped where dcmtk is not installed."""
    if dcmtk_tool(tool) is None:
        pytest.skip(f"dcmtk's {tool} is not installed (Debian/Ubuntu: apt-get install dcmtk)")
    return dcmtk_run(tool, *args)


def dcmtk_run(tool: str, *args: str | Path) -> subprocess.CompletedProcess:
    """Run a dcmtk tool (from any thread: no pytest.skip here)."""
    found = dcmtk_tool(tool)
    assert found, f"dcmtk's {tool} is not installed"
    return subprocess.run([found, *map(str, args)], capture_output=True, text=True, timeout=30)


@pytest.fixture(autouse=True)
def staging(settings, tmp_path) -> Path:
    """Received files are staged in a folder of the test's own, so a leaked temporary file is seen."""
    folder = tmp_path / "staging"
    folder.mkdir()
    settings.FILE_UPLOAD_TEMP_DIR = str(folder)
    return folder


@pytest.fixture
def scp(owner):
    """A running receiver for `owner` on a free local port; the port."""
    server = dimse.start_server(owner=owner, port=0, ae_title=AE_TITLE, host="127.0.0.1", block=False)
    yield server.server_address[1]
    dimse.stop_server(server)


def storescu(port: int, *files: Path, options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """dcmtk storescu with debug output (it shows each response's status code)."""
    return dcmtk("storescu", "-d", "-aec", AE_TITLE, *options, "127.0.0.1", str(port), *files)


def response_statuses(result: subprocess.CompletedProcess) -> list[int]:
    """The status of each C-STORE response, in order, from storescu's debug output."""
    output = result.stdout + result.stderr
    return [int(code, 16) for code in re.findall(r"DIMSE Status\s*:\s*0x([0-9A-Fa-f]{4})", output)]


def same_pixels(key: str, source: Path) -> None:
    """The stored object's pixels (read through the storage API: the local folder or S3) are the sent ones."""
    stored_ds, source_ds = pydicom.dcmread(io.BytesIO(stored_bytes(key))), pydicom.dcmread(source)
    assert stored_ds.file_meta.TransferSyntaxUID == source_ds.file_meta.TransferSyntaxUID
    assert stored_ds.PixelData == source_ds.PixelData


def instance_for(path: Path) -> Instance:
    return Instance.objects.get(sop_instance_uid=pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def variant(tmp_path: Path, source: Path, name: str, *, new_uids: bool = False, **attributes) -> Path:
    """A copy of a test file with attributes changed or removed (None), saved in its own transfer syntax."""
    ds = pydicom.dcmread(source)
    if new_uids:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.StudyInstanceUID = generate_uid()
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


# --- dcmtk storescu / echoscu ---------------------------------------------------------------

# storescu proposes uncompressed transfer syntaxes only, unless told which compressed one to offer.
TRANSFER_SYNTAX_CASES = [
    ((), "CT_small.dcm"),  # Explicit VR Little Endian
    (("-xi",), "MR_small_implicit.dcm"),
    (("-xb",), "MR_small_bigendian.dcm"),
    (("-xd",), "image_dfl.dcm"),  # Deflated
    (("-xy",), "SC_rgb_jpeg_dcmtk.dcm"),  # JPEG Baseline
    (("-xx",), "JPGExtended.dcm"),  # JPEG Extended
    (("-xs",), "JPEG-LL.dcm"),  # JPEG Lossless SV1
    (("-xt",), "MR_small_jpeg_ls_lossless.dcm"),
    (("-xu",), "JPEGLSNearLossless_16.dcm"),
    (("-xv",), "US1_J2KR.dcm"),  # JPEG 2000 lossless
    (("-xw",), "693_J2KI.dcm"),  # JPEG 2000
    (("-xr",), "emri_small_RLE.dcm"),  # RLE, 10 frames
    ((), "emri_small.dcm"),  # uncompressed, 10 frames
]
# Test files without the Study/Series Instance UIDs the catalogue needs: sent with UIDs added.
WITHOUT_STUDY = {"JPEGLSNearLossless_16.dcm"}


@pytest.mark.parametrize(("options", "name"), TRANSFER_SYNTAX_CASES, ids=[name for _, name in TRANSFER_SYNTAX_CASES])
def test_storescu_files_are_catalogued_as_sent(scp, owner, media_root, staging, tmp_path, options, name):
    source = sample(name)
    if name in WITHOUT_STUDY:
        source = variant(tmp_path, source, name, StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid())
    source_ds = pydicom.dcmread(source, stop_before_pixels=True)

    result = storescu(scp, source, options=options)

    assert result.returncode == 0, result.stderr[-2000:]
    assert response_statuses(result) == [0x0000]
    instance = Instance.objects.get()
    assert instance.owner == owner
    assert (instance.sop_instance_uid, instance.sop_class_uid) == (source_ds.SOPInstanceUID, source_ds.SOPClassUID)
    assert instance.transfer_syntax_uid == source_ds.file_meta.TransferSyntaxUID
    assert instance.number_of_frames == int(source_ds.get("NumberOfFrames") or 1)
    same_pixels(instance.file.name, source)
    assert list(staging.iterdir()) == []


def test_every_listed_transfer_syntax_is_accepted_for_storage(scp):
    ae = AE(ae_title="TESTSCU")
    for syntax in dimse.TRANSFER_SYNTAXES:
        ae.add_requested_context(CTImageStorage, [syntax])  # one context per syntax: each must be accepted on its own
    assoc = ae.associate("127.0.0.1", scp, ae_title=AE_TITLE)
    try:
        accepted = {context.transfer_syntax[0] for context in assoc.accepted_contexts}
    finally:
        assoc.release()
    assert accepted == set(dimse.TRANSFER_SYNTAXES)
    assert {JPEGLossless, JPEGLSNearLossless, JPEG2000, RLELossless} <= accepted


def test_storescu_scans_a_folder(scp, tmp_path):
    folder = tmp_path / "export"
    (folder / "series").mkdir(parents=True)
    for name in ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm"):
        shutil.copy(sample(name), folder / "series" / name)

    result = storescu(scp, folder, options=("+sd", "+r"))

    assert result.returncode == 0, result.stderr
    assert response_statuses(result) == [0x0000] * 3
    assert Instance.objects.count() == 3
    assert len({e.request_id.rsplit("-", 1)[0] for e in AuditEvent.objects.all()}) == 1, "one association"


def test_resending_is_a_success_and_stores_nothing_twice(scp, media_root):
    first = storescu(scp, sample("CT_small.dcm"), sample("MR_small.dcm"))
    again = storescu(scp, sample("CT_small.dcm"), sample("MR_small.dcm"))

    assert first.returncode == again.returncode == 0
    assert response_statuses(again) == [0x0000, 0x0000]
    assert len(assert_storage_consistent(media_root)) == 2
    assert sorted(AuditEvent.objects.values_list("status", flat=True)) == [200, 200, 201, 201]


def test_a_refused_file_gets_a_failure_status_and_the_association_carries_on(scp, tmp_path, staging):
    no_study = variant(tmp_path, sample("CT_small.dcm"), "no-study.dcm", new_uids=True, StudyInstanceUID=None)

    # -nh: storescu's default is to give up after the first failure (a modality sends the rest);
    # with it, storescu exits 0 whatever the statuses were.
    result = storescu(scp, no_study, sample("MR_small.dcm"), options=("-nh",))

    assert response_statuses(result) == [dimse.CANNOT_UNDERSTAND, 0x0000]
    assert "Study Instance UID" in result.stdout + result.stderr  # the Error Comment
    assert Instance.objects.get().sop_instance_uid == pydicom.dcmread(sample("MR_small.dcm")).SOPInstanceUID
    events = list(AuditEvent.objects.order_by("id"))
    assert [(e.outcome, e.status) for e in events] == [("refused", 400), ("success", 201)]
    assert len({e.request_id.rsplit("-", 1)[0] for e in events}) == 1, "both files came in one association"
    assert list(staging.iterdir()) == []


def test_storescu_reports_a_conflict_as_a_failure(scp):
    storescu(scp, sample("MR_small.dcm"))
    # Same SOP Instance UID, other bytes (the same image compressed).
    result = storescu(scp, sample("MR_small_RLE.dcm"), options=("-xr",))

    assert result.returncode != 0
    assert response_statuses(result) == [dimse.CONFLICT]
    assert Instance.objects.get().transfer_syntax_uid == pydicom.uid.ExplicitVRLittleEndian


def test_echoscu_verifies_the_connection(scp):
    result = dcmtk("echoscu", "-aec", AE_TITLE, "127.0.0.1", str(scp))

    assert result.returncode == 0, result.stderr


def test_a_peer_calling_another_ae_title_is_rejected(scp):
    result = dcmtk("echoscu", "-aec", "SOMEONE-ELSE", "127.0.0.1", str(scp))

    assert result.returncode != 0
    assert "Rejected" in result.stdout + result.stderr


# --- pynetdicom's SCU: exact status values ----------------------------------------------------


def associate(port: int, *contexts):
    ae = AE(ae_title="TESTSCU")
    for context in contexts or (CTImageStorage, MRImageStorage):
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    return assoc


def test_status_codes_for_each_outcome(scp, owner, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="studies")
    ct = variant(tmp_path, sample("CT_small.dcm"), "ct.dcm", PatientName="Doe^Jane", PatientID="PID-4711")
    conflicting = variant(tmp_path, ct, "conflicting.dcm", PatientID="PID-0815")
    no_series = variant(tmp_path, ct, "no-series.dcm", new_uids=True, SeriesInstanceUID=None)
    series_elsewhere = variant(tmp_path, ct, "moved.dcm", SOPInstanceUID=generate_uid(), StudyInstanceUID=generate_uid())

    assoc = associate(scp)
    try:
        created = assoc.send_c_store(ct)
        duplicate = assoc.send_c_store(ct)
        conflict = assoc.send_c_store(conflicting)
        refused = assoc.send_c_store(no_series)
        series_conflict = assoc.send_c_store(series_elsewhere)
        after = assoc.send_c_store(sample("MR_small.dcm"))
    finally:
        assoc.release()

    responses = (created, duplicate, conflict, refused, series_conflict, after)
    assert [r.Status for r in responses] == [0x0000, 0x0000, 0xC409, 0xC000, 0xC409, 0x0000]
    assert "ErrorComment" not in created
    assert conflict.ErrorComment == "SOP Instance UID already stored with other content"
    assert refused.ErrorComment == "the file has no Series Instance UID (SeriesInstanceUID)"
    assert series_conflict.ErrorComment == "Series Instance UID already stored under another study"
    stored = Instance.objects.get(sop_instance_uid=pydicom.dcmread(ct).SOPInstanceUID)
    events = list(AuditEvent.objects.order_by("id"))
    assert [(e.outcome, e.status, e.object_type, e.object_id) for e in events] == [
        ("success", 201, "instance", str(stored.pk)),
        ("success", 200, "instance", str(stored.pk)),
        ("refused", 409, "instance", str(stored.pk)),  # the instance it conflicts with
        ("refused", 400, "", ""),
        ("refused", 409, "series", str(stored.series_id)),
        ("success", 201, "instance", str(Instance.objects.exclude(pk=stored.pk).get().pk)),
    ]
    for event in events:
        assert (event.user, event.username, event.action, event.method) == (owner, "owner", "dimse-c-store", "DIMSE")
        assert event.client_address == "127.0.0.1"
    for private in ("Doe", "Jane", "PID-4711", "PID-0815", "ct.dcm", "conflicting.dcm"):
        assert private not in caplog.text
    assert f"dimse c-store created status=0x0000 id={stored.pk}" in caplog.text


def test_a_file_over_the_size_limit_is_refused_as_out_of_resources(scp, settings):
    settings.DICOM_MAX_UPLOAD_BYTES = 30_000  # CT_small's data set is 38,732 bytes; MR_small's 9,358

    assoc = associate(scp)
    try:
        too_large = assoc.send_c_store(sample("CT_small.dcm"))
        small = assoc.send_c_store(sample("MR_small.dcm"))
    finally:
        assoc.release()

    assert (too_large.Status, small.Status) == (dimse.OUT_OF_RESOURCES, 0x0000)
    assert Instance.objects.count() == 1
    assert list(AuditEvent.objects.order_by("id").values_list("status", flat=True)) == [413, 201]


def test_a_data_set_far_beyond_the_limit_aborts_the_association(scp, settings):
    settings.DICOM_MAX_UPLOAD_BYTES = 10_000  # abort past 20,000 bytes: CT_small is 38,732

    assoc = associate(scp)
    response = assoc.send_c_store(sample("CT_small.dcm"))
    assert "Status" not in response
    deadline = time.monotonic() + 5
    while not assoc.is_aborted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert assoc.is_aborted

    assoc = associate(scp)  # the server itself carries on
    try:
        assert assoc.send_c_store(sample("MR_small.dcm")).Status == 0x0000
    finally:
        assoc.release()
    assert Instance.objects.count() == 1


def test_a_storage_failure_is_out_of_resources_and_the_association_goes_on(scp, settings, media_root, tmp_path, staging):
    if on_s3():
        pytest.skip("a local-folder fault (MEDIA_ROOT below a regular file); test_s3_storage covers an unreachable bucket")
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    settings.MEDIA_ROOT = blocker / "media"  # storage cannot create its folders: a real storage failure

    assoc = associate(scp)
    try:
        failed = assoc.send_c_store(sample("CT_small.dcm"))
        settings.MEDIA_ROOT = media_root
        after = assoc.send_c_store(sample("MR_small.dcm"))
    finally:
        assoc.release()

    assert (failed.Status, after.Status) == (dimse.OUT_OF_RESOURCES, 0x0000)
    assert failed.ErrorComment == "storage unavailable"
    assert list(Instance.objects.values_list("modality", flat=True)) == ["MR"]
    assert list(AuditEvent.objects.order_by("id").values_list("outcome", "status")) == [("error", 503), ("success", 201)]
    assert list(staging.iterdir()) == []


def test_an_unexpected_error_is_a_failure_status_not_a_dropped_association(scp, media_root, monkeypatch, staging):
    # A bug in the service cannot be caused for real (every known failure is an outcome): injected here.
    real_ingest = dimse.services.ingest
    calls = []

    def ingest_once_broken(**kwargs):
        calls.append(1)
        if len(calls) == 1:
            kwargs["staged"].close()
            raise RuntimeError("a bug")
        return real_ingest(**kwargs)

    monkeypatch.setattr(dimse.services, "ingest", ingest_once_broken)
    assoc = associate(scp)
    try:
        failed = assoc.send_c_store(sample("CT_small.dcm"))
        after = assoc.send_c_store(sample("MR_small.dcm"))
    finally:
        assoc.release()

    assert (failed.Status, after.Status) == (dimse.PROCESSING_ERROR, 0x0000)
    assert failed.ErrorComment == "internal error"
    assert list(Instance.objects.values_list("modality", flat=True)) == ["MR"]
    assert list(AuditEvent.objects.order_by("id").values_list("outcome", "status")) == [("error", 500), ("success", 201)]
    assert list(staging.iterdir()) == []


def test_a_data_set_received_to_disk_is_stored_too(scp, media_root, monkeypatch):
    # pynetdicom's option to write incoming data sets to a temporary file instead of memory.
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", True)
    source = sample("CT_small.dcm")

    assoc = associate(scp)
    try:
        assert assoc.send_c_store(source).Status == 0x0000
    finally:
        assoc.release()
    same_pixels(instance_for(source).file.name, source)


def test_c_echo(scp):
    assoc = associate(scp, Verification)
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


# --- the management command -------------------------------------------------------------------


def test_command_serves_until_ctrl_c(owner):
    """`manage.py storescp` in this process's main thread; Ctrl-C is a real SIGINT to this process."""
    if not (dcmtk_tool("storescu") and dcmtk_tool("echoscu")):
        pytest.skip("dcmtk's storescu and echoscu are not installed (Debian/Ubuntu: apt-get install dcmtk)")
    out = io.StringIO()
    results: dict = {}

    def sender():
        deadline = time.monotonic() + 10
        while not (match := re.search(r"Listening on 127\.0\.0\.1:(\d+)", out.getvalue())):
            if time.monotonic() > deadline:
                return  # the command did not start: no SIGINT, let it fail on its own
            time.sleep(0.05)
        port = int(match.group(1))
        results["echo"] = dcmtk_run("echoscu", "-aec", AE_TITLE, "127.0.0.1", str(port))
        results["store"] = dcmtk_run("storescu", "-aec", AE_TITLE, "127.0.0.1", str(port), sample("CT_small.dcm"))
        os.kill(os.getpid(), signal.SIGINT)

    pynetdicom_level = logging.getLogger("pynetdicom").level
    thread = threading.Thread(target=sender)
    thread.start()
    try:
        call_command("storescp", "--owner", "owner", "--port", "0", "--host", "127.0.0.1", stdout=out)
    finally:
        thread.join(30)
    assert logging.getLogger("pynetdicom").level == pynetdicom_level  # the command's quieting is undone

    assert "as AE title DICOMSITE, storing for 'owner'" in out.getvalue()
    assert out.getvalue().rstrip().endswith("Stopped.")
    assert results["echo"].returncode == 0
    assert results["store"].returncode == 0
    assert Instance.objects.get().owner == owner


def test_command_needs_an_existing_owner():
    with pytest.raises(CommandError, match="no user named 'nobody'"):
        call_command("storescp", "--owner", "nobody", "--port", "0")


def test_command_refuses_an_invalid_ae_title(owner):
    with pytest.raises(CommandError, match="invalid --ae-title"):
        call_command("storescp", "--owner", "owner", "--port", "0", "--ae-title", "LONGER-THAN-16-CHARS")
