"""Object storage (DICOM_STORAGE_URL=s3://...) against a real S3 server: the session's SeaweedFS.

Every path that touches stored files, on S3: upload (streamed, size checked), tags, render and thumbnail,
WADO frames and retrieval, the original download and a study zip, delete after commit, check_storage and
readyz; frames read by ranged GETs (the bytes fetched for one frame of a large file are about one frame);
objects not readable without credentials. Configuration parsing is tested without a server.
"""

from __future__ import annotations

import io
import urllib.error
import urllib.request
import zipfile

import numpy as np
import pydicom
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.core.management.base import CommandError
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomsite.storage_url import FILESYSTEM_BACKEND, S3_BACKEND, storage_from_url
from studies import storage as s3storage

from .conftest import CT_SMALL, S3_TEST_BUCKET, assert_storage_consistent, on_s3, upload, use_s3
from .test_dicomweb import multipart_parts

# --- DICOM_STORAGE_URL parsing (no server) ------------------------------------------------------------------


def test_unset_and_file_urls_select_the_local_folder():
    assert storage_from_url("") == ({"BACKEND": FILESYSTEM_BACKEND}, None)
    entry, folder = storage_from_url("file:///srv/dicom")
    assert entry == {"BACKEND": FILESYSTEM_BACKEND}
    assert str(folder) == "/srv/dicom"


def test_an_s3_url_selects_private_s3_storage():
    entry, folder = storage_from_url("s3://archive-bucket/site-a?endpoint_url=http://127.0.0.1:8333&region=eu-west-1")
    assert folder is None
    assert entry["BACKEND"] == S3_BACKEND
    options = entry["OPTIONS"]
    assert options["bucket_name"] == "archive-bucket"
    assert options["location"] == "site-a"
    assert options["endpoint_url"] == "http://127.0.0.1:8333"
    assert options["region_name"] == "eu-west-1"
    assert options["default_acl"] is None and options["querystring_auth"] is True
    assert "access_key" not in options  # credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://host/x", "unknown scheme"),
        ("file://host/srv", "local folder only"),
        ("file://relative", "local folder only"),
        ("file:///", "absolute path"),
        ("s3://", "not a bucket name"),
        ("s3://Bad_Bucket", "not a bucket name"),
        ("s3://key:secret@bucket", "credentials do not belong"),
        ("s3://bucket?endpoint=http://x", "unknown option"),
        ("s3://bucket?endpoint_url=localhost:9000", "not an http"),
        ("s3://bucket?endpoint_url=http://h:port", "bad port"),
        ("s3://bucket?region=EU WEST", "not a region"),
        ("s3://bucket?region=a&region=b", "given twice"),
        ("s3://bucket/a//b", "empty, . or .."),
        ("s3://bucket?addressing_style=sideways", "addressing_style"),
    ],
)
def test_bad_storage_urls_fail_at_start_with_a_clear_message(url, why):
    with pytest.raises(ImproperlyConfigured, match="DICOM_STORAGE_URL") as raised:
        storage_from_url(url)
    assert why in str(raised.value)


def test_settings_refuse_a_bad_storage_url_at_import(monkeypatch):
    import importlib

    import dicomsite.settings as settings_module

    monkeypatch.setenv("DICOM_STORAGE_URL", "s3://x")
    try:
        with pytest.raises(ImproperlyConfigured, match="DICOM_STORAGE_URL='s3://x'"):
            importlib.reload(settings_module)
    finally:
        monkeypatch.delenv("DICOM_STORAGE_URL")
        importlib.reload(settings_module)


# --- against SeaweedFS ----------------------------------------------------------------------------------------


@pytest.fixture
def s3(settings, s3_server):
    """This test's storage: a fresh prefix in the session's bucket (whatever DICOM_TEST_STORAGE says)."""
    prefix = use_s3(settings, s3_server)
    assert on_s3()
    return s3_server, prefix


def objects(server, prefix: str) -> list[str]:
    listed = server.client().list_objects_v2(Bucket=S3_TEST_BUCKET, Prefix=f"{prefix}/")
    return sorted(entry["Key"] for entry in listed.get("Contents", ()))


def test_the_whole_life_of_an_instance_on_s3(s3, api, media_root, django_capture_on_commit_callbacks):
    server, prefix = s3
    response = upload(api, CT_SMALL.read_bytes(), "CT_small.dcm")
    assert response.status_code == 201, response.content
    body = response.json()
    key = body["storage"]["key"]
    assert body["storage"]["backend"] == "studies.storage.PrivateS3Storage"
    assert objects(server, prefix) == [f"{prefix}/{key}"]
    assert list(media_root.iterdir()) == []  # nothing on the local disk
    assert_storage_consistent(media_root)
    pk = body["id"]

    tag = api.get(f"/api/instances/{pk}/tags/", {"tag": "PatientName"})
    assert tag.status_code == 200, tag.content
    image = api.get(f"/api/instances/{pk}/image/", HTTP_ACCEPT="image/png")
    assert image.status_code == 200 and image["Content-Type"] == "image/png"
    thumbnail = api.get(f"/api/instances/{pk}/thumbnail/", HTTP_ACCEPT="image/png")
    assert thumbnail.status_code == 200 and thumbnail["Content-Type"] == "image/png"

    original = api.get(f"/api/instances/{pk}/file/")
    assert original.status_code == 200
    stored = b"".join(original.streaming_content)
    assert int(original["Content-Length"]) == len(stored) == body["size"]
    assert stored[128:] == CT_SMALL.read_bytes()[128:]

    study = api.get(f"/api/studies/{body['study']}/archive/")
    assert study.status_code == 200, getattr(study, "content", b"")[:300]
    with zipfile.ZipFile(io.BytesIO(b"".join(study.streaming_content))) as archive:
        (member,) = archive.namelist()
        assert archive.read(member) == stored

    base = f"/dicomweb/studies/{body['study_instance_uid']}/series/{body['series_instance_uid']}/instances/{body['sop_instance_uid']}"
    frame = api.get(f"{base}/frames/1", HTTP_ACCEPT='multipart/related; type="application/octet-stream"')
    assert frame.status_code == 200
    ((_, pixels),) = multipart_parts(frame)
    assert len(pixels) == 128 * 128 * 2
    retrieved = api.get(base, HTTP_ACCEPT='multipart/related; type="application/dicom"; transfer-syntax=*')
    assert retrieved.status_code == 200
    ((_, instance_bytes),) = multipart_parts(retrieved)
    assert instance_bytes == stored
    rendered = api.get(f"{base}/rendered", HTTP_ACCEPT="image/jpeg")
    assert rendered.status_code == 200

    call_command("check_storage", stdout=io.StringIO())  # clean: no CommandError

    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/api/instances/{pk}/").status_code == 204
    assert objects(server, prefix) == []
    assert_storage_consistent(media_root)


def test_check_storage_reports_and_fixes_an_orphan_object(s3, api):
    server, prefix = s3
    assert upload(api, CT_SMALL.read_bytes()).status_code == 201
    orphan = default_storage.save("dicom/ab/cd/abcd-orphan.dcm", ContentFile(b"not catalogued"))
    out = io.StringIO()
    with pytest.raises(CommandError, match="1 problem"):
        call_command("check_storage", stdout=out)
    assert f"file without row: {orphan}" in out.getvalue()
    out = io.StringIO()
    call_command("check_storage", "--fix", "--grace-minutes", "0", stdout=out)
    assert "1 removed" in out.getvalue()
    assert f"{prefix}/{orphan}" not in objects(server, prefix)


def test_objects_are_not_readable_without_credentials(s3, api):
    server, prefix = s3
    key = upload(api, CT_SMALL.read_bytes()).json()["storage"]["key"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{server.endpoint_url}/{S3_TEST_BUCKET}/{prefix}/{key}", timeout=10)
    assert refused.value.code == 403
    with pytest.raises(NotImplementedError):
        default_storage.url(key)  # the service has no storage URLs to hand out


def test_readyz_checks_the_bucket(s3, client, settings):
    assert client.get("/readyz").json()["storage"] == "ok"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {**settings.STORAGES["default"], "OPTIONS": {**settings.STORAGES["default"]["OPTIONS"], "bucket_name": "no-such-bucket"}},
    }
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["storage"] == "down"


def test_a_missing_object_is_the_usual_refusal(s3, api):
    server, prefix = s3
    body = upload(api, CT_SMALL.read_bytes()).json()
    server.client().delete_object(Bucket=S3_TEST_BUCKET, Key=f"{prefix}/{body['storage']['key']}")
    response = api.get(f"/api/instances/{body['id']}/image/", HTTP_ACCEPT="image/png")
    assert response.status_code == 422
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("check_storage", stdout=out)
    assert "row without file" in out.getvalue()


def multiframe_bytes(frames: int, rows: int = 512, columns: int = 512) -> bytes:
    """A native 16-bit multi-frame file: `frames` frames of rows x columns (each frame 2*rows*columns bytes)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("multiframe.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Multi^Frame", "MF1", "OT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    pixels = np.arange(frames, dtype=np.uint16).repeat(rows * columns).reshape(frames, rows, columns)
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_one_frame_of_a_large_multiframe_object_is_read_with_ranged_gets(s3, api, capsys):
    frames, frame_bytes = 40, 512 * 512 * 2  # 40 frames of 512 KiB: a 20 MiB object (a multipart upload)
    data = multiframe_bytes(frames)
    body = upload(api, data, "multiframe.dcm").json()
    assert body["size"] == len(data) and body["number_of_frames"] == frames
    base = f"/dicomweb/studies/{body['study_instance_uid']}/series/{body['series_instance_uid']}/instances/{body['sop_instance_uid']}"

    s3storage.fetch_stats.reset()
    response = api.get(f"{base}/frames/31", HTTP_ACCEPT='multipart/related; type="application/octet-stream"')
    assert response.status_code == 200
    ((_, pixels),) = multipart_parts(response)
    assert pixels == np.full(512 * 512, 30, dtype=np.uint16).tobytes()
    fetched, requests = s3storage.fetch_stats.bytes, s3storage.fetch_stats.requests
    with capsys.disabled():
        print(f"\n[ranged reads] frame 31 of a {len(data)} byte object: {fetched} bytes in {requests} GETs (one frame: {frame_bytes})")
    assert frame_bytes <= fetched <= frame_bytes + 256 * 1024  # the frame plus the header's read-ahead
    assert fetched < len(data) / 20

    s3storage.fetch_stats.reset()
    rendered = api.get(f"/api/instances/{body['id']}/image/", {"frame": 40}, HTTP_ACCEPT="image/png")
    assert rendered.status_code == 200, rendered.content[:300]
    assert s3storage.fetch_stats.bytes < len(data) / 4  # render decodes one frame too


def test_a_whole_object_streams_in_bounded_requests(s3, api):
    data = multiframe_bytes(24)  # 12 MiB
    body = upload(api, data, "multiframe.dcm").json()
    s3storage.fetch_stats.reset()
    response = api.get(f"/api/instances/{body['id']}/file/")
    streamed = b"".join(response.streaming_content)
    assert streamed[128:] == data[128:]
    # FileResponse reads 4 KiB at a time; the doubling read-ahead turns that into a few ranged GETs of <= 4 MiB.
    assert s3storage.fetch_stats.bytes == len(data)
    assert s3storage.fetch_stats.requests <= 12


class CountingReader(io.RawIOBase):
    """A file that records the largest single read asked of it."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos, self.largest = data, 0, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = {0: offset, 1: self._pos + offset, 2: len(self._data) + offset}[whence]
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        size = len(self._data) - self._pos if size is None or size < 0 else size
        self.largest = max(self.largest, size)
        chunk = self._data[self._pos : self._pos + size]
        self._pos += len(chunk)
        return chunk


def test_a_large_upload_is_streamed_in_parts_not_read_whole(s3):
    from django.core.files.base import File

    data = bytes(range(256)) * (80 * 1024)  # 20 MiB
    reader = CountingReader(data)
    name = default_storage.save("dicom/zz/zz/large.bin", File(reader, name="large.bin"))
    assert default_storage.size(name) == len(data)
    assert reader.largest <= 8 * 1024 * 1024  # multipart: 8 MiB parts, never the whole file
    with default_storage.open(name, "rb") as handle:
        assert handle.read() == data


def test_a_file_url_sets_the_local_folder(monkeypatch, tmp_path):
    import importlib

    import dicomsite.settings as settings_module

    monkeypatch.setenv("DICOM_STORAGE_URL", f"file://{tmp_path}/archive")
    try:
        reloaded = importlib.reload(settings_module)
        assert reloaded.MEDIA_ROOT == tmp_path / "archive"
        assert reloaded.STORAGES["default"] == {"BACKEND": FILESYSTEM_BACKEND}
    finally:
        monkeypatch.delenv("DICOM_STORAGE_URL")
        importlib.reload(settings_module)


def test_storage_that_does_not_answer_is_503_storage_unavailable_and_keeps_nothing(s3, api, settings, client):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = {**settings.STORAGES["default"]["OPTIONS"], "endpoint_url": f"http://127.0.0.1:{port}"}
    settings.STORAGES = {**settings.STORAGES, "default": {**settings.STORAGES["default"], "OPTIONS": options}}
    response = upload(api, CT_SMALL.read_bytes())
    assert response.status_code == 503, response.content
    assert response.json()["code"] == "storage_unavailable"
    from studies.models import Instance

    assert not Instance.objects.exists()
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["storage"] == "down"
