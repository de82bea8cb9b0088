"""DICOM_STORAGE_URL → the STORAGES["default"] entry (pure: no Django apps, no boto3 at import).

    unset / ""                    the local folder MEDIA_ROOT (DICOM_MEDIA_ROOT, default media/)
    file:///srv/dicom             the local folder /srv/dicom
    s3://BUCKET[/PREFIX]?endpoint_url=http://host:9000&region=eu-west-1[&addressing_style=path|virtual]

S3 credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, an
instance role), never from the URL. Objects stay private: no ACL is sent (the bucket's default, private),
and URLs, if anything asked for one, would be signed and short-lived; the service itself never hands out a
storage URL (downloads go through views that check ownership).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

FILESYSTEM_BACKEND = "django.core.files.storage.FileSystemStorage"
S3_BACKEND = "studies.storage.PrivateS3Storage"
S3_QUERY_KEYS = {"endpoint_url", "region", "addressing_style"}
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _refuse(url: str, why: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(
        f"DICOM_STORAGE_URL={url!r}: {why} (use file:///absolute/folder or "
        "s3://bucket[/prefix]?endpoint_url=http://host:port&region=name)"
    )


def storage_from_url(url: str) -> tuple[dict[str, Any], Path | None]:
    """(the STORAGES["default"] entry, the local folder for MEDIA_ROOT or None) for a DICOM_STORAGE_URL value."""
    url = url.strip()
    if not url:
        return {"BACKEND": FILESYSTEM_BACKEND}, None
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise _refuse(url, "a file URL names a local folder only (file:///path, no host or query)")
        path = unquote(parts.path)
        if not path.startswith("/") or path == "/":
            raise _refuse(url, "the folder must be an absolute path other than /")
        return {"BACKEND": FILESYSTEM_BACKEND}, Path(path)
    if scheme != "s3":
        raise _refuse(url, f"unknown scheme {parts.scheme!r}")
    return {"BACKEND": S3_BACKEND, "OPTIONS": _s3_options(url, parts)}, None


def _s3_options(url: str, parts) -> dict[str, Any]:
    bucket = parts.hostname or ""
    if parts.username or parts.password:
        raise _refuse(url, "credentials do not belong in the URL; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if parts.port is not None or not BUCKET_NAME.match(bucket) or ".." in bucket:
        raise _refuse(url, f"{parts.netloc!r} is not a bucket name (3-63 of a-z 0-9 . -)")
    if parts.fragment:
        raise _refuse(url, "no #fragment")
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise _refuse(url, "the query is not key=value&key=value") from None
    unknown = sorted(set(query) - S3_QUERY_KEYS)
    if unknown:
        raise _refuse(url, f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(S3_QUERY_KEYS))}")
    repeated = sorted(key for key, values in query.items() if len(values) > 1)
    if repeated:
        raise _refuse(url, f"option(s) given twice: {', '.join(repeated)}")
    values = {key: found[0].strip() for key, found in query.items()}
    prefix = unquote(parts.path).strip("/")
    if any(step in ("", ".", "..") for step in prefix.split("/")) and prefix:
        raise _refuse(url, f"the prefix {prefix!r} has empty, . or .. steps")
    options: dict[str, Any] = {
        "bucket_name": bucket,
        "location": prefix,
        # Private objects: no ACL sent (the bucket's default), signed URLs only, never overwrite a key.
        "default_acl": None,
        "querystring_auth": True,
        "querystring_expire": 300,
        "file_overwrite": False,
        "signature_version": "s3v4",
    }
    endpoint = values.get("endpoint_url", "")
    if "endpoint_url" in values:
        endpoint_parts = urlsplit(endpoint)
        if endpoint_parts.scheme not in ("http", "https") or not endpoint_parts.hostname:
            raise _refuse(url, f"endpoint_url={endpoint!r} is not an http:// or https:// URL")
        try:
            endpoint_parts.port
        except ValueError:
            raise _refuse(url, f"endpoint_url={endpoint!r} has a bad port") from None
        options["endpoint_url"] = endpoint.rstrip("/")
        # Self-hosted servers (SeaweedFS, MinIO, Ceph) are addressed by path unless told otherwise.
        options["addressing_style"] = "path"
    if "region" in values:
        if not re.fullmatch(r"[a-z0-9-]{1,40}", values["region"]):
            raise _refuse(url, f"region={values['region']!r} is not a region name")
        options["region_name"] = values["region"]
    if "addressing_style" in values:
        if values["addressing_style"] not in ("path", "virtual", "auto"):
            raise _refuse(url, "addressing_style must be path, virtual or auto")
        options["addressing_style"] = values["addressing_style"]
    return options
