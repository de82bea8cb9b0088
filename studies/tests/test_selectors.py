"""studies/selectors.py directly: who sees which rows, 404 semantics, header element reads, query counts.

Rows are made with the ORM (no files, no ingest), so these tests pin the selectors alone. Users: `owner`
and `other` (plain users), `staff` (is_staff only: still just their own rows), `viewer` (studies.view_all:
every owner's rows, read-only) and `superuser`. Query counts use fresh user objects, as a request has:
Django caches a user's permissions on the object after the first has_perm.
"""

from __future__ import annotations

import datetime
import hashlib
import uuid
from itertools import count

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.http import Http404

from studies import selectors
from studies.models import Instance, Series, Study

pytestmark = pytest.mark.django_db

_numbers = count(1)

PATIENT_NAME = "00100010"
MODALITY = "00080060"
PIXEL_DATA = "7FE00010"  # hex letters in the key
IMAGE_TYPE = "00080008"
ABSENT = "00181030"  # Protocol Name: in no header here


def header(modality: str, name: str) -> dict:
    return {
        IMAGE_TYPE: {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY"]},
        MODALITY: {"vr": "CS", "Value": [modality]},
        PATIENT_NAME: {"vr": "PN", "Value": [{"Alphabetic": name}]},
        PIXEL_DATA: {"vr": "OW", "BulkData": {"length": 32768}},
    }


def make_instance(
    owner,
    *,
    study_uid: str,
    series_uid: str,
    number: int | None = None,
    modality: str = "CT",
    series_number: int | None = 1,
    patient_name: str = "Doe^Jane",
    sop_uid: str | None = None,
    **fields,
) -> Instance:
    """One catalogue row (and its study and series, made once per owner and UID)."""
    study, _ = Study.objects.get_or_create(owner=owner, study_instance_uid=study_uid, defaults={"patient_name": patient_name})
    series, _ = Series.objects.get_or_create(
        owner=owner, series_instance_uid=series_uid, defaults={"study": study, "modality": modality, "series_number": series_number}
    )
    n = next(_numbers)
    return Instance.objects.create(
        owner=owner,
        study=study,
        series=series,
        file=f"dicom/00/00/{uuid.uuid4().hex}.dcm",
        sha256=hashlib.sha256(str(n).encode()).hexdigest(),
        size=1000 + n,
        sop_instance_uid=sop_uid or f"1.2.826.0.1.{n}",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality=modality,
        instance_number=number,
        has_pixel_data=True,
        patient_name=patient_name,
        header=header(modality, patient_name),
        **fields,
    )


@pytest.fixture
def catalogue(owner, other) -> dict:
    """owner: study A (series A1: CT 2, CT 1; series A2: MR 1) and study B (CT); other: study C (CT)."""
    a1 = [
        make_instance(owner, study_uid="1.1", series_uid="1.1.1", number=2, patient_id="PID-A", accession_number="ACC-7",
                      study_date=datetime.date(2024, 1, 5), study_description="Head CT", series_description="axial"),
        make_instance(owner, study_uid="1.1", series_uid="1.1.1", number=1, patient_id="PID-A", study_date=datetime.date(2024, 1, 5)),
    ]  # fmt: skip
    mr = make_instance(owner, study_uid="1.1", series_uid="1.1.2", number=1, modality="MR", series_number=2, patient_id="PID-A")
    b = make_instance(owner, study_uid="1.2", series_uid="1.2.1", number=1, patient_name="Roe^Richard", patient_id="PID-B",
                      study_date=datetime.date(2023, 6, 1))  # fmt: skip
    theirs = make_instance(other, study_uid="1.3", series_uid="1.3.1", number=1, patient_name="Other^Person", patient_id="PID-C")
    return {"a1": a1, "mr": mr, "b": b, "theirs": theirs, "owners": [*a1, mr, b]}


def fresh(user):
    """The user as a new request loads it: no permission cache yet."""
    return get_user_model().objects.get(pk=user.pk)


def ids(rows) -> set:
    return {row.pk for row in rows}


# --- who sees what ----------------------------------------------------------------------------------------------


def test_can_view_all_is_for_superusers_and_holders_of_view_all_only(owner, staff, viewer, superuser):
    assert [selectors.can_view_all(u) for u in (owner, staff, viewer, superuser)] == [False, False, True, True]
    assert selectors.can_view_all(AnonymousUser()) is False
    assert selectors.can_view_all(None) is False


def test_can_modify_is_for_the_owner_and_superusers_never_for_view_all_or_staff(catalogue, owner, other, staff, viewer, superuser):
    mine = catalogue["b"]
    assert [selectors.can_modify(u, mine) for u in (owner, other, staff, viewer, superuser)] == [True, False, False, False, True]
    assert selectors.can_modify(AnonymousUser(), mine) is False
    assert selectors.can_modify(None, mine) is False


@pytest.mark.parametrize(
    ("who", "sees"),
    [("owner", "owners"), ("other", "theirs"), ("staff", "nothing"), ("viewer", "everything"), ("superuser", "everything")],
)
def test_instances_for_scopes_each_role(request, catalogue, who, sees):
    user = request.getfixturevalue(who)
    expected = {
        "owners": ids(catalogue["owners"]),
        "theirs": {catalogue["theirs"].pk},
        "nothing": set(),
        "everything": ids([*catalogue["owners"], catalogue["theirs"]]),
    }[sees]
    assert ids(selectors.instances_for(user)) == expected
    assert ids(selectors.instance_list(user=user)) == expected


def test_anonymous_users_see_no_rows_and_no_query_is_made(catalogue, django_assert_num_queries):
    with django_assert_num_queries(0):
        for user in (AnonymousUser(), None):
            assert list(selectors.instances_for(user)) == []
            assert list(selectors.studies_for(user)) == []
            assert list(selectors.series_for(user)) == []


@pytest.mark.parametrize(
    ("who", "studies", "series"), [("owner", 2, 3), ("other", 1, 1), ("staff", 0, 0), ("viewer", 3, 4), ("superuser", 3, 4)]
)
def test_studies_and_series_are_scoped_like_instances(request, catalogue, who, studies, series):
    user = request.getfixturevalue(who)
    assert selectors.studies_for(user).count() == studies
    assert selectors.series_for(user).count() == series


def test_scoped_narrows_any_queryset_to_the_users_rows(catalogue, owner, viewer):
    queryset = Study.objects.filter(study_instance_uid__in=["1.1", "1.3"])
    assert [s.study_instance_uid for s in selectors.scoped(queryset, owner)] == ["1.1"]
    assert sorted(s.study_instance_uid for s in selectors.scoped(queryset, viewer)) == ["1.1", "1.3"]


# --- visible_instance: one row or Http404 --------------------------------------------------------------------------


@pytest.mark.parametrize(("who", "visible"), [("owner", True), ("other", False), ("staff", False), ("viewer", True), ("superuser", True)])
def test_visible_instance_is_the_row_or_404_never_a_permission_error(request, catalogue, who, visible):
    user = request.getfixturevalue(who)
    pk = catalogue["b"].pk
    if visible:
        assert selectors.visible_instance(user, pk).pk == pk
    else:
        with pytest.raises(Http404):  # the same answer as for a row that does not exist: existence is not revealed
            selectors.visible_instance(user, pk)


@pytest.mark.parametrize("user", [AnonymousUser(), None], ids=["anonymous", "none"])
def test_visible_instance_is_404_for_anonymous_without_a_query(catalogue, user, django_assert_num_queries):
    with django_assert_num_queries(0), pytest.raises(Http404):
        selectors.visible_instance(user, catalogue["b"].pk)


@pytest.mark.parametrize("who", ["owner", "viewer", "superuser"])
def test_a_row_that_does_not_exist_is_404_for_everyone(request, catalogue, who):
    with pytest.raises(Http404):
        selectors.visible_instance(request.getfixturevalue(who), uuid.uuid4())


def test_visible_instance_joins_what_the_serializers_need_and_leaves_the_header(catalogue, owner, django_assert_num_queries):
    instance = selectors.visible_instance(fresh(owner), catalogue["b"].pk)
    assert instance.get_deferred_fields() == {"header"}
    with django_assert_num_queries(0):
        joined = (instance.owner.username, instance.study.study_instance_uid, instance.series.series_instance_uid)
    assert joined == ("owner", "1.2", "1.2.1")


def test_visible_instance_with_fields_reads_only_those(catalogue, owner):
    instance = selectors.visible_instance(owner, catalogue["b"].pk, fields=selectors.DISPLAY_FIELDS)
    loaded = {f.attname for f in Instance._meta.concrete_fields} - instance.get_deferred_fields()
    assert loaded == {"id", "owner_id", "sha256", "file", "has_pixel_data", "sop_instance_uid"}


@pytest.mark.parametrize(
    ("who", "target", "queries"),
    [
        ("owner", "b", 1),  # the owner's row: one query by primary key, no permission lookup
        ("superuser", "b", 1),  # not theirs: is_superuser needs no lookup
        ("viewer", "b", 3),  # someone else's row: then user + group permissions
        ("other", "b", 3),  # the row and the permission lookups, then 404
    ],
)
def test_visible_instance_query_count(request, catalogue, who, target, queries, django_assert_num_queries):
    user, pk = fresh(request.getfixturevalue(who)), catalogue[target].pk
    with django_assert_num_queries(queries):
        if who == "other":
            with pytest.raises(Http404):
                selectors.visible_instance(user, pk)
        else:
            assert selectors.visible_instance(user, pk).pk == pk


@pytest.mark.parametrize("fields", [None, selectors.DISPLAY_FIELDS, selectors.HEADER_FIELDS], ids=["serializer", "display", "header"])
def test_the_one_query_row_is_the_row_the_orm_makes(catalogue, viewer, fields):
    """visible_instance's own SQL against the ORM's queryset for the same row: every loaded field, the same
    deferred ones, and (for the serializers) the same joined owner, study and series."""
    orm = Instance.objects.only(*fields) if fields else Instance.objects.select_related("owner", "study", "series").defer("header")
    for instance in Instance.objects.all():
        mine, theirs = selectors.visible_instance(viewer, instance.pk, fields=fields), orm.get(pk=instance.pk)
        assert mine.get_deferred_fields() == theirs.get_deferred_fields()
        loaded = [f.attname for f in Instance._meta.concrete_fields if f.attname not in mine.get_deferred_fields()]
        assert [getattr(mine, name) for name in loaded] == [getattr(theirs, name) for name in loaded]
        assert [type(getattr(mine, name)) for name in loaded] == [type(getattr(theirs, name)) for name in loaded]
        if fields is None:
            for relation, names in (("owner", ("id", "username")), ("study", ("id", "study_instance_uid")), ("series", ("id", "series_instance_uid"))):
                assert Instance._meta.get_field(relation).is_cached(mine)
                assert [getattr(getattr(mine, relation), n) for n in names] == [getattr(getattr(theirs, relation), n) for n in names]
        assert not mine._state.adding and mine._state.db == theirs._state.db


def test_instance_at_is_the_instance_qidos_queryset_gives_for_every_path_and_user(catalogue, owner, other, viewer):
    """The one-query WADO-RS lookup against qido.instances (the ORM, with one_per_uid for view_all), also when two
    owners hold copies of one instance (the viewer must get the first stored) and for paths that mix UIDs."""
    from studies.dicomweb import qido
    from studies.dicomweb.views import INSTANCE_COLUMNS, INSTANCE_JOINS

    first = catalogue["b"]
    make_instance(other, study_uid="1.2", series_uid="1.2.1", number=1, sop_uid=first.sop_instance_uid)  # other's copy
    rows = list(Instance.objects.select_related("study", "series"))
    paths = {(i.study.study_instance_uid, i.series.series_instance_uid, i.sop_instance_uid) for i in rows}
    paths |= {("1.1", "1.2.1", first.sop_instance_uid), ("1.2", "1.2.1", "9.9.9")}  # no such instance at these
    for user in (owner, other, viewer):
        for study_uid, series_uid, sop_uid in sorted(paths):
            expected = qido.instances(user, study_uid=study_uid, series_uid=series_uid, instance_uid=sop_uid).first()
            found = selectors.instance_at(user, study_uid, series_uid, sop_uid, fields=INSTANCE_COLUMNS, joins=INSTANCE_JOINS)
            assert (found and found.pk) == (expected and expected.pk), (user.username, sop_uid)
            if found is not None:
                assert found.study.study_instance_uid == study_uid and found.series.series_instance_uid == series_uid
                assert found.series.series_number == expected.series.series_number
                assert found.uploaded_at == expected.uploaded_at and found.file.name == expected.file.name


def test_a_malformed_primary_key_is_404(owner):
    with pytest.raises(Http404):
        selectors.visible_instance(owner, "not-a-uuid")


# --- header element reads ---------------------------------------------------------------------------------------------


def test_visible_header_reads_the_named_elements_in_one_query(catalogue, owner, django_assert_num_queries):
    keys, user = (PATIENT_NAME, PIXEL_DATA, IMAGE_TYPE), fresh(owner)
    with django_assert_num_queries(1):  # the owner's row first: no permission lookup
        elements = selectors.visible_header(user, catalogue["b"].pk, keys)
    assert elements == {
        PATIENT_NAME: {"vr": "PN", "Value": [{"Alphabetic": "Roe^Richard"}]},  # an all-digit key: an object key, not an index
        PIXEL_DATA: {"vr": "OW", "BulkData": {"length": 32768}},
        IMAGE_TYPE: {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY"]},
    }


def test_visible_header_leaves_out_elements_the_header_does_not_have(catalogue, owner):
    assert selectors.visible_header(owner, catalogue["b"].pk, (ABSENT, MODALITY)) == {MODALITY: {"vr": "CS", "Value": ["CT"]}}
    assert selectors.visible_header(owner, catalogue["b"].pk, ()) == {}


def test_visible_header_has_the_404_semantics_of_visible_instance(catalogue, other, viewer):
    pk = catalogue["b"].pk
    with pytest.raises(Http404):
        selectors.visible_header(other, pk, (PATIENT_NAME,))
    with pytest.raises(Http404):
        selectors.visible_header(AnonymousUser(), pk, (PATIENT_NAME,))
    assert selectors.visible_header(viewer, pk, (MODALITY,)) == {MODALITY: {"vr": "CS", "Value": ["CT"]}}


def test_visible_header_answers_what_the_querysets_partial_header_answers(catalogue, owner, viewer):
    """The lean one-query read and the ORM's queryset (its fallback on other databases) agree on every row."""
    keys = (PATIENT_NAME, PIXEL_DATA, IMAGE_TYPE, MODALITY, ABSENT)
    for instance in Instance.objects.all():
        expected = selectors.partial_header(selectors.with_header_elements(Instance.objects.filter(pk=instance.pk), keys).get(), keys)
        assert PATIENT_NAME in expected
        assert selectors.visible_header(viewer, instance.pk, keys) == expected
        if instance.owner_id == owner.pk:
            assert selectors.visible_header(owner, instance.pk, keys) == expected


def test_visible_header_of_no_such_instance_is_404(owner, viewer):
    for user in (owner, viewer):
        with pytest.raises(Http404):
            selectors.visible_header(user, uuid.uuid4(), (PATIENT_NAME,))


def test_with_header_elements_never_loads_the_whole_header(catalogue, owner, django_assert_num_queries):
    keys = (MODALITY, PATIENT_NAME)
    queryset = Instance.objects.filter(owner=owner).order_by("series__series_instance_uid", "instance_number")
    with django_assert_num_queries(1):
        rows = list(selectors.with_header_elements(queryset, keys))
    assert all("header" in row.get_deferred_fields() for row in rows)
    assert [selectors.partial_header(row, keys)[MODALITY]["Value"] for row in rows] == [["CT"], ["CT"], ["MR"], ["CT"]]


# --- instance_list filters --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"study": "1.1"}, ["a1_0", "a1_1", "mr"]),
        ({"series": "1.1.2"}, ["mr"]),
        ({"modality": " mr "}, ["mr"]),  # a Code String: upper case, stripped
        ({"patient_id": "PID-B"}, ["b"]),
        ({"patient_id": "PID"}, []),  # exact, not a substring
        ({"study_date_from": datetime.date(2024, 1, 1)}, ["a1_0", "a1_1"]),
        ({"study_date_to": datetime.date(2023, 12, 31)}, ["b"]),
        ({"study_date_from": datetime.date(2024, 1, 5), "study_date_to": datetime.date(2024, 1, 5)}, ["a1_0", "a1_1"]),
        ({"search": "roe^"}, ["b"]),  # patient name, case-insensitive
        ({"search": "acc-7"}, ["a1_0"]),  # accession number
        ({"search": "head"}, ["a1_0"]),  # study description
        ({"search": "AXIAL"}, ["a1_0"]),  # series description
        ({"search": "pid-a"}, ["a1_0", "a1_1", "mr"]),  # patient ID, as a substring here
        ({"search": "1.1"}, ["a1_0", "a1_1", "mr"]),  # an exact Study Instance UID
        ({"search": "1.1.2"}, ["mr"]),  # an exact Series Instance UID
        ({"search": "1.3"}, []),  # another owner's study UID finds nothing
        ({"search": "Other"}, []),  # nor their patient name
        ({"study": "1.1", "modality": "CT"}, ["a1_0", "a1_1"]),  # filters combine
    ],
)
def test_instance_list_filters(catalogue, owner, filters, expected):
    names = {"a1_0": catalogue["a1"][0], "a1_1": catalogue["a1"][1], "mr": catalogue["mr"], "b": catalogue["b"]}
    assert ids(selectors.instance_list(user=owner, **filters)) == {names[n].pk for n in expected}


def test_instance_list_finds_an_exact_sop_instance_uid(catalogue, owner, viewer):
    uid = catalogue["theirs"].sop_instance_uid
    assert list(selectors.instance_list(user=owner, search=uid)) == []
    assert ids(selectors.instance_list(user=viewer, search=uid)) == {catalogue["theirs"].pk}


def test_instance_list_is_one_query_and_never_reads_headers(catalogue, viewer, django_assert_num_queries):
    user = fresh(viewer)
    selectors.can_view_all(user)  # the permission lookup, once per request
    with django_assert_num_queries(1):
        rows = list(selectors.instance_list(user=user))
        assert {(r.owner.username, r.study.study_instance_uid) for r in rows} >= {("owner", "1.1"), ("other", "1.3")}
    assert all(row.get_deferred_fields() == {"header"} for row in rows)


# --- counts and orders ------------------------------------------------------------------------------------------------


def warm(user):
    """The user with its permissions loaded, as after a request's first check."""
    selectors.can_view_all(user)
    return user


def test_scoping_a_user_who_is_not_a_superuser_looks_up_their_permissions_once(catalogue, owner, django_assert_num_queries):
    user = fresh(owner)
    with django_assert_num_queries(2):  # user and group permissions (for view_all), then cached on the user
        selectors.instances_for(user)
        selectors.studies_for(user)
        selectors.series_for(user)
    superuser = fresh(get_user_model().objects.create_superuser("root2"))
    with django_assert_num_queries(0):  # querysets are lazy, and is_superuser needs no lookup
        selectors.instances_for(superuser)


def test_studies_for_counts_series_and_instances_in_one_query(catalogue, owner, django_assert_num_queries):
    owner = warm(fresh(owner))
    with django_assert_num_queries(1):
        studies = {s.study_instance_uid: (s.series_count, s.instance_count, s.owner.username) for s in selectors.studies_for(owner)}
    assert studies == {"1.1": (2, 3, "owner"), "1.2": (1, 1, "owner")}


def test_series_for_counts_instances_in_one_query(catalogue, owner, django_assert_num_queries):
    owner = warm(fresh(owner))
    with django_assert_num_queries(1):
        series = {s.series_instance_uid: (s.instance_count, s.study.study_instance_uid) for s in selectors.series_for(owner)}
    assert series == {"1.1.1": (2, "1.1"), "1.1.2": (1, "1.1"), "1.2.1": (1, "1.2")}


def test_a_study_without_series_counts_zero_not_null(owner):
    Study.objects.create(owner=owner, study_instance_uid="9.9")
    (study,) = selectors.studies_for(owner)
    assert (study.series_count, study.instance_count) == (0, 0)


def test_studies_and_series_lists_are_newest_first(catalogue, owner):
    assert [s.study_instance_uid for s in selectors.studies_for(owner)] == ["1.2", "1.1"]
    assert [s.series_instance_uid for s in selectors.series_for(owner)] == ["1.2.1", "1.1.2", "1.1.1"]


def test_series_of_a_study_in_series_number_order_with_counts(catalogue):
    study = catalogue["mr"].study
    assert [(s.series_instance_uid, s.instance_count) for s in selectors.series_of_study(study)] == [("1.1.1", 2), ("1.1.2", 1)]


def test_instances_of_a_series_in_instance_number_order(catalogue):
    series = catalogue["a1"][0].series
    assert [i.instance_number for i in selectors.instances_of_series(series)] == [1, 2]


# --- lookup_instances (bulk tag lookup) ---------------------------------------------------------------------------------


def test_lookup_by_instances_in_series_and_instance_number_order(catalogue, owner, django_assert_num_queries):
    wanted, user = [catalogue["a1"][0].pk, catalogue["a1"][1].pk, catalogue["b"].pk], warm(fresh(owner))
    with django_assert_num_queries(2):  # the visibility COUNT, then the rows
        rows = list(selectors.lookup_instances(user, keys=(PATIENT_NAME,), instances=wanted))
    assert {r.pk for r in rows} == set(wanted)
    a1 = [r for r in rows if r.series_id == catalogue["a1"][0].series_id]
    assert [r.instance_number for r in a1] == [1, 2]
    assert selectors.partial_header(rows[0], (PATIENT_NAME,))[PATIENT_NAME]["vr"] == "PN"
    assert all(r.get_deferred_fields() >= {"header", "patient_name"} for r in rows)


def test_lookup_refuses_the_whole_list_if_one_instance_is_not_visible(catalogue, owner, viewer):
    mixed = [catalogue["b"].pk, catalogue["theirs"].pk]
    with pytest.raises(Http404):
        selectors.lookup_instances(owner, keys=(MODALITY,), instances=mixed)
    with pytest.raises(Http404):
        selectors.lookup_instances(owner, keys=(MODALITY,), instances=[catalogue["b"].pk, uuid.uuid4()])
    assert {r.pk for r in selectors.lookup_instances(viewer, keys=(MODALITY,), instances=mixed)} == set(mixed)


def test_lookup_a_repeated_instance_once(catalogue, owner):
    pk = catalogue["b"].pk
    assert [r.pk for r in selectors.lookup_instances(owner, keys=(MODALITY,), instances=[pk, pk])] == [pk]


def test_lookup_by_study_and_by_series(catalogue, owner):
    study, series = catalogue["mr"].study_id, catalogue["a1"][0].series_id
    by_study = list(selectors.lookup_instances(owner, keys=(MODALITY,), study=study))
    assert {r.pk for r in by_study} == ids([*catalogue["a1"], catalogue["mr"]])
    assert [r.instance_number for r in selectors.lookup_instances(owner, keys=(MODALITY,), series=series)] == [1, 2]


@pytest.mark.parametrize("level", ["study", "series"])
def test_lookup_of_another_owners_study_or_series_is_404_unless_view_all(catalogue, owner, viewer, level):
    theirs = {"study": catalogue["theirs"].study_id, "series": catalogue["theirs"].series_id}[level]
    with pytest.raises(Http404):
        selectors.lookup_instances(owner, keys=(MODALITY,), **{level: theirs})
    with pytest.raises(Http404):
        selectors.lookup_instances(owner, keys=(MODALITY,), **{level: uuid.uuid4()})
    assert [r.pk for r in selectors.lookup_instances(viewer, keys=(MODALITY,), **{level: theirs})] == [catalogue["theirs"].pk]


# --- archive_members ----------------------------------------------------------------------------------------------------


def test_archive_members_in_series_then_instance_order_without_headers(catalogue, owner, django_assert_num_queries):
    with django_assert_num_queries(1):
        members = list(selectors.archive_members(Instance.objects.filter(study=catalogue["mr"].study)))
        names = [(m.series.series_instance_uid, m.instance_number) for m in members]
    assert names == [("1.1.1", 1), ("1.1.1", 2), ("1.1.2", 1)]
    loaded = {f.attname for f in Instance._meta.concrete_fields} - members[0].get_deferred_fields()
    assert loaded == {"id", "file", "sop_instance_uid", "instance_number", "series_id"}
