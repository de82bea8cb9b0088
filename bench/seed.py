"""Fill a catalogue with synthetic rows for scale benchmarks (never production data):

    python -m bench seed --instances 100000 --users 20 --prefix scale      # DATABASE_URL etc. from the environment
    python -m bench seed --delete --prefix scale

Benchmark-only, so it lives here and not among the service's management commands. Rows share a handful of real
stored files (one copy of pydicom's CT_small.dcm per user, so images render), spread over many users, studies and
series, with varied modalities, patient IDs, names and study dates so filters and searches select realistic
fractions. Rows are written through the models with bulk_create in batches: 100,000 rows take seconds, not hours.
Users are named <prefix>-user-<n> (created when missing) and removed with --delete. Each row carries a synthetic
sha256 (the per-owner unique constraint needs distinct values), so check_storage reports these rows as mismatches.

Together with bench/app.py, the only module of bench that imports app code (models, the DICOM parser).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

MODALITIES = ["CT", "MR", "CR", "US", "DX", "MG", "PT", "NM"]
FAMILY = ["Smith", "Jones", "Garcia", "Muller", "Rossi", "Novak", "Silva", "Kim", "Nguyen", "Ivanova"]
GIVEN = ["Anna", "Ben", "Chloe", "David", "Eva", "Farid", "Grace", "Hugo", "Ines", "Jon"]
BATCH = 2000
PROTOCOL_NAME, DIAGNOSES = "00181030", "00081080"  # (0018,1030) ProtocolName, (0008,1080) AdmittingDiagnosesDescription


@dataclass
class Seeded:
    instances: int
    users: int
    seconds: float

    def summary(self) -> str:
        """The line the scale scenario reads back (rows/s as the seeding itself measured it)."""
        rate = self.instances / self.seconds if self.seconds else 0
        return f"{self.instances} instances for {self.users} users in {self.seconds:.1f} s ({rate:.0f} rows/s)"


def seed_file_key(prefix: str, user_pk: int) -> str:
    """Where a seeded user's one stored file goes (every row of that user points at it)."""
    return f"dicom/seed/{prefix}-{user_pk}.dcm"


def delete_seeded(prefix: str) -> int:
    """Remove the prefix's users, all their rows and their stored files; the number of instances removed."""
    from django.contrib.auth import get_user_model
    from django.core.files.storage import default_storage
    from django.db import transaction

    from studies.models import Instance

    doomed = get_user_model().objects.filter(username__startswith=f"{prefix}-user-")
    keys = set(Instance.objects.filter(owner__in=doomed).values_list("file", flat=True))
    # A user the random draw gave no rows still has its stored copy.
    keys |= {seed_file_key(prefix, pk) for pk in doomed.values_list("pk", flat=True) if default_storage.exists(seed_file_key(prefix, pk))}
    with transaction.atomic():
        count = Instance.objects.filter(owner__in=doomed).count()
        doomed.delete()
    for key in keys:
        default_storage.delete(key)
    return count


def seed_catalogue(instances: int, users: int, *, instances_per_series: int = 50, series_per_study: int = 4,
                   prefix: str = "scale", seed: int = 1, progress: Callable[[int], None] | None = None) -> Seeded:  # fmt: skip
    """Insert `instances` synthetic Instance rows (with their Study and Series rows) for `users` users.

    Needs Django set up (python -m bench seed does it). The same seed gives the same rows; a second call with the
    same prefix adds rows for the same users (the scale scenario grows a copy of the 1k catalogue this way).
    """
    from django.contrib.auth import get_user_model
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from django.db import transaction
    from django.db.models import JSONField, Value
    from pydicom.data import get_testdata_file

    from dicomcore.parsing import parse_dicom
    from studies.models import Instance, Series, Study

    if instances < 1 or users < 1:
        raise ValueError("instances and users must be at least 1")
    User = get_user_model()
    rng = random.Random(seed)
    started = time.monotonic()
    with open(get_testdata_file("CT_small.dcm"), "rb") as fh:
        source = fh.read()
    parsed = parse_dicom(io.BytesIO(source))
    owners = [User.objects.get_or_create(username=f"{prefix}-user-{n}")[0] for n in range(users)]
    stored = {owner.pk: default_storage.save(seed_file_key(prefix, owner.pk), ContentFile(source)) for owner in owners}

    made = 0
    serial = Instance.objects.count()
    per_study = instances_per_series * series_per_study
    while made < instances:
        with transaction.atomic():
            studies, series_rows, rows = [], [], []
            while made + len(rows) < instances and len(rows) < BATCH:
                owner = owners[rng.randrange(users)]
                serial += 1
                patient = f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}"
                patient_id = f"P{rng.randrange(10**7):07d}"
                day = dt.date(2015, 1, 1) + dt.timedelta(days=rng.randrange(3650))
                study = Study(
                    owner=owner,
                    study_instance_uid=f"2.25.{serial}.{rng.randrange(10**9)}",
                    patient_name=patient,
                    patient_id=patient_id,
                    study_date=day,
                    accession_number=f"A{serial:09d}",
                    study_description="Synthetic study",
                )
                studies.append(study)
                size = min(per_study, instances - made - len(rows), BATCH - len(rows))
                for s in range(0, size, instances_per_series):
                    modality = rng.choice(MODALITIES)
                    # Two header-only attributes for the search scenario: ProtocolName as selective as the series'
                    # modality (and description), AdmittingDiagnosesDescription unique per study (as its accession).
                    # An expression, not a plain dict: Django 5.2 then inserts with VALUES instead of UNNEST(arrays),
                    # whose client-side quoting of ~12 KB of JSON per row (psycopg, in Python) was most of the seeding time.
                    series_header = Value({**parsed.header, PROTOCOL_NAME: {"vr": "LO", "Value": [f"{modality} protocol"]},
                                           DIAGNOSES: {"vr": "LO", "Value": [f"D{serial:09d}"]}}, output_field=JSONField())  # fmt: skip
                    series = Series(
                        owner=owner,
                        study=study,
                        series_instance_uid=f"{study.study_instance_uid}.{s}",
                        modality=modality,
                        series_number=s // instances_per_series + 1,
                        series_description=f"{modality} series",
                    )
                    series_rows.append(series)
                    for i in range(min(instances_per_series, size - s)):
                        uid = f"{series.series_instance_uid}.{i}"
                        rows.append(
                            Instance(
                                owner=owner,
                                study=study,
                                series=series,
                                file=stored[owner.pk],
                                sha256=hashlib.sha256(uid.encode()).hexdigest(),  # unique per row, by design
                                size=len(source),
                                sop_instance_uid=uid,
                                sop_class_uid=parsed.sop_class_uid,
                                transfer_syntax_uid=parsed.transfer_syntax_uid,
                                modality=modality,
                                instance_number=i + 1,
                                rows=parsed.rows,
                                columns=parsed.columns,
                                number_of_frames=1,
                                samples_per_pixel=1,
                                photometric_interpretation="MONOCHROME2",
                                bits_allocated=16,
                                bits_stored=16,
                                pixel_representation=1,
                                has_pixel_data=True,
                                patient_name=patient,
                                patient_id=patient_id,
                                study_date=day,
                                accession_number=study.accession_number,
                                study_description=study.study_description,
                                series_description=series.series_description,
                                header=series_header,
                            )
                        )
            Study.objects.bulk_create(studies, batch_size=BATCH)
            Series.objects.bulk_create(series_rows, batch_size=BATCH)
            Instance.objects.bulk_create(rows, batch_size=500)
        made += len(rows)
        if progress is not None:
            progress(made)
    return Seeded(made, users, time.monotonic() - started)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--instances", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--instances-per-series", type=int, default=50)
    ap.add_argument("--series-per-study", type=int, default=4)
    ap.add_argument("--prefix", default="scale", help="user names are <prefix>-user-<n>")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--delete", action="store_true", help="remove the prefix's users and all their rows")
    ap.add_argument("-v", "--verbose", action="store_true", help="print progress per batch")


def main(args: argparse.Namespace) -> int:
    """`python -m bench seed`: Django set up from the environment (like manage.py), then seed or delete."""
    from .app import setup_django

    if args.instances < 1 or args.users < 1:
        raise SystemExit("--instances and --users must be at least 1")
    setup_django()
    if args.delete:
        print(f"removed {delete_seeded(args.prefix)} instances and their users")
        return 0
    done = seed_catalogue(
        args.instances, args.users, instances_per_series=args.instances_per_series, series_per_study=args.series_per_study,
        prefix=args.prefix, seed=args.seed, progress=(lambda made: print(f"{made} / {args.instances}", flush=True)) if args.verbose else None,
    )  # fmt: skip
    print(done.summary())
    return 0
