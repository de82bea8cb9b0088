"""Fill the catalogue with synthetic rows for scale tests (benchmarks only, never production data).

    python manage.py seed_catalogue --instances 100000 --users 20 --prefix scale

Rows share a handful of real stored files (one copy of pydicom's CT_small.dcm per user, so
images render), spread over many users, studies and series, with varied modalities, patient
IDs, names and study dates so filters and searches select realistic fractions. Inserts go in
batches with bulk_create: 100,000 rows take seconds, not hours. Users are named
<prefix>-user-<n> (created when missing) and can be removed with --delete.
Each row carries a synthetic sha256 (the per-owner unique constraint needs distinct values), so
check_storage reports these rows as mismatches: seeded data is for benchmarks only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import random
import time

from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import JSONField, Value
from pydicom.data import get_testdata_file

from dicomcore.parsing import parse_dicom

from ...models import Instance, Series, Study

MODALITIES = ["CT", "MR", "CR", "US", "DX", "MG", "PT", "NM"]
FAMILY = ["Smith", "Jones", "Garcia", "Muller", "Rossi", "Novak", "Silva", "Kim", "Nguyen", "Ivanova"]
GIVEN = ["Anna", "Ben", "Chloe", "David", "Eva", "Farid", "Grace", "Hugo", "Ines", "Jon"]
BATCH = 2000


class Command(BaseCommand):
    help = "Insert synthetic Study/Series/Instance rows (sharing a few stored files) for scale benchmarks."

    def add_arguments(self, parser):
        parser.add_argument("--instances", type=int, default=100_000)
        parser.add_argument("--users", type=int, default=20)
        parser.add_argument("--instances-per-series", type=int, default=50)
        parser.add_argument("--series-per-study", type=int, default=4)
        parser.add_argument("--prefix", default="scale", help="user names are <prefix>-user-<n>")
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--delete", action="store_true", help="remove the prefix's users and all their rows")

    def handle(self, *args, instances, users, instances_per_series, series_per_study, prefix, seed, delete, **options):
        User = get_user_model()
        if delete:
            doomed = User.objects.filter(username__startswith=f"{prefix}-user-")
            keys = set(Instance.objects.filter(owner__in=doomed).values_list("file", flat=True))
            with transaction.atomic():
                count = Instance.objects.filter(owner__in=doomed).count()
                doomed.delete()
            for key in keys:
                default_storage.delete(key)
            self.stdout.write(self.style.SUCCESS(f"removed {count} instances and their users"))
            return
        if instances < 1 or users < 1:
            raise CommandError("--instances and --users must be at least 1")
        rng = random.Random(seed)
        started = time.monotonic()
        source = open(get_testdata_file("CT_small.dcm"), "rb").read()  # noqa: SIM115 - small file
        parsed = parse_dicom(io.BytesIO(source))
        # An expression, not a plain dict: Django 5.2 then inserts with VALUES instead of UNNEST(arrays), whose
        # client-side quoting of ~12 KB of JSON per row (psycopg, in Python) was most of the seeding time.
        header = Value(parsed.header, output_field=JSONField())
        owners = [User.objects.get_or_create(username=f"{prefix}-user-{n}")[0] for n in range(users)]
        stored = {owner.pk: default_storage.save(f"dicom/seed/{prefix}-{owner.pk}.dcm", ContentFile(source)) for owner in owners}

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
                                    header=header,
                                )
                            )
                Study.objects.bulk_create(studies, batch_size=BATCH)
                Series.objects.bulk_create(series_rows, batch_size=BATCH)
                Instance.objects.bulk_create(rows, batch_size=500)
            made += len(rows)
            if options["verbosity"] >= 2:
                self.stdout.write(f"{made} / {instances}")
        elapsed = time.monotonic() - started
        self.stdout.write(
            self.style.SUCCESS(f"{made} instances for {users} users in {elapsed:.1f} s ({made / elapsed:.0f} rows/s)")
        )
