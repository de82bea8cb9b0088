"""The catalogue: Study ▸ Series ▸ Instance, every row owned by the user who uploaded it."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


def instance_file_key(instance: Instance, filename: str = "") -> str:
    """Storage key made by the server from the row's UUID; the client filename never reaches storage."""
    hex_id = instance.id.hex
    return f"dicom/{hex_id[:2]}/{hex_id[2:4]}/{hex_id}.dcm"


class HeaderField(models.JSONField):
    """A JSONField whose bulk inserts bind one parameter per row (INSERT ... VALUES) on PostgreSQL.

    Django's PostgreSQL bulk_create otherwise sends each column as one array through UNNEST, and
    psycopg quotes a jsonb[] array literal in Python: for 50 CT headers of ~12 KB that took 86 ms
    against 9 ms as separate parameters, about 1.5 ms of import_dicom's CPU per file (python -m bench run import
    --profile). Defining get_placeholder is what makes Django keep the VALUES form for the table.
    """

    def get_placeholder(self, value, compiler, connection) -> str:
        return "%s"


class Study(models.Model):
    """A DICOM study as one owner holds it; unique per (owner, Study Instance UID)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="studies")
    study_instance_uid = models.CharField("Study Instance UID", max_length=64)
    patient_name = models.CharField(max_length=255, blank=True)
    patient_id = models.CharField("Patient ID", max_length=64, blank=True)
    patient_birth_date = models.DateField(null=True, blank=True)
    patient_sex = models.CharField(max_length=16, blank=True)
    study_date = models.DateField(null=True, blank=True)
    study_time = models.CharField(max_length=32, blank=True)
    study_id = models.CharField("Study ID", max_length=64, blank=True)
    accession_number = models.CharField(max_length=64, blank=True)
    study_description = models.CharField(max_length=255, blank=True)
    referring_physician_name = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "studies"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "study_instance_uid"], name="study_unique_per_owner"),
        ]

    def __str__(self) -> str:
        return self.study_description or self.study_instance_uid


class Series(models.Model):
    """A DICOM series within one owner's study; unique per (owner, Series Instance UID)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="series")
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="series")
    series_instance_uid = models.CharField("Series Instance UID", max_length=64)
    modality = models.CharField(max_length=16, blank=True)
    series_number = models.IntegerField(null=True, blank=True)
    series_description = models.CharField(max_length=255, blank=True)
    body_part_examined = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "series"
        ordering = ["series_number", "created_at"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "series_instance_uid"], name="series_unique_per_owner"),
        ]

    def __str__(self) -> str:
        return self.series_description or self.series_instance_uid


class Instance(models.Model):
    """One stored DICOM file (a SOP instance) with its catalogue facts and whole header as DICOM JSON.

    `sha256` is the digest of the stored bytes (the preamble zeroed). Uniqueness per owner on
    both the bytes and the SOP Instance UID is enforced by the database, so concurrent
    re-uploads resolve to one row.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="dicom_instances")
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="instances")
    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="instances")
    file = models.FileField(upload_to=instance_file_key, max_length=255)
    original_filename = models.CharField(max_length=255, blank=True)
    sha256 = models.CharField("SHA-256", max_length=64)
    size = models.BigIntegerField()
    sop_instance_uid = models.CharField("SOP Instance UID", max_length=64)
    sop_class_uid = models.CharField("SOP Class UID", max_length=64, blank=True)
    transfer_syntax_uid = models.CharField("Transfer Syntax UID", max_length=64)
    modality = models.CharField(max_length=16, blank=True)
    instance_number = models.IntegerField(null=True, blank=True)
    rows = models.PositiveIntegerField(null=True, blank=True)
    columns = models.PositiveIntegerField(null=True, blank=True)
    number_of_frames = models.PositiveIntegerField(default=0)
    samples_per_pixel = models.PositiveSmallIntegerField(null=True, blank=True)
    photometric_interpretation = models.CharField(max_length=32, blank=True)
    bits_allocated = models.PositiveSmallIntegerField(null=True, blank=True)
    bits_stored = models.PositiveSmallIntegerField(null=True, blank=True)
    pixel_representation = models.PositiveSmallIntegerField(null=True, blank=True)
    has_pixel_data = models.BooleanField(default=False)
    # Where the pixel data value starts in the stored file (set at ingest; NULL when deflated, or stored before this
    # column existed): frames are read from there without parsing the header (dicomcore.frames.read_frames_at).
    pixel_offset = models.BigIntegerField(null=True, blank=True, editable=False)
    # Denormalised from the header so lists and searches need no joins.
    patient_name = models.CharField(max_length=255, blank=True)
    patient_id = models.CharField("Patient ID", max_length=64, blank=True)
    study_date = models.DateField(null=True, blank=True)
    accession_number = models.CharField(max_length=64, blank=True)
    study_description = models.CharField(max_length=255, blank=True)
    series_description = models.CharField(max_length=255, blank=True)
    header = HeaderField("DICOM header (DICOM JSON)", default=dict)
    uploaded_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-uploaded_at", "id"]
        # Every list is scoped to one owner: each index leads with it (measured: python -m bench run scale).
        indexes = [
            models.Index(fields=["owner", "-uploaded_at", "id"], name="instance_owner_recent"),
            models.Index(fields=["owner", "modality", "-uploaded_at"], name="instance_owner_modality"),
            models.Index(fields=["owner", "patient_id"], name="instance_owner_patient"),
            models.Index(fields=["owner", "study_date"], name="instance_owner_study_date"),
            # A study's or series' first instance (QIDO-RS returns elements of the level from its header), and a
            # series' instances in order.
            models.Index(fields=["study", "instance_number", "uploaded_at"], name="instance_study_first"),
            models.Index(fields=["series", "instance_number", "uploaded_at"], name="instance_series_first"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["owner", "sha256"], name="instance_unique_bytes_per_owner"),
            models.UniqueConstraint(fields=["owner", "sop_instance_uid"], name="instance_unique_sop_per_owner"),
        ]
        permissions = [("view_all", "Can view every user's DICOM uploads")]

    def __str__(self) -> str:
        return self.sop_instance_uid


def validate_ae_title(value: str) -> None:
    """PS3.5 AE: 1-16 characters of the default repertoire, no backslash or control characters, not all spaces."""
    from django.core.exceptions import ValidationError

    if not value.strip() or len(value) > 16 or any(not (" " <= ch <= "~") or ch == "\\" for ch in value):
        raise ValidationError("an AE title is 1 to 16 printable ASCII characters, without a backslash, not all spaces")


class DicomPeer(models.Model):
    """A remote DICOM node this service knows (PACS, workstation, router, modality): where it listens, whose
    catalogue it acts on, and which services it may ask of `manage.py dicomserver`."""

    ae_title = models.CharField("AE title", max_length=16, unique=True, validators=[validate_ae_title])
    host = models.CharField(max_length=255, help_text="host name or address it listens on (the C-MOVE destination)")
    port = models.PositiveIntegerField(help_text="its DICOM port (1-65535)", validators=[MinValueValidator(1), MaxValueValidator(65535)])
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="dicom_peers",
        help_text="the user whose catalogue this peer stores into, searches and retrieves from",
    )  # fmt: skip
    may_store = models.BooleanField("may store (C-STORE)", default=False)
    may_find = models.BooleanField("may search (C-FIND)", default=False)
    may_move = models.BooleanField("may move (C-MOVE)", default=False)
    may_get = models.BooleanField("may get (C-GET)", default=False)
    description = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    SERVICES = ("store", "find", "move", "get")

    class Meta:
        ordering = ["ae_title"]
        verbose_name = "DICOM peer"
        constraints = [models.CheckConstraint(condition=models.Q(port__gte=1, port__lte=65535), name="dicompeer_port_range")]

    def __str__(self) -> str:
        return self.ae_title

    def may(self, service: str) -> bool:
        return bool(getattr(self, f"may_{service}"))

    @property
    def allowed(self) -> list[str]:
        return [service for service in self.SERVICES if self.may(service)]


class DicomSend(models.Model):
    """One "send this study to AE X" (outbound C-STORE, studies/outbound.py): what was asked, how far it got, and a
    result per instance (`results`: [{"instance", "sop_instance_uid", "status", "attempts", "error"}])."""

    QUEUED, RUNNING, DONE, PARTIAL, FAILED = "queued", "running", "done", "partial", "failed"
    STATES = [(QUEUED, "queued"), (RUNNING, "running"), (DONE, "done"), (PARTIAL, "partly sent"), (FAILED, "failed")]

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="dicom_sends")
    study = models.ForeignKey(Study, on_delete=models.SET_NULL, null=True, related_name="sends")
    peer = models.ForeignKey(DicomPeer, on_delete=models.SET_NULL, null=True, related_name="sends")
    ae_title = models.CharField("AE title", max_length=16)  # kept when the peer is removed
    status = models.CharField(max_length=16, choices=STATES, default=QUEUED)
    instance_count = models.PositiveIntegerField(default=0)
    sent_count = models.PositiveIntegerField(default=0)
    failed_count = models.PositiveIntegerField(default=0)
    results = models.JSONField(default=list)
    error = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "DICOM send"

    def __str__(self) -> str:
        return f"{self.ae_title}: {self.status}"


class Label(models.Model):
    """A free-text label one user put on a study or a series (studies/labels.py); each user sees their own."""

    id = models.BigAutoField(primary_key=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="labels")
    study = models.ForeignKey(Study, on_delete=models.CASCADE, null=True, blank=True, related_name="labels")
    series = models.ForeignKey(Series, on_delete=models.CASCADE, null=True, blank=True, related_name="labels")
    name = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(study__isnull=False, series__isnull=True) | models.Q(study__isnull=True, series__isnull=False),
                name="label_on_study_or_series",
            ),
            models.UniqueConstraint(fields=["owner", "study", "name"], condition=models.Q(study__isnull=False), name="label_once_per_study"),
            models.UniqueConstraint(fields=["owner", "series", "name"], condition=models.Q(series__isnull=False), name="label_once_per_series"),
        ]
        indexes = [models.Index(fields=["owner", "name"], name="label_owner_name")]

    def __str__(self) -> str:
        return self.name


class Quota(models.Model):
    """One user's storage limits and what they use (studies/quotas.py keeps `used_*` in step with the catalogue, in
    the transactions that add or delete instances). A limit left empty takes the default from settings
    (DICOM_QUOTA_BYTES, DICOM_QUOTA_INSTANCES; 0 there: no limit)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="quota")
    max_bytes = models.BigIntegerField("byte limit", null=True, blank=True, help_text="empty: the default from settings; 0: no limit")
    max_instances = models.BigIntegerField("instance limit", null=True, blank=True, help_text="empty: the default from settings; 0: no limit")
    used_bytes = models.BigIntegerField(default=0, editable=False)
    used_instances = models.BigIntegerField(default=0, editable=False)

    def __str__(self) -> str:
        return f"quota of user {self.user_id}"


class Deidentification(models.Model):
    """One de-identified copy (studies/deidentify.py): what it was made from, what it made, with which options.

    `uid_map` ({original UID: new UID}) is kept only when the caller asked for it, and shown only to its owner.
    Sources and results may be deleted later: the ids stay as text so that the record still says what happened."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="deidentifications")
    source_level = models.CharField(max_length=16, default="study")  # study, series, or files (manage.py deidentify)
    source_id = models.CharField(max_length=64, blank=True)
    result_study = models.ForeignKey(Study, on_delete=models.SET_NULL, null=True, blank=True, related_name="deidentified_from")
    delivered_as = models.CharField(max_length=16, default="catalogue")  # catalogue, zip or folder
    options = models.JSONField(default=dict)
    instance_count = models.PositiveIntegerField(default=0)
    uid_map = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"de-identified {self.source_level} {self.source_id}"


class ShareLink(models.Model):
    """A link to one study for someone without an account (studies/shares.py): viewer and zip, until it expires or
    is revoked. Only a digest of its secret is kept; the link itself is shown once, when it is made."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="share_links")
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="share_links")
    token_digest = models.CharField(max_length=64, unique=True, editable=False)  # SHA-256 of the link's secret, hex
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    # De-identified on the fly (PS3.15 Basic Profile and these options): the zip only, never the originals.
    deidentify = models.BooleanField(default=False)
    deid_options = models.JSONField(default=list, blank=True)
    deid_secret = models.CharField(max_length=64, blank=True, editable=False)  # the same new UIDs at every download
    uses = models.PositiveIntegerField(default=0, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"share link {self.pk}"


# The audit trail's model lives with the rest of the audit unit; importing it here registers it in this app.
from .audit.models import AuditEvent  # noqa: E402, F401
