"""Two stateless app servers on one PostgreSQL, one S3 bucket (SeaweedFS) and one Redis: what one stores,
the other serves; what one caches, the other reuses; a delete or a revoked token counts on both at once.

Each server is a real gunicorn (gunicorn.conf.py) on its own port; nothing is shared but the three services.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings as django_settings
from django.db import connection
from rest_framework.authtoken.models import Token

from . import s3server
from .conftest import S3_TEST_BUCKET, dicom_bytes
from .processes import free_port, stop, wait_until_up

PROJECT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


class Server:
    """One app server: gunicorn on a free port with the shared database, bucket and Redis."""

    def __init__(self, name: str, env: dict[str, str], tmp_path: Path) -> None:
        self.name = name
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.log = tmp_path / f"{name}.log"
        server_env = {**env, "GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": "1", "GUNICORN_THREADS": "2"}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--no-control-socket", "dicomsite.wsgi"],
                cwd=PROJECT, env=server_env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_until_up(f"{self.base}/readyz", self.process, self.log)

    def request(self, method: str, path: str, token: str, data: bytes | None = None, content_type: str = "") -> tuple[int, dict, bytes]:
        headers = {"Authorization": f"Token {token}"} | ({"Content-Type": content_type} if content_type else {})
        request = urllib.request.Request(f"{self.base}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as answer:
            return answer.code, dict(answer.headers), answer.read()

    def stop(self) -> None:
        stop(self.process)


@pytest.fixture
def cluster(s3_server, make_user, tmp_path):
    """(server A, server B, a user's token, the boto3 client and prefix of their bucket)."""
    if connection.vendor != "postgresql":
        pytest.skip("two app servers share one PostgreSQL: runs in the PostgreSQL pass")
    if not getattr(django_settings, "REDIS_URL", ""):
        pytest.skip("two app servers share one Redis (renders, token cache): set REDIS_URL")
    token = Token.objects.create(user=make_user("shared")).key
    db = connection.settings_dict
    credentials = quote(db["USER"]) + (f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else "")
    prefix = f"cluster-{uuid.uuid4().hex[:12]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "DICOM_", "GUNICORN_", "AWS_"))}
    env.update(
        DJANGO_SECRET_KEY="two-servers-test-key",
        DATABASE_URL=f"postgres://{credentials}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}",
        REDIS_URL=django_settings.REDIS_URL,  # the test's own Redis database: its cache is the servers' cache
        DICOM_STORAGE_URL=f"s3://{S3_TEST_BUCKET}/{prefix}?endpoint_url={s3_server.endpoint_url}&region={s3server.REGION}",
        AWS_ACCESS_KEY_ID=s3server.ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=s3server.SECRET_KEY,
        DICOM_PRERENDER="0",  # renders are made by requests here, so the cache's sharing is what is tested
        DICOM_MEDIA_ROOT=str(tmp_path / "unused-media"),
        DICOM_THROTTLE_UPLOAD="1000000/min",
        DICOM_THROTTLE_RENDER="1000000/min",
    )
    a = Server("a", env, tmp_path)
    try:
        b = Server("b", env, tmp_path)
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b, token, s3_server.client(), prefix
    finally:
        a.stop()
        b.stop()
        client = s3_server.client()
        for item in client.list_objects_v2(Bucket=S3_TEST_BUCKET, Prefix=prefix).get("Contents", []):
            client.delete_object(Bucket=S3_TEST_BUCKET, Key=item["Key"])
    assert not (tmp_path / "unused-media").exists(), "an app server wrote to its local disk"


def upload(server: Server, token: str, data: bytes) -> dict:
    status, _, body = server.request("POST", "/api/instances/", token, data, "application/dicom")
    assert status == 201, body
    return json.loads(body)


def test_what_a_stores_b_serves_and_b_deletes_for_both(cluster):
    a, b, token, _, _ = cluster
    data = dicom_bytes()
    created = upload(a, token, data)
    iid = created["id"]

    status, _, body = b.request("GET", "/api/instances/", token)
    assert status == 200 and [row["id"] for row in json.loads(body)["results"]] == [iid]
    status, _, body = b.request("GET", f"/api/instances/{iid}/tags/PatientName/", token)
    assert status == 200 and json.loads(body)["value"] == "CompressedSamples^CT1"
    status, headers, body = b.request("GET", f"/api/instances/{iid}/image/", token)
    assert status == 200 and headers["Content-Type"] == "image/png" and body[:8] == b"\x89PNG\r\n\x1a\n"
    detail = json.loads(b.request("GET", f"/api/instances/{iid}/", token)[2])
    status, _, original = b.request("GET", f"/api/instances/{iid}/file/", token)
    assert status == 200 and hashlib.sha256(original).hexdigest() == detail["sha256"]
    frame_path = (
        f"/dicomweb/studies/{detail['study_instance_uid']}/series/{detail['series_instance_uid']}"
        f"/instances/{detail['sop_instance_uid']}/frames/1"
    )
    status, headers, _ = b.request("GET", frame_path, token)
    assert status == 200 and headers["Content-Type"].startswith("multipart/related")

    status, _, _ = b.request("DELETE", f"/api/instances/{iid}/", token)
    assert status == 204
    for server in (a, b):  # gone from both at once: no stale row, header or cached image anywhere
        for path in (f"/api/instances/{iid}/", f"/api/instances/{iid}/tags/PatientName/", f"/api/instances/{iid}/image/"):
            status, _, body = server.request("GET", path, token)
            assert status == 404, (server.name, path, body)


def test_a_render_cached_by_a_is_served_by_b(cluster):
    a, b, token, client, prefix = cluster
    created = upload(a, token, dicom_bytes())
    iid = created["id"]
    status, headers, first = a.request("GET", f"/api/instances/{iid}/image/?preset=lung", token)
    assert status == 200
    # Take the stored object away: B can answer only from the cache A filled.
    (stored,) = client.list_objects_v2(Bucket=S3_TEST_BUCKET, Prefix=prefix)["Contents"]
    client.delete_object(Bucket=S3_TEST_BUCKET, Key=stored["Key"])
    status, b_headers, second = b.request("GET", f"/api/instances/{iid}/image/?preset=lung", token)
    assert status == 200 and second == first and b_headers["ETag"] == headers["ETag"]
    status, _, _ = b.request("GET", f"/api/instances/{iid}/image/?preset=bone", token)
    assert status == 422  # not cached, and the file is gone: B really had no other source for the first


def test_a_token_revoked_is_refused_by_both_servers_at_once(cluster):
    a, b, token, _, _ = cluster
    for server in (a, b):  # both remember the token (DICOM_AUTH_CACHE_SECONDS)
        assert server.request("GET", "/api/instances/", token)[0] == 200
    Token.objects.filter(key=token).delete()  # the admin's revocation, from a third process on the same Redis
    for server in (a, b):
        status, _, body = server.request("GET", "/api/instances/", token)
        assert status == 401, (server.name, body)


def test_nothing_is_public_in_the_bucket(cluster):
    a, _, token, client, prefix = cluster
    upload(a, token, dicom_bytes())
    (stored,) = client.list_objects_v2(Bucket=S3_TEST_BUCKET, Prefix=prefix)["Contents"]
    endpoint = client.meta.endpoint_url
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{endpoint}/{S3_TEST_BUCKET}/{stored['Key']}", timeout=10)
    assert refused.value.code == 403
