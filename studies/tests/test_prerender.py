"""Pre-rendering after upload (studies/prerender.py): jobs queued on RQ after the catalogue commits, run by a
real `manage.py rqworker --burst` process, filling the shared Redis cache with the thumbnail and default image.

Everything here uses Redis database 13 (its own: CI's Redis pass puts the cache on 15) and flushes only that.
The worker tests run the upload (`manage.py import_dicom`, i.e. ingest_batch) and the worker as subprocesses
on a migrated SQLite file of their own (test_bulk_import's external_db), since the test database is in memory.
"""

from __future__ import annotations

import io
import socket
import sqlite3
import uuid

import pytest
import redis
from django.core.cache import cache
from PIL import Image
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from studies import imaging, prerender
from studies.models import Instance

from .conftest import CT_SMALL, dicom_bytes, upload
from .test_bulk_import import external_db, manage, sqlite_template, subprocess_env, write  # noqa: F401 - fixtures

REDIS_DB = "redis://127.0.0.1:6379/13"


def _redis_or_skip() -> redis.Redis:
    connection = redis.Redis.from_url(REDIS_DB, socket_connect_timeout=2)
    try:
        connection.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis at 127.0.0.1:6379 (.ci/run starts one)")
    return connection


@pytest.fixture
def redis13(settings):
    """Cache and queue on Redis db 13, pre-rendering on, retries without waiting; db 13 flushed before and after."""
    connection = _redis_or_skip()
    connection.flushdb()
    settings.REDIS_URL = REDIS_DB
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_DB}}
    settings.RQ_QUEUES = {prerender.QUEUE: {"URL": REDIS_DB, "DEFAULT_TIMEOUT": 300}}
    settings.DICOM_PRERENDER = True
    settings.DICOM_PRERENDER_RETRY_INTERVALS = [0]
    yield connection
    connection.flushdb()
    connection.close()


def queued(connection: redis.Redis) -> list[Job]:
    return Queue(prerender.QUEUE, connection=connection).get_jobs()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Sha:
    """What imaging.cache_key needs of an instance: its stored bytes' hash."""

    def __init__(self, sha256: str) -> None:
        self.sha256 = sha256


def cache_keys(sha256: str) -> list[str]:
    return [imaging.cache_key(Sha(sha256), options) for options in prerender.variants()]  # type: ignore[arg-type]


# --- queuing (in process, real Redis) ----------------------------------------------------------------------


@pytest.mark.django_db
def test_an_upload_queues_one_job_holding_only_the_instance_id_after_commit(api, redis13, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = upload(api, dicom_bytes(PatientName="SECRET^NAME", PatientID="SECRET-ID"))
        assert queued(redis13) == []  # nothing before the commit
    assert response.status_code == 201
    for callback in callbacks:
        callback()
    [job] = queued(redis13)
    assert job.func_name == "studies.prerender.render_instance"
    assert job.args == (response.json()["id"],) and job.kwargs == {}
    assert job.retries_left == prerender.MAX_RETRIES
    for key in redis13.keys("*"):  # nothing about the patient anywhere in Redis
        dump = redis13.dump(key) or b""
        assert b"SECRET" not in dump


@pytest.mark.django_db
def test_a_duplicate_or_refused_upload_queues_nothing(api, redis13, django_capture_on_commit_callbacks):
    data = dicom_bytes()
    with django_capture_on_commit_callbacks(execute=True):
        assert upload(api, data).status_code == 201
    redis13.flushdb()
    with django_capture_on_commit_callbacks(execute=True):
        assert upload(api, data).status_code == 200
        assert upload(api, b"not dicom" * 100).status_code == 400
    assert queued(redis13) == []


@pytest.mark.django_db
def test_import_dicom_queues_one_job_per_created_instance(owner, redis13, tmp_path, django_capture_on_commit_callbacks):
    from django.core.management import call_command

    for n in range(3):
        write(tmp_path / "in" / f"{n}.dcm", dicom_bytes())
    with django_capture_on_commit_callbacks(execute=True):
        call_command("import_dicom", str(tmp_path / "in"), "--owner", "owner", "--progress", "none", stdout=io.StringIO())
    assert sorted(job.args[0] for job in queued(redis13)) == sorted(str(pk) for pk in Instance.objects.values_list("pk", flat=True))
    assert len(queued(redis13)) == 3


@pytest.mark.django_db
def test_without_redis_url_nothing_is_queued(api, redis13, settings, django_capture_on_commit_callbacks):
    settings.REDIS_URL = ""
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert upload(api, dicom_bytes()).status_code == 201
    assert callbacks == [] and queued(redis13) == []


@pytest.mark.django_db
def test_prerender_off_queues_nothing(api, redis13, settings, django_capture_on_commit_callbacks):
    settings.DICOM_PRERENDER = False
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert upload(api, dicom_bytes()).status_code == 201
    assert callbacks == [] and queued(redis13) == []


@pytest.mark.django_db(transaction=True)
def test_redis_unreachable_the_upload_still_succeeds_and_the_image_renders_lazily(api, settings, caplog):
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/13"  # the cache stays local memory
    settings.RQ_QUEUES = {prerender.QUEUE: {"URL": settings.REDIS_URL}}
    settings.DICOM_PRERENDER = True
    with caplog.at_level("WARNING", logger="studies.prerender"):
        response = upload(api, CT_SMALL.read_bytes())  # a real commit: the on_commit hook runs and fails
    assert response.status_code == 201, response.content
    assert "prerender not queued (ConnectionError)" in caplog.text
    assert Instance.objects.count() == 1
    assert api.get(f"/api/instances/{response.json()['id']}/thumbnail/").status_code == 200


# --- the job itself (in process) ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_job_for_a_deleted_instance_is_a_no_op():
    assert prerender.render_instance(str(uuid.uuid4())) == "gone"


@pytest.mark.django_db
def test_a_job_for_an_instance_without_pixel_data_is_a_no_op(api):
    response = upload(api, dicom_bytes(PixelData=None))
    assert response.status_code == 201, response.content
    assert prerender.render_instance(response.json()["id"]) == "no pixel data"


@pytest.mark.django_db
def test_the_job_fills_the_cache_and_changes_nothing(uploaded):
    instance = Instance.objects.get(pk=uploaded["id"])
    before = (instance.file.read(), list(Instance.objects.values()))
    instance.file.close()
    assert prerender.render_instance(str(instance.pk)) == "rendered"
    assert all(cache.get(key) is not None for key in cache_keys(instance.sha256))
    instance.file.open("rb")
    assert (instance.file.read(), list(Instance.objects.values())) == before
    instance.file.close()


# --- a real worker process ---------------------------------------------------------------------------------


def worker_env(external_db, media_root, temp) -> dict:  # noqa: F811 - the fixture's value
    return {**subprocess_env(external_db, media_root, temp), "REDIS_URL": REDIS_DB, "DICOM_PRERENDER_RETRY_INTERVALS": "0"}


def import_files(env: dict, external_db, folder) -> list[tuple[str, str, str]]:  # noqa: F811 - the fixture's value
    """manage.py import_dicom (ingest_batch, its own process); (id, file key, sha256) of what it stored."""
    manage("import_dicom", str(folder), "--owner", "importer", "--progress", "none", env=env)
    if external_db.sqlite_path is None:  # PostgreSQL: the test's own database (transaction=True)
        return [(str(pk), key, sha) for pk, key, sha in Instance.objects.filter(owner__username="importer").values_list("id", "file", "sha256")]
    with sqlite3.connect(external_db.sqlite_path) as db:
        return [(str(uuid.UUID(pk)), key, sha) for pk, key, sha in db.execute("SELECT id, file, sha256 FROM studies_instance")]


def run_worker(env: dict):
    return manage("rqworker", prerender.QUEUE, "--burst", env=env)


@pytest.mark.django_db(transaction=True)  # on PostgreSQL the subprocesses share the test's database
def test_a_real_worker_prerenders_into_the_shared_cache_and_the_first_get_decodes_nothing(
    api, redis13, settings, external_db, media_root, upload_temp_dir, tmp_path  # noqa: F811
):
    data = dicom_bytes()
    write(tmp_path / "in" / "scan.dcm", data)
    env = worker_env(external_db, media_root, upload_temp_dir)
    [(instance_id, _key, sha256)] = import_files(env, external_db, tmp_path / "in")
    [job] = queued(redis13)
    assert job.args == (instance_id,)
    for key in cache_keys(sha256):
        assert cache.get(key) is None

    worker = run_worker(env)
    assert "prerendered id=" + instance_id in worker.stderr + worker.stdout
    assert Job.fetch(job.id, connection=redis13).get_status() == JobStatus.FINISHED
    thumbnail, thumbnail_webp, image, image_webp = (cache.get(key) for key in cache_keys(sha256))
    assert thumbnail[1] == "image/jpeg" and max(Image.open(io.BytesIO(thumbnail[0])).size) == settings.DICOM_THUMBNAIL_SIZE
    assert thumbnail_webp[1] == image_webp[1] == "image/webp"
    assert image[1] == "image/png" and Image.open(io.BytesIO(image[0])).size == (128, 128)  # CT_small's own size

    # The same bytes, catalogued here (pre-rendering off) with their stored file then removed: a GET that had to
    # decode would be 422 "the stored file is missing"; the prerendered variants answer from the cache.
    settings.DICOM_PRERENDER = False
    here = upload(api, data).json()["id"]
    stored = Instance.objects.get(pk=here)
    assert stored.sha256 == sha256
    stored.file.storage.delete(stored.file.name)
    response = api.get(f"/api/instances/{here}/thumbnail/")
    assert response.status_code == 200 and response.content == thumbnail[0]
    assert response["ETag"] == '"' + cache_keys(sha256)[0].split(":", 1)[1] + '"'
    assert api.get(f"/api/instances/{here}/image/").content == image[0]
    browser = api.get(f"/api/instances/{here}/thumbnail/", HTTP_ACCEPT=prerender.BROWSER_ACCEPT)
    assert browser.status_code == 200 and browser.content == thumbnail_webp[0]
    viewer = api.get(f"/api/instances/{here}/image/?frame=1&preset=default", HTTP_ACCEPT=prerender.BROWSER_ACCEPT)
    assert viewer.status_code == 200 and viewer.content == image_webp[0]
    assert api.get(f"/api/instances/{here}/thumbnail/?size=64").status_code == 422  # not prerendered: decodes, fails


@pytest.mark.django_db(transaction=True)
def test_a_failing_job_is_retried_up_to_the_bound_then_left_failed_and_a_deleted_instance_is_a_no_op(
    redis13, external_db, media_root, upload_temp_dir, tmp_path  # noqa: F811
):
    write(tmp_path / "in" / "scan.dcm", dicom_bytes())
    env = worker_env(external_db, media_root, upload_temp_dir)
    [(instance_id, key, sha256)] = import_files(env, external_db, tmp_path / "in")
    stored = media_root / key
    corrupt = stored.read_bytes()[:-4000]  # the pixel data cut short: the frame cannot be decoded
    stored.write_bytes(corrupt)
    gone = str(uuid.uuid4())
    prerender.enqueue([gone])

    worker = run_worker(env)
    output = worker.stderr + worker.stdout
    [failed] = FailedJobRegistry(prerender.QUEUE, connection=redis13).get_job_ids()
    job = Job.fetch(failed, connection=redis13)
    assert job.args == (instance_id,)
    assert job.get_status() == JobStatus.FAILED and job.retries_left == 0
    assert output.count(f"prerender failed id={instance_id}") == 1 + prerender.MAX_RETRIES
    assert [Job.fetch(i, connection=redis13).args for i in FinishedJobRegistry(prerender.QUEUE, connection=redis13).get_job_ids()] == [(gone,)]
    assert f"prerender skipped id={gone}" in output
    # Nothing changed: the file as it was (corrupt, not repaired or removed), the row as it was, nothing cached.
    assert stored.read_bytes() == corrupt
    assert external_db.instance_rows() == [(key, sha256)]
    assert all(cache.get(k) is None for k in cache_keys(sha256))
