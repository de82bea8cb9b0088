import io, struct, re
import pydicom, pytest
from pydicom.uid import generate_uid
from django.test import Client
from .conftest import CT_SMALL, dicom_bytes, upload
pytestmark = pytest.mark.django_db

def test_explore(api, owner):
    owner.is_staff = True; owner.save()
    data = dicom_bytes(PatientName="Evil\x1b[31m\x07\x08\x0b\x0c\x7f\u202e<script>alert(1)</script>", StudyDescription="a\r\nb\tc\x01\x02<b>", PatientID="\x1b$B", SeriesDescription="s\x1bx")
    r = upload(api, data)
    body = r.json(); iid = body["id"]
    print(repr(body["patient_name"]), repr(body["study_description"]), repr(body["patient_id"]))
    admin = Client(); admin.force_login(owner)
    for p in (f"/api/instances/{iid}/?format=api", f"/admin/studies/instance/{iid}/change/", "/admin/studies/instance/", "/admin/studies/study/", "/admin/studies/series/", f"/api/studies/{body['study']}/?format=api", f"/api/instances/{iid}/tags/?format=api", f"/api/instances/?format=api", f"/api/instances/{iid}/tags/PatientName/?format=api"):
        c = admin if p.startswith("/admin") else api
        html = c.get(p).content.decode()
        ctrl = sorted(set(re.findall(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u202e]", html)))
        print(p[-40:], ctrl, "<script>alert" in html, html.count("&lt;script&gt;"))
