"""Labels: free text a user puts on their studies and series, to find them again (lists, QIDO-RS, the admin).

A label belongs to the user who set it and is seen only by them, on any study or series they may see. Names are
1 to 64 characters without control characters or a slash (they appear in URL paths), kept as typed, compared exactly.
"""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet

from .errors import InvalidParameter
from .models import Label, Series, Study

MAX_LABELS = 100  # per object and user: a PUT of more is refused


def clean(name: str) -> str:
    """The label as stored, or InvalidParameter saying what is wrong with it."""
    text = (name or "").strip()
    if not text or len(text) > 64:
        raise InvalidParameter("a label is 1 to 64 characters")
    if "/" in text or not text.isprintable():
        raise InvalidParameter("a label has no '/' and no control characters")
    return text


def _target(obj: Study | Series) -> dict:
    return {"study": obj} if isinstance(obj, Study) else {"series": obj}


def of(user, obj: Study | Series) -> list[str]:
    """The user's labels on `obj`, sorted."""
    return list(Label.objects.filter(owner=user, **_target(obj)).order_by("name").values_list("name", flat=True))


def add(user, obj: Study | Series, name: str) -> bool:
    """Put the label on (True), or find it already there (False)."""
    name = clean(name)
    try:
        with transaction.atomic():
            Label.objects.create(owner=user, name=name, **_target(obj))
    except IntegrityError:  # already there (also when a concurrent request put it on first)
        return False
    return True


def remove(user, obj: Study | Series, name: str) -> bool:
    """Take the label off; False when it was not there."""
    deleted, _ = Label.objects.filter(owner=user, name=name, **_target(obj)).delete()
    return bool(deleted)


def replace(user, obj: Study | Series, names: list[str]) -> list[str]:
    """Make the user's labels on `obj` exactly `names`."""
    wanted = {clean(n) for n in names}
    if len(wanted) > MAX_LABELS:
        raise InvalidParameter(f"at most {MAX_LABELS} labels per study or series")
    with transaction.atomic():
        Label.objects.filter(owner=user, **_target(obj)).exclude(name__in=wanted).delete()
        for name in sorted(wanted - set(of(user, obj))):
            add(user, obj, name)
    return of(user, obj)


def labelled(queryset: QuerySet, user, names: list[str], *, level: str) -> QuerySet:
    """`queryset` (studies, series or instances) narrowed to objects carrying every one of the user's `names`, on
    the object itself or a level above it (a series in a labelled study, an instance in a labelled series...)."""
    for name in names:
        mine = Label.objects.filter(owner=user, name=name)
        if level == "study":
            condition = Q(Exists(mine.filter(study=OuterRef("pk"))))
        elif level == "series":
            condition = Q(Exists(mine.filter(series=OuterRef("pk")))) | Q(Exists(mine.filter(study=OuterRef("study_id"))))
        else:
            condition = Q(Exists(mine.filter(series=OuterRef("series_id")))) | Q(Exists(mine.filter(study=OuterRef("study_id"))))
        queryset = queryset.filter(condition)
    return queryset


def names_of(user) -> list[str]:
    """Every label the user uses, for the admin's filter."""
    return list(Label.objects.filter(owner=user).order_by("name").values_list("name", flat=True).distinct())
