"""QIDO-RS over the catalogue: a parsed `web.Query` → scoped queryset → DICOM JSON results.

Matching and the default attributes come from the columns of Study, Series and Instance; any other
attribute is matched in the stored header JSON of the instances (studies.header_search). `includefield`
values not held in a column come from the stored header JSON of the level's first instance (still the
database, never the files).
"""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Subquery

from .. import header_search, labels, selectors
from ..models import Instance, Series, Study
from . import protocol as web

MODELS: dict[str, type[Study] | type[Series] | type[Instance]] = {"study": Study, "series": Series, "instance": Instance}
# Path from each queried model to the table holding an attribute of a level.
PREFIX = {
    "study": {"study": ""},
    "series": {"study": "study__", "series": ""},
    "instance": {"study": "study__", "series": "series__", "instance": ""},
}
ORDER = {
    "study": ("-study_date", "-created_at", "id"),
    "series": ("study_id", F("series_number").asc(nulls_last=True), "created_at", "id"),
    "instance": ("series_id", F("instance_number").asc(nulls_last=True), "uploaded_at", "id"),
}


def search(user, query: web.Query, *, base_url: str, study_uid: str | None = None, series_uid: str | None = None) -> list[dict[str, Any]]:
    """The results of one QIDO-RS request, newest studies first, as DICOM JSON data sets.

    When more results match than `limit` returned, a warning saying so is added to `query.warnings`.
    """
    level = query.level
    queryset = selectors.scoped(MODELS[level].objects.all(), user)
    if level != "study":
        queryset = queryset.select_related(*(["study"] if level == "series" else ["study", "series"]))
    if study_uid:
        queryset = queryset.filter(**{f"{PREFIX[level]['study']}study_instance_uid": study_uid})
    if series_uid:
        queryset = queryset.filter(**{f"{PREFIX[level]['series']}series_instance_uid": series_uid})
    queryset = filtered(queryset, query, user)
    if query.labels:
        queryset = labels.labelled(queryset, user, query.labels, level=level)
    merged = selectors.can_view_all(user)
    if merged:
        queryset = one_per_uid(queryset, level)
    if level == "instance":
        queryset = queryset.defer("header")
    rows = list(queryset.order_by(*ORDER[level])[query.offset : query.offset + query.limit + 1])
    if len(rows) > query.limit:
        rows = rows[: query.limit]
        query.warnings.append(f"there are more results: ask again with offset={query.offset + query.limit}")
    return _results(rows, query, base_url, merged=merged)


# Each level's UID and what orders its copies (the first stored is the one returned).
UID_FIELD = {"study": "study_instance_uid", "series": "series_instance_uid", "instance": "sop_instance_uid"}
STORED_AT = {"study": "created_at", "series": "created_at", "instance": "uploaded_at"}


def one_per_uid(queryset: QuerySet, level: str) -> QuerySet:
    """One row per UID: a user who sees every owner's catalogue (view_all) would otherwise get one study (series,
    instance) per owner who stored it. The first stored row among those the query matches stands for them all."""
    uid, at = UID_FIELD[level], STORED_AT[level]
    earlier = Q(**{f"{at}__lt": OuterRef(at)}) | Q(**{at: OuterRef(at), "pk__lt": OuterRef("pk")})
    return queryset.exclude(Exists(queryset.order_by().filter(earlier, **{uid: OuterRef(uid)})))


def filtered(queryset: QuerySet, query: web.Query, user) -> QuerySet:
    """`queryset` (of the query's level, scoped to what `user` may see) narrowed by every matching key: columns
    here, the rest in the stored headers (studies.header_search)."""
    for match in query.matches:
        if not match.in_header:
            queryset = queryset.filter(_condition(query.level, match))
    owner_id = None if selectors.can_view_all(user) else user.pk
    return header_search.matching(queryset, query.level, query.matches, owner_id=owner_id)


def _condition(level: str, match: web.Match) -> Q:
    attribute = match.attribute
    if match.kind == "universal":
        return Q()
    if match.kind == "modalities":
        study_ref = OuterRef("pk") if level == "study" else OuterRef("study_id")
        return Q(Exists(Series.objects.filter(study=study_ref, modality__in=match.value)))
    assert attribute.column is not None  # computed attributes are NOT_MATCHABLE, or ModalitiesInStudy (above)
    column = PREFIX[level][attribute.level] + attribute.column
    if match.kind == "uids":
        return Q(**{f"{column}__in": match.value})
    if match.kind == "range":
        low, high = match.value
        condition = Q()
        if attribute.vr == "TM":  # stored as text, HHMMSS[.frac]; "~" sorts after every digit and "."
            condition &= Q(**{f"{column}__gte": low}) if low else Q()
            condition &= Q(**{f"{column}__lte": high + "~"}) if high else Q()
            return condition & ~Q(**{column: ""})
        if low:
            condition &= Q(**{f"{column}__gte": low})
        if high:
            condition &= Q(**{f"{column}__lte": high})
        return condition
    # Person names match without regard to case (as fuzzy matching would); other strings exactly.
    insensitive = attribute.vr == "PN"
    if match.kind == "exact":
        return Q(**{f"{column}__iexact" if insensitive else column: match.value})
    pattern: str = match.value
    inner = pattern.strip("*")
    if pattern.startswith("*") and pattern.endswith("*") and inner and not any(c in inner for c in "*?"):
        return Q(**{f"{column}__icontains" if insensitive else f"{column}__contains": inner})
    if pattern.endswith("*") and not any(c in pattern[:-1] for c in "*?"):
        return Q(**{f"{column}__istartswith" if insensitive else f"{column}__startswith": pattern[:-1]})
    return Q(**{f"{column}__iregex" if insensitive else f"{column}__regex": web.wildcard_regex(pattern)})


# --- results ---------------------------------------------------------------------------------


def _results(rows: list, query: web.Query, base_url: str, *, merged: bool) -> list[dict[str, Any]]:
    level = query.level
    if not rows:
        return []
    studies = [row if level == "study" else row.study for row in rows]
    series = [] if level == "study" else [row if level == "series" else row.series for row in rows]
    study_facts = _study_facts(studies, merged=merged)
    series_counts = _series_counts(series, merged=merged) if series else {}
    wanted = set(query.include)
    levels = web.LEVELS[: web.LEVELS.index(level) + 1]
    from_headers = wanted - _column_tags(level)
    headers = _headers(rows, level, None if query.include_all else tuple(sorted(from_headers))) if (query.include_all or from_headers) else {}
    results = []
    for i, row in enumerate(rows):
        study = studies[i]
        result: dict[str, Any] = {}
        header = headers.get(row.pk, {})
        if query.include_all:  # the elements of this level and the levels above it, never the file meta group
            result.update(
                {tag: _returned(elem) for tag, elem in header.items() if not tag.startswith("0002") and web.header_level(tag) in levels}
            )
        elif wanted:
            result.update({tag: _returned(header[tag]) for tag in wanted if tag in header})
        result[web.SPECIFIC_CHARACTER_SET] = web.element("CS", "ISO_IR 192")
        result.update(_study_elements(study, study_facts.get(study.pk, (0, 0, []))))
        url = f"{base_url}/studies/{study.study_instance_uid}"
        if level in ("series", "instance"):
            one = series[i]
            result.update(_series_elements(one, series_counts.get(one.pk, 0)))
            url += f"/series/{one.series_instance_uid}"
        if level == "instance":
            result.update(_instance_elements(row))
            url += f"/instances/{row.sop_instance_uid}"
        result[web.INSTANCE_AVAILABILITY] = web.element("CS", "ONLINE")
        result[web.RETRIEVE_URL] = web.element("UR", url)
        if not query.include_all:
            for tag in wanted - result.keys():
                result[tag] = {"vr": web.vr_of(tag)}
        results.append(dict(sorted(result.items())))
    return results


def _column_tags(level: str) -> set[str]:
    levels = web.LEVELS[: web.LEVELS.index(level) + 1]
    return {a.tag for a in web.ATTRIBUTES if a.level in levels}


def _returned(elem: Any) -> Any:
    """A stored header element as a QIDO answer: large values are not part of search results."""
    if isinstance(elem, dict) and "BulkData" in elem:
        return {"vr": elem.get("vr", "UN")}
    return elem


def _headers(rows: list, level: str, keys: tuple[str, ...] | None) -> dict:
    """The stored header of each row's first instance (the row itself at instance level): only the elements `keys`
    when given (reading a ~12 KB header whole for one element cost 6x the rest of an instance search), else all."""
    if level == "instance":
        ids = {row.pk: row.pk for row in rows}
    else:
        link = "study" if level == "study" else "series"
        first = Instance.objects.filter(**{link: OuterRef("pk")}).order_by("instance_number", "uploaded_at").values("pk")[:1]
        model = MODELS[level]
        ids = dict(model.objects.filter(pk__in=[r.pk for r in rows]).annotate(first=Subquery(first)).values_list("pk", "first"))
    wanted = Instance.objects.filter(pk__in=[i for i in ids.values() if i])
    if keys is None:
        found = dict(wanted.values_list("pk", "header"))
    else:
        found = {one.pk: selectors.partial_header(one, keys) for one in selectors.with_header_elements(wanted.only("pk"), keys)}
    return {row_id: found.get(instance_id) or {} for row_id, instance_id in ids.items()}


def _study_facts(studies: list, *, merged: bool) -> dict:
    """Per study row (by pk): (number of series, number of instances, sorted modalities), in two queries.

    merged (a view_all user, one result standing for every owner's copy: one_per_uid): over all copies of the
    study, grouped by Study Instance UID, each Series and SOP Instance UID counted once. Otherwise over the row
    itself (UIDs are unique per owner, so plain counts are the same thing)."""
    key, group = ("study_instance_uid", "study__study_instance_uid") if merged else ("pk", "study_id")
    keys = {getattr(study, key) for study in studies}
    series_uids: dict = {k: set() for k in keys}
    modalities: dict = {k: set() for k in keys}
    for k, series_uid, modality in Series.objects.filter(**{f"{group}__in": keys}).values_list(group, "series_instance_uid", "modality"):
        series_uids[k].add(series_uid)
        if modality:
            modalities[k].add(modality)
    counted = Count("sop_instance_uid", distinct=True) if merged else Count("*")
    n_instances = dict(Instance.objects.filter(**{f"{group}__in": keys}).order_by().values(group).annotate(n=counted).values_list(group, "n"))
    return {
        study.pk: (len(series_uids[k]), n_instances.get(k, 0), sorted(modalities[k]))
        for study in studies
        for k in [getattr(study, key)]
    }


def _series_counts(series: list, *, merged: bool) -> dict:
    """Per series row (by pk): its number of instances; merged, over every owner's copy of the series, each SOP
    Instance UID once (as _study_facts)."""
    key, group = ("series_instance_uid", "series__series_instance_uid") if merged else ("pk", "series_id")
    keys = {getattr(one, key) for one in series}
    counted = Count("sop_instance_uid", distinct=True) if merged else Count("*")
    n_instances = dict(Instance.objects.filter(**{f"{group}__in": keys}).order_by().values(group).annotate(n=counted).values_list(group, "n"))
    return {one.pk: n_instances.get(getattr(one, key), 0) for one in series}


def _study_elements(study: Study, facts: tuple) -> dict[str, Any]:
    n_series, n_instances, modalities = facts
    out = {a.tag: web.element(a.vr, getattr(study, a.column)) for a in web.ATTRIBUTES if a.level == "study" and a.column}
    out["00080061"] = web.element("CS", modalities)
    out["00201206"] = web.element("IS", n_series)
    out["00201208"] = web.element("IS", n_instances)
    return out


def _series_elements(series: Series, count: int) -> dict[str, Any]:
    out = {a.tag: web.element(a.vr, getattr(series, a.column)) for a in web.ATTRIBUTES if a.level == "series" and a.column}
    out["00201209"] = web.element("IS", count)
    return out


def _instance_elements(instance: Instance) -> dict[str, Any]:
    out = {a.tag: web.element(a.vr, getattr(instance, a.column)) for a in web.ATTRIBUTES if a.level == "instance" and a.column}
    if not instance.number_of_frames:
        out["00280008"] = {"vr": "IS"}
    return out


def instances(user, *, study_uid: str, series_uid: str | None = None, instance_uid: str | None = None) -> QuerySet[Instance]:
    """The user's instances under a WADO-RS path, in series and instance order (may be empty)."""
    queryset = selectors.scoped(Instance.objects.select_related("study", "series"), user).filter(
        study__study_instance_uid=study_uid
    )
    if series_uid:
        queryset = queryset.filter(series__series_instance_uid=series_uid)
    if instance_uid:
        queryset = queryset.filter(sop_instance_uid=instance_uid)
    if selectors.can_view_all(user):  # every owner's copy of an instance would come back: one of each
        queryset = one_per_uid(queryset, "instance")
    return queryset.order_by(
        F("series__series_number").asc(nulls_last=True), "series_id", F("instance_number").asc(nulls_last=True), "uploaded_at", "id"
    )
