"""DICOMweb against a live server with real clients: the dicomweb-client package, and the request
sequence the OHIF viewer sends (study search, series search, series metadata, frames).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from rest_framework.authtoken.models import Token

from studies.models import Instance

from .conftest import CT_SMALL

MR_SMALL = Path(get_testdata_file("MR_small.dcm"))
J2K_MULTIFRAME = Path(get_testdata_file("emri_small_jpeg_2k_lossless.dcm"))
JPEG_BASELINE = Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))


def fresh(source: Path, *, study: str | None = None, series: str | None = None, **attributes) -> pydicom.Dataset:
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture
def token(owner) -> str:
    return Token.objects.create(user=owner).key


@pytest.fixture
def client(live_server, token, settings) -> DICOMwebClient:
    # dicomweb-client sends "Host: localhost" without the port, so URLs built from the Host header would
    # miss it; the setting a deployment behind a proxy uses gives the public root instead.
    settings.DICOMWEB_BASE_URL = f"{live_server.url}/dicomweb"
    return DICOMwebClient(url=f"{live_server.url}/dicomweb", headers={"Authorization": f"Token {token}"})


@pytest.fixture
def study(client) -> dict:
    """A CT series of two and a multi-frame JPEG 2000 MR, stored with dicomweb-client's STOW-RS."""
    study_uid, ct_series, mr_series = generate_uid(), generate_uid(), generate_uid()
    datasets = [
        fresh(CT_SMALL, study=study_uid, series=ct_series, InstanceNumber=1, PatientName="Ohif^Xavier"),
        fresh(CT_SMALL, study=study_uid, series=ct_series, InstanceNumber=2, PatientName="Ohif^Xavier"),
        fresh(J2K_MULTIFRAME, study=study_uid, series=mr_series, InstanceNumber=1, PatientName="Ohif^Xavier"),
    ]
    response = client.store_instances(datasets)
    assert len(response.ReferencedSOPSequence) == 3
    assert "FailedSOPSequence" not in response
    return {"uid": study_uid, "ct": ct_series, "mr": mr_series, "datasets": datasets}


def test_store_search_and_retrieve_with_dicomweb_client(client, study, owner):
    assert Instance.objects.filter(owner=owner).count() == 3
    studies = client.search_for_studies(search_filters={"PatientName": "Ohif*"})
    assert [s["0020000D"]["Value"][0] for s in studies] == [study["uid"]]
    series = client.search_for_series(study["uid"])
    assert {s["0020000E"]["Value"][0] for s in series} == {study["ct"], study["mr"]}
    instances = client.search_for_instances(study["uid"], study["ct"])
    assert len(instances) == 2
    assert client.search_for_studies(search_filters={"PatientName": "Nobody*"}) == []

    ct = study["datasets"][0]
    retrieved = client.retrieve_instance(study["uid"], study["ct"], ct.SOPInstanceUID)
    assert retrieved.SOPInstanceUID == ct.SOPInstanceUID
    assert np.array_equal(retrieved.pixel_array, ct.pixel_array)
    whole = client.retrieve_study(study["uid"])
    assert sorted(ds.SOPInstanceUID for ds in whole) == sorted(ds.SOPInstanceUID for ds in study["datasets"])
    assert len(client.retrieve_series(study["uid"], study["ct"])) == 2


def test_metadata_with_dicomweb_client(client, study):
    metadata = client.retrieve_series_metadata(study["uid"], study["mr"])
    [item] = metadata
    ds = pydicom.Dataset.from_json(item, bulk_data_uri_handler=lambda *_: b"")
    mr = study["datasets"][2]
    assert ds.SOPInstanceUID == mr.SOPInstanceUID
    assert ds.NumberOfFrames == 10
    assert item["7FE00010"]["BulkDataURI"].endswith("/bulkdata/7FE00010")
    assert len(client.retrieve_study_metadata(study["uid"])) == 3
    one = client.retrieve_instance_metadata(study["uid"], study["ct"], study["datasets"][1].SOPInstanceUID)
    assert one["00200013"]["Value"] == [2]


def test_frames_with_dicomweb_client_are_the_pixels_pydicom_reads(client, study):
    mr = study["datasets"][2]
    octet_stream = ("application/octet-stream",)  # uncompressed: the server decodes the JPEG 2000 frames
    frames = client.retrieve_instance_frames(
        study["uid"], study["mr"], mr.SOPInstanceUID, frame_numbers=[1, 5, 10], media_types=octet_stream
    )
    expected = mr.pixel_array
    for content, index in zip(frames, (0, 4, 9), strict=True):
        got = np.frombuffer(content, "<u2").reshape(expected.shape[1:])
        assert np.array_equal(got, expected[index])
    ct = study["datasets"][0]
    [native] = client.retrieve_instance_frames(study["uid"], study["ct"], ct.SOPInstanceUID, frame_numbers=[1], media_types=octet_stream)
    assert np.array_equal(np.frombuffer(native, "<i2").reshape(128, 128), ct.pixel_array)


def test_frames_as_stored_with_dicomweb_client(client, study):
    mr = study["datasets"][2]
    stored = list(pydicom.encaps.generate_frames(mr.PixelData, number_of_frames=10))
    # dicomweb-client's default asks for any media type (type="*/*"): the frames come as stored.
    [default] = client.retrieve_instance_frames(study["uid"], study["mr"], mr.SOPInstanceUID, frame_numbers=[4])
    assert default == stored[3]
    [compressed] = client.retrieve_instance_frames(
        study["uid"], study["mr"], mr.SOPInstanceUID, frame_numbers=[3], media_types=(("image/jp2", "1.2.840.10008.1.2.4.90"),)
    )
    assert compressed == stored[2]


def test_rendered_and_bulkdata_with_dicomweb_client(client, study):
    from PIL import Image

    ct = study["datasets"][0]
    jpeg = client.retrieve_instance_rendered(study["uid"], study["ct"], ct.SOPInstanceUID)
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    png = client.retrieve_instance_rendered(
        study["uid"], study["ct"], ct.SOPInstanceUID, media_types=("image/png",), params={"window": "40,400", "viewport": "64,64"}
    )
    assert Image.open(io.BytesIO(png)).size == (64, 64)
    mr = study["datasets"][2]
    frame = client.retrieve_instance_frames_rendered(study["uid"], study["mr"], mr.SOPInstanceUID, frame_numbers=[2])
    assert Image.open(io.BytesIO(frame)).size == (64, 64)
    item = client.retrieve_instance_metadata(study["uid"], study["ct"], ct.SOPInstanceUID)
    [pixels] = client.retrieve_bulkdata(item["7FE00010"]["BulkDataURI"])
    assert pixels == ct.PixelData


def test_another_user_sees_nothing_through_dicomweb_client(live_server, study, other):
    stranger = DICOMwebClient(
        url=f"{live_server.url}/dicomweb", headers={"Authorization": f"Token {Token.objects.create(user=other).key}"}
    )
    assert stranger.search_for_studies() == []
    with pytest.raises(requests.HTTPError) as caught:
        stranger.retrieve_study_metadata(study["uid"])
    assert caught.value.response.status_code == 404


def test_stow_failure_reported_to_dicomweb_client(client, study):
    duplicate_uid = fresh(CT_SMALL, study=study["uid"], series=study["ct"], PatientName="Changed^Name")
    duplicate_uid.SOPInstanceUID = study["datasets"][0].SOPInstanceUID
    duplicate_uid.file_meta.MediaStorageSOPInstanceUID = duplicate_uid.SOPInstanceUID
    good = fresh(MR_SMALL, study=study["uid"])
    response = client.store_instances([duplicate_uid, good])  # 202: partly stored
    assert [item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence] == [good.SOPInstanceUID]
    assert [item.FailureReason for item in response.FailedSOPSequence] == [0x0111]


# --- OHIF's request sequence, replayed (OHIF v3 DicomWebDataSource with its default options) ----------


def test_ohif_viewer_request_sequence(live_server, study, token):
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    root = f"{live_server.url}/dicomweb"
    json_accept = {"Accept": "application/dicom+json"}

    # 1. The study list: patient name with wildcards, OHIF's includefields, limit 101.
    response = session.get(
        f"{root}/studies",
        params={
            "PatientName": "*xavier*",
            "limit": "101",
            "offset": "0",
            "fuzzymatching": "false",
            "includefield": "00081030,00080060,00080090,00100030",
        },
        headers=json_accept,
    )
    assert response.status_code == 200
    [row] = response.json()
    assert row["0020000D"]["Value"] == [study["uid"]]
    assert row["00201208"]["Value"] == [3]
    assert sorted(row["00080061"]["Value"]) == ["CT", "MR"]
    for tag in ("00081030", "00080060", "00080090", "00100030", "00100010", "00080020"):
        assert tag in row

    # 2. The study's series, with OHIF's includefields.
    response = session.get(f"{root}/studies/{study['uid']}/series", params={"includefield": "0008103E,00080021"}, headers=json_accept)
    assert response.status_code == 200
    series = {s["0020000E"]["Value"][0]: s for s in response.json()}
    assert set(series) == {study["ct"], study["mr"]}
    assert series[study["ct"]]["00201209"]["Value"] == [2]

    # 3. Each series' metadata; OHIF builds its image ids from these.
    instances = []
    for series_uid in series:
        response = session.get(f"{root}/studies/{study['uid']}/series/{series_uid}/metadata", headers=json_accept)
        assert response.status_code == 200
        instances += [(series_uid, item) for item in response.json()]
    assert len(instances) == 3

    # 4. Frames, as cornerstone's WADO-RS loader asks for them: any transfer syntax, quotes omitted.
    frame_accept = {"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}
    by_uid = {ds.SOPInstanceUID: ds for ds in study["datasets"]}
    for series_uid, item in instances:
        sop_uid = item["00080018"]["Value"][0]
        frames = item.get("00280008", {}).get("Value", [1])[0]
        url = f"{root}/studies/{study['uid']}/series/{series_uid}/instances/{sop_uid}/frames/{frames}"
        response = session.get(url, headers=frame_accept)
        assert response.status_code == 200, response.text[:200]
        content_type = response.headers["Content-Type"]
        boundary = content_type.split("boundary=")[1].split(";")[0]
        head, _, rest = response.content.split(f"--{boundary}\r\n".encode(), 1)[1].partition(b"\r\n\r\n")
        content = rest.rsplit(f"\r\n--{boundary}--".encode(), 1)[0]
        part_type = head.decode().split("Content-Type: ")[1].split("\r\n")[0]
        source = by_uid[sop_uid]
        if part_type.startswith("image/jp2"):  # stored compressed: sent as stored, OHIF decodes it in the browser
            assert content == list(pydicom.encaps.generate_frames(source.PixelData, number_of_frames=10))[frames - 1]
        else:
            assert part_type == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
            assert content == source.PixelData

    # 5. Study-list thumbnails (rendered, JPEG).
    sop_uid = instances[0][1]["00080018"]["Value"][0]
    response = session.get(
        f"{root}/studies/{study['uid']}/series/{instances[0][0]}/instances/{sop_uid}/thumbnail", headers={"Accept": "image/jpeg"}
    )
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/jpeg"


def test_ohif_cross_origin_preflight_and_request(live_server, study, token, settings):
    settings.CORS_ALLOWED_ORIGINS = ["http://localhost:3000"]
    origin = {"Origin": "http://localhost:3000"}
    preflight = requests.options(
        f"{live_server.url}/dicomweb/studies",
        headers={**origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization,accept"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    response = requests.get(
        f"{live_server.url}/dicomweb/studies", headers={**origin, "Authorization": f"Token {token}", "Accept": "application/dicom+json"}
    )
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert len(response.json()) == 1


def client_of(live_server, user) -> DICOMwebClient:
    return DICOMwebClient(url=f"{live_server.url}/dicomweb", headers={"Authorization": f"Token {Token.objects.create(user=user).key}"})


def test_includefield_all_and_copies_seen_by_view_all_with_dicomweb_client(client, study, live_server, make_user, settings):
    """The two QIDO fixes OHIF needed, seen through dicomweb-client: includefield=all answers the level's attributes,
    and a view_all user gets a study that two owners stored once, with the counts of both copies."""
    [found] = client.search_for_studies(search_filters={"StudyInstanceUID": study["uid"]}, get_remaining=False, fields=["all"])
    assert "00101010" in found  # PatientAge, only in the stored header (the first instance is a CT_small copy)
    assert not found.keys() & {"00080018", "00280010", "00280030", "00200032"}  # SOP UID, Rows, Pixel Spacing, position
    series = client.search_for_series(study["uid"], fields=["all"])
    assert all("00280010" not in one and "0020000E" in one for one in series)

    other = make_user("other-owner")
    response = client_of(live_server, other).store_instances(
        [study["datasets"][0], fresh(CT_SMALL, study=study["uid"], series=study["ct"], InstanceNumber=3)]
    )
    assert "FailedSOPSequence" not in response
    view_all = client_of(live_server, make_user("everyone", view_all=True))
    [merged] = view_all.search_for_studies(search_filters={"StudyInstanceUID": study["uid"]})
    assert (merged["00201206"]["Value"][0], merged["00201208"]["Value"][0]) == (2, 4)
    assert len(view_all.search_for_instances(study["uid"], study["ct"])) == 3
    assert len(view_all.retrieve_series_metadata(study["uid"], study["ct"])) == 3
