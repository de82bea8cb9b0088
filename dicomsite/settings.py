"""Settings for the DICOM catalogue service, driven by environment variables.

Every variable is read through a small typed helper that fails loudly on a bad value.
Defaults are the embedded setup (`make run`, tests): SQLite file, `media/` on disk,
local-memory cache. See README.md "Configuration" for the table of variables.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from dicomsite.storage_url import storage_from_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r} must be at least {minimum}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off (make run and make test set one for you)"
        )
    SECRET_KEY = "insecure-development-key-only-for-make-run"  # noqa: S105 - DEBUG only

# --- security -------------------------------------------------------------------------
# Behind TLS (directly or via a reverse proxy), set DJANGO_HTTPS=1: secure cookies, HSTS, redirect.
HTTPS = env_bool("DJANGO_HTTPS", False)
SECURE_SSL_REDIRECT = HTTPS and env_bool("DJANGO_SSL_REDIRECT", True)
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31_536_000, minimum=0) if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
# Preloading commits the domain (and subdomains) to HTTPS in browsers for months: the deployer's decision.
SECURE_HSTS_PRELOAD = HTTPS and env_bool("DJANGO_HSTS_PRELOAD", False)
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
if env_bool("DJANGO_BEHIND_PROXY", False):
    # Only when a proxy you control sets X-Forwarded-Proto (and strips it from clients).
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = env_int("DJANGO_SESSION_SECONDS", 8 * 3600, minimum=60)

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "corsheaders",
    # RQ on the Redis of REDIS_URL: `manage.py rqworker prerender` runs the background jobs (studies/prerender.py).
    "django_rq",
    "studies",
]

MIDDLEWARE = [
    "dicomsite.logging.RequestIdMiddleware",
    # Outside everything that can answer with an HTML page: API errors stay JSON, in DEBUG too.
    "studies.http.middleware.JsonErrorsMiddleware",
    "studies.http.middleware.RejectNulInQueryMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Before CommonMiddleware: answers CORS preflights for /dicomweb/ (and only there).
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: it sees the final status of every view, including DRF's authentication result.
    "studies.audit.middleware.AuditMiddleware",
]
# Audit events record REMOTE_ADDR; behind a reverse proxy that sets X-Forwarded-For, turn this on.
AUDIT_TRUST_X_FORWARDED_FOR = env_bool("AUDIT_TRUST_X_FORWARDED_FOR", False)
# Audit events are buffered per process and written in batches by a background thread every this many ms (and at
# every clean exit: shutdown, worker recycle), off the request path; a power cut or SIGKILL loses at most the last
# interval's events of each process (docs/operations.md#audit-trail). 0: each event is written in its request.
AUDIT_FLUSH_MS = env_int("DICOM_AUDIT_FLUSH_MS", 500)
# Events waiting past this many (the database is down or slower than the traffic) are written in their request again.
AUDIT_BUFFER_MAX = env_int("DICOM_AUDIT_BUFFER_MAX", 10000, minimum=1)

ROOT_URLCONF = "dicomsite.urls"
WSGI_APPLICATION = "dicomsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# sqlite:///path (default: db.sqlite3 next to manage.py) or postgres://user@host:port/name
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # PostgreSQL's default random_page_cost (4) prices random reads as on spinning disks. With it, owner-scoped
    # lists with a filter (date range, UID search) walk the global uploaded_at index backwards (correlation 1,
    # "sequential") and filter out every other owner's rows instead of using the owner-leading indexes:
    # 10-35 ms instead of 1-4 ms at 100k instances (python -m bench run scale). 1.1 suits SSDs and cached data.
    _page_cost = env_str("DATABASE_RANDOM_PAGE_COST", "1.1")
    try:
        float(_page_cost)
    except ValueError:
        raise ImproperlyConfigured(f"DATABASE_RANDOM_PAGE_COST={_page_cost!r} is not a number") from None
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("options", f"-c random_page_cost={_page_cost}")
    # Server-side parameter binding (=1): psycopg then prepares a statement run often once per connection. Measured
    # (docs/performance.md, the hot-path levers): no gain that stands out of this machine's noise, so off by default;
    # never behind a pooler in transaction mode (PgBouncer), which cannot keep prepared statements.
    if env_bool("DATABASE_SERVER_SIDE_BINDING", False):
        DATABASES["default"]["OPTIONS"]["server_side_binding"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded default must hold parallel uploaders (gunicorn threads, runserver threads, import_dicom):
    # - WAL: readers never block the writer, nor the writer readers;
    # - BEGIN IMMEDIATE for every transaction: a transaction that starts as a reader and then writes cannot
    #   be given the busy timeout (SQLite answers "database is locked" at once to avoid a deadlock), so each
    #   takes the write lock up front and waits its turn;
    # - a busy timeout long enough for a queue of writers (each holds the lock for milliseconds).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        timeout=env_int("DATABASE_SQLITE_TIMEOUT", 30, minimum=1),
        transaction_mode="IMMEDIATE",
        init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    )
    DATABASES["default"]["CONN_MAX_AGE"] = 0

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("DJANGO_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --- files -------------------------------------------------------------------------
# Stored DICOM files are private: MEDIA_ROOT is never routed; downloads go through
# views that check ownership. MEDIA_URL is set only because FileField requires one.
# DICOM_STORAGE_URL: unset or file:///folder (the local folder), or s3://bucket[/prefix]?endpoint_url=...&region=...
# (dicomsite/storage_url.py; credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
DICOM_STORAGE_URL = env_str("DICOM_STORAGE_URL")
_default_storage, _storage_folder = storage_from_url(DICOM_STORAGE_URL)
if _storage_folder is not None and env_str("DICOM_MEDIA_ROOT") and Path(env_str("DICOM_MEDIA_ROOT")) != _storage_folder:
    raise ImproperlyConfigured("DICOM_MEDIA_ROOT and DICOM_STORAGE_URL=file://... name different folders: set one")
MEDIA_ROOT = _storage_folder or Path(env_str("DICOM_MEDIA_ROOT", str(BASE_DIR / "media")))
MEDIA_URL = "/_private-media-not-served/"
FILE_UPLOAD_PERMISSIONS = 0o600
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700
FILE_UPLOAD_TEMP_DIR = env_str("DICOM_UPLOAD_TEMP_DIR") or None

STATIC_URL = "static/"
# Where `collectstatic` gathers them; under `make serve` nginx serves this folder at /static/.
STATIC_ROOT = Path(env_str("DJANGO_STATIC_ROOT", str(BASE_DIR / "staticfiles")))
# Serve app static files (admin, DRF, Swagger UI) from the finders too, so neither
# `make run` nor the tests need `collectstatic`. Production runs collectstatic anyway.
WHITENOISE_USE_FINDERS = True

STORAGES = {
    # The local folder's location defaults to MEDIA_ROOT (read lazily, so tests can point it at a temp dir).
    "default": _default_storage,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# --- DICOM service -------------------------------------------------------------------
DICOM_MAX_UPLOAD_BYTES = env_int("DICOM_MAX_UPLOAD_BYTES", 2 * 1024**3, minimum=1)
# Per-user storage quotas: the defaults for users whose limits are not set in the admin (0: no limit).
# Share links (studies/shares.py): how long a new link lives unless its maker says, and the most it may.
DICOM_SHARE_DEFAULT_HOURS = env_int("DICOM_SHARE_DEFAULT_HOURS", 7 * 24)
DICOM_SHARE_MAX_HOURS = env_int("DICOM_SHARE_MAX_HOURS", 30 * 24)
DICOM_QUOTA_BYTES = env_int("DICOM_QUOTA_BYTES", 0)
DICOM_QUOTA_INSTANCES = env_int("DICOM_QUOTA_INSTANCES", 0)
# Outbound C-STORE ("send this study to AE X", studies/outbound.py): this node's calling AE title, the attempts per
# instance (a refused association, no answer or 0xA7xx "out of resources" are tried again) and the wait between them.
DICOM_AE_TITLE = env_str("DICOM_AE_TITLE", "DICOMSITE")
DICOM_SEND_ATTEMPTS = env_int("DICOM_SEND_ATTEMPTS", 3, minimum=1)
DICOM_SEND_RETRY_SECONDS = env_int("DICOM_SEND_RETRY_SECONDS", 10)
# Sends as jobs of the RQ queue `dicom` (needs REDIS_URL and a `manage.py rqworker dicom`), so that they survive the
# web worker that queued them; off: a thread of that worker runs each send (a clean exit waits for it).
DICOM_SEND_QUEUE = env_bool("DICOM_SEND_QUEUE", False)
DICOM_MAX_FRAME_PIXELS = env_int("DICOM_MAX_FRAME_PIXELS", 256 * 1024**2, minimum=1)
DICOM_THUMBNAIL_SIZE = env_int("DICOM_THUMBNAIL_SIZE", 256, minimum=16)
# Bulk work: zip archives are checked against these before anything is decompressed.
DICOM_ZIP_MAX_MEMBERS = env_int("DICOM_ZIP_MAX_MEMBERS", 10_000, minimum=1)
DICOM_ZIP_MAX_TOTAL_BYTES = env_int("DICOM_ZIP_MAX_TOTAL_BYTES", 8 * 1024**3, minimum=1)
DICOM_ZIP_MAX_RATIO = env_int("DICOM_ZIP_MAX_RATIO", 200, minimum=1)
DICOM_BULK_MAX_FILES = env_int("DICOM_BULK_MAX_FILES", 1000, minimum=1)
DICOM_BULK_MAX_BYTES = env_int("DICOM_BULK_MAX_BYTES", 4 * 1024**3, minimum=1)
DICOM_LOOKUP_MAX_INSTANCES = env_int("DICOM_LOOKUP_MAX_INSTANCES", 10_000, minimum=1)
DICOM_LOOKUP_MAX_TAGS = env_int("DICOM_LOOKUP_MAX_TAGS", 100, minimum=1)
# Django refuses multipart requests with more file parts than this before any view runs.
DATA_UPLOAD_MAX_NUMBER_FILES = DICOM_BULK_MAX_FILES
# DICOMweb: QIDO-RS page size when the client gives no limit, and the largest instance that WADO-RS
# converts to Explicit VR Little Endian (decompressed) when the client does not accept the stored encoding.
# The public root of DICOMweb as clients reach it (e.g. https://pacs.example.org/dicomweb), used in
# RetrieveURLs and BulkDataURIs; empty: built from each request's Host.
DICOMWEB_BASE_URL = env_str("DICOMWEB_BASE_URL").rstrip("/")
# The bundled viewer (OHIF, fetched by `make viewer` into this folder; studies/http/viewer.py serves it).
DICOM_VIEWER_VERSION = "3.13.2"  # the version deploy/fetch_ohif.py fetches (a test keeps the two equal)
DICOM_VIEWER_PREFIX = "/viewer/"
DICOM_VIEWER_ROOT = Path(env_str("DICOM_VIEWER_ROOT", str(BASE_DIR / "viewer" / "ohif" / "current")))
DICOMWEB_DEFAULT_LIMIT = env_int("DICOMWEB_DEFAULT_LIMIT", 100, minimum=1)
DICOMWEB_MAX_CONVERT_BYTES = env_int("DICOMWEB_MAX_CONVERT_BYTES", 256 * 1024**2, minimum=1)
# Browser viewers (OHIF) on other origins: CORS headers on /dicomweb/ only, for these origins ("*": any).
DICOMWEB_CORS_ORIGINS = env_list("DICOMWEB_CORS_ORIGINS", [])
CORS_URLS_REGEX = r"^/dicomweb/.*$"
CORS_ALLOW_ALL_ORIGINS = DICOMWEB_CORS_ORIGINS == ["*"]
CORS_ALLOWED_ORIGINS = [] if CORS_ALLOW_ALL_ORIGINS else DICOMWEB_CORS_ORIGINS
CORS_EXPOSE_HEADERS = ["Content-Location", "Content-Length", "ETag", "Warning", "X-Request-ID"]
CORS_PREFLIGHT_MAX_AGE = 3600
DICOM_MAX_INFLATED_BYTES = env_int("DICOM_MAX_INFLATED_BYTES", 512 * 1024**2, minimum=1)

# --- API -----------------------------------------------------------------------------
REST_FRAMEWORK = {
    # Token first: unauthenticated API calls get 401 with `WWW-Authenticate: Token`.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "studies.api.authentication.CachedTokenAuthentication",
        "rest_framework.authentication.BasicAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "studies.api.pagination.Pagination",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "studies.http.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # Per-user rates for the expensive actions (InstanceViewSet.get_throttles picks the scope); 429 above.
    "DEFAULT_THROTTLE_RATES": {
        "upload": env_str("DICOM_THROTTLE_UPLOAD", "1200/min"),
        "render": env_str("DICOM_THROTTLE_RENDER", "6000/min"),
    },
}

SPECTACULAR_SETTINGS = {
    "TITLE": "DICOM catalogue API",
    "DESCRIPTION": (
        "Upload DICOM files into a per-user Study / Series / Instance catalogue, read any header "
        "attribute by tag, and render images. Errors are always JSON, in one shape: "
        # A code span: Swagger UI and ReDoc render this description as Markdown, where a bare <sentence> is
        # taken for an HTML tag and vanishes.
        '`{"error": "<a sentence>", "code": "<a machine code>"}`, e.g. '
        '`{"error": "the file is empty", "code": "invalid_dicom"}`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- cache ---------------------------------------------------------------------------
# Rendered images are cached by content hash; Redis (REDIS_URL) shares them between workers.
REDIS_URL = env_str("REDIS_URL")
CACHES: dict[str, dict[str, Any]]
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "dicomsite",
            "OPTIONS": {"MAX_ENTRIES": env_int("DICOM_RENDER_CACHE_ENTRIES", 2000, minimum=1)},
        }
    }
# How long a token's user is remembered (studies/api/authentication.py); 0 looks it up on every request.
DICOM_AUTH_CACHE_SECONDS = env_int("DICOM_AUTH_CACHE_SECONDS", 30, minimum=0)
DICOM_RENDER_CACHE_SECONDS = env_int("DICOM_RENDER_CACHE_SECONDS", 7 * 24 * 3600, minimum=1)

# --- background work (RQ on Redis) ---------------------------------------------------------------------
# After an upload commits, a job pre-renders its thumbnail and default image into the cache above
# (studies/prerender.py), run by `manage.py rqworker prerender --with-scheduler`. Only with REDIS_URL: the
# queue and the shared cache both live there. The queue may use another Redis database (RQ_REDIS_URL):
# clearing the cache (FLUSHDB) then leaves queued jobs alone.
DICOM_PRERENDER = bool(REDIS_URL) and env_bool("DICOM_PRERENDER", True)
RQ_REDIS_URL = env_str("RQ_REDIS_URL", REDIS_URL)
# Seconds before each retry of a failed job (as many retries as values); the scheduler (--with-scheduler) runs them.
_intervals = env_list("DICOM_PRERENDER_RETRY_INTERVALS", ["10", "60", "300"])
if not all(v.isascii() and v.isdigit() for v in _intervals):
    raise ImproperlyConfigured(f"DICOM_PRERENDER_RETRY_INTERVALS={_intervals!r} must be whole seconds, 0 or more")
DICOM_PRERENDER_RETRY_INTERVALS = [int(v) for v in _intervals]
RQ_QUEUES = {
    "prerender": {"URL": RQ_REDIS_URL or "redis://127.0.0.1:6379/0", "DEFAULT_TIMEOUT": env_int("DICOM_PRERENDER_TIMEOUT", 300, minimum=1)},
    # Sends of studies to DICOM peers, with DICOM_SEND_QUEUE=1 (`manage.py rqworker dicom`); else a thread each.
    "dicom": {"URL": RQ_REDIS_URL or "redis://127.0.0.1:6379/0", "DEFAULT_TIMEOUT": 3600},
}
RQ_SHOW_ADMIN_LINK = False

# --- logging -------------------------------------------------------------------------
# Logs never carry patient data: services log ids and hashes only; pydicom (which quotes
# header values in its messages) is limited to errors.
LOG_FORMAT = env_str("LOG_FORMAT", "plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be plain or json, not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "dicomsite.logging.RequestIdFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "dicomsite.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"pydicom": {"level": "ERROR", "propagate": True}},
}
