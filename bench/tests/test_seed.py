"""The benchmark-only seeding (bench/seed.py) writes real rows through the models, and removes them again."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from bench.seed import delete_seeded, seed_catalogue
from studies.models import Instance, Series, Study


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.mark.django_db
def test_seed_writes_the_asked_shape_through_the_models():
    done = seed_catalogue(45, 3, instances_per_series=5, series_per_study=2, prefix="t", seed=7)

    assert done.instances == 45 and "45 instances for 3 users" in done.summary()
    assert Instance.objects.count() == 45
    assert get_user_model().objects.filter(username__startswith="t-user-").count() == 3
    # 10 instances a study (5 per series x 2): 4 whole studies and one of 5
    assert Study.objects.count() == 5 and Series.objects.count() == 9
    first = Instance.objects.order_by("sop_instance_uid").first()
    assert first.series.study_id == first.study_id and first.owner_id == first.study.owner_id
    assert first.header  # the stored header JSON of the shared CT file
    assert len(set(Instance.objects.values_list("sha256", flat=True))) == 45  # the per-owner unique constraint


@pytest.mark.django_db
def test_seed_is_repeatable_and_grows_for_the_same_users():
    seed_catalogue(20, 2, instances_per_series=10, series_per_study=2, prefix="g", seed=1)
    names = sorted(Instance.objects.values_list("patient_name", flat=True))
    seed_catalogue(30, 2, instances_per_series=10, series_per_study=2, prefix="g", seed=2)

    assert Instance.objects.count() == 50
    assert get_user_model().objects.filter(username__startswith="g-user-").count() == 2
    Instance.objects.all().delete()
    Study.objects.all().delete()
    seed_catalogue(20, 2, instances_per_series=10, series_per_study=2, prefix="g", seed=1)
    assert sorted(Instance.objects.values_list("patient_name", flat=True)) == names


@pytest.mark.django_db
def test_delete_removes_the_prefixes_users_rows_and_files(media_root):
    seed_catalogue(10, 2, prefix="d")
    seed_catalogue(5, 1, prefix="keep")

    assert delete_seeded("d") == 10
    assert Instance.objects.count() == 5
    assert not get_user_model().objects.filter(username__startswith="d-user-").exists()
    assert [p.name for p in (media_root / "dicom" / "seed").iterdir()] == [f"keep-{Instance.objects.first().owner_id}.dcm"]


def test_seed_refuses_nothing_to_do():
    with pytest.raises(ValueError):
        seed_catalogue(0, 1)
