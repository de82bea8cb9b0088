"""Matching on any attribute of the stored headers (Instance.header, DICOM JSON), without declaring it first.

`HeaderMatch(match)` is a boolean SQL condition on the instance row for one parsed `protocol.Match` with
`in_header` set: QIDO-RS (studies.dicomweb.qido) and the REST lists (studies.api.views) pass every attribute that
has no column at the queried level through it, and `matching()` applies it at the study and series levels as "one
of its instances matches every header key".

- PostgreSQL: exact values and UID lists look for search terms, `header_terms @> ARRAY['00180050=5']`, a column
  the database generates from each header, answered exactly by its GIN index (migration 0011 says why not
  jsonb_path_ops);
  a number matches however it was stored (5 = 5.0), a person name without regard to case (as their columns do).
  Wildcards, ranges and values over 128 characters read each value with jsonb_path_query: a scan of the owner's
  rows, not an index.
- SQLite: the same matches over json_each (no index; correct, slower). Wildcards are case-sensitive (GLOB) except
  for person names (LIKE, which ignores the case of ASCII letters only).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import NotSupportedError, connection
from django.db.models import BooleanField, Exists, F, OuterRef, QuerySet
from django.db.models.expressions import Expression

from .dicomweb import protocol as web
from .models import Instance

# PostgreSQL only: a stored column generated from the header, not a model field (migration 0011 says why).
TERMS_COLUMN = "header_terms"
TERM_CHARACTERS = 128  # the longest value dicom_search_terms() writes into it


def matching(queryset: QuerySet, level: str, matches: list[web.Match], *, owner_id: int | None = None) -> QuerySet:
    """`queryset` (of `level`) narrowed to rows with an instance matching every header match (the row itself at the
    instance level): one instance must satisfy them all, as one stored object does. `owner_id`: the queryset holds
    only that owner's rows (the index lookup is then narrowed to them too)."""
    found = [m for m in matches if m.in_header]
    if not found:
        return queryset
    column = "id" if level == "instance" else f"{level}_id"
    if connection.vendor == "postgresql" and any(_indexed_terms(m) for m in found):
        return queryset.filter(IndexedSearch(found, column, owner_id))
    conditions = [HeaderMatch(m) for m in found]
    if level == "instance":
        return queryset.filter(*conditions)
    return queryset.filter(Exists(Instance.objects.filter(*conditions, **{column: OuterRef("pk"), "owner": OuterRef("owner_id")})))


class _MatchExpression(Expression):
    """A boolean condition over one column of the instance row (`source`), compared by what it matches: Django
    hashes expressions, and a Match's value may be a list."""

    conditional = True
    output_field = BooleanField()

    def __init__(self, source: Any):
        super().__init__()
        self.source = source

    def _key(self) -> tuple:
        raise NotImplementedError

    @property
    def identity(self):
        return (type(self), self._key(), self.source)

    def __eq__(self, other):
        return type(other) is type(self) and other.identity == self.identity

    def __hash__(self):
        return hash(self.identity)

    def get_source_expressions(self):
        return [self.source]

    def set_source_expressions(self, exprs):
        (self.source,) = exprs


def _match_key(match: web.Match) -> tuple:
    return (match.attribute.tag, match.kind, repr(match.value))


class IndexedSearch(_MatchExpression):
    """PostgreSQL, when the GIN index on header_terms can answer one of the matches: `pk = ANY(ARRAY(the instances
    (or their studies or series) matching them all))`, that inner query run once, on its own, from the index.

    Why apart: joined into the outer query, the planner walks the outer query's ordering index and tests each row's
    terms, reading a 2.5 KB compressed array per row: 100 ms for 10,000 rows (measured at 100k instances, bench/run.py
    search), where the index gives the same rows in 2 ms. It does not know the array has to be decompressed. Why an
    array rather than `IN (... OFFSET 0)`: the outer query then looks the ids up by primary key; with IN it hashed
    the owner's every row, and at the instance level chose a nested loop over series: 28 ms against 14 ms for the
    same QIDO-RS page (1 in 8 of 26,000 rows)."""

    def __init__(self, matches: list[web.Match], column: str, owner_id: int | None = None):
        super().__init__(F("pk"))
        self.matches, self.column, self.owner_id = matches, column, owner_id

    def _key(self) -> tuple:
        return (self.column, tuple(_match_key(m) for m in self.matches), self.owner_id)

    def as_sql(self, compiler, connection):
        pk, params = compiler.compile(self.source)
        quote = connection.ops.quote_name
        conditions = [_pg_condition(m, header=f"hs.{quote('header')}", terms=f"hs.{quote(TERMS_COLUMN)}") for m in self.matches]
        if self.owner_id is not None:
            conditions.append((f"hs.{quote('owner_id')} = %s", [self.owner_id]))
        where = " AND ".join(sql for sql, _ in conditions)
        inner = f"SELECT hs.{quote(self.column)} FROM {quote(Instance._meta.db_table)} AS hs WHERE {where}"
        return f"{pk} = ANY(ARRAY({inner}))", (*params, *(p for _, values in conditions for p in values))


class HeaderMatch(_MatchExpression):
    """One `protocol.Match` (in_header) as SQL over the `header` column of the instance table being queried."""

    def __init__(self, match: web.Match):
        super().__init__(F("header"))
        self.match = match

    def _key(self) -> tuple:
        return _match_key(self.match)

    def as_sql(self, compiler, connection):
        raise NotSupportedError(f"matching on header attributes is not implemented for {connection.vendor}")

    def as_postgresql(self, compiler, connection):
        header, params = compiler.compile(self.source)
        terms = f"{compiler.quote_name_unless_alias(self.source.alias)}.{connection.ops.quote_name(TERMS_COLUMN)}"
        sql, values = _pg_condition(self.match, header=header, terms=terms)
        return sql, (*params, *values)

    def as_sqlite(self, compiler, connection):
        header, params = compiler.compile(self.source)
        tag, vr = self.match.attribute.tag, self.match.attribute.vr
        text = "JSON_EXTRACT(e.value, '$.Alphabetic')" if vr == "PN" else "e.value"
        # Person names ignore case (LIKE); other strings are case-sensitive (GLOB has DICOM's own * and ?).
        condition, values = _value_condition(self.match, text, like="LIKE", glob=None if vr == "PN" else "GLOB")
        return f"EXISTS (SELECT 1 FROM JSON_EACH({header}, %s) AS e WHERE {condition})", (*params, f'$."{tag}".Value', *values)


def _pg_condition(match: web.Match, *, header: str, terms: str) -> tuple[str, list]:
    """PostgreSQL: the condition on one instance row (its `header` and `terms` columns as SQL) and its parameters."""
    indexed = _indexed_terms(match)
    if indexed is not None:  # the GIN index on header_terms answers it exactly (migration 0011)
        sql, operator = indexed
        return f"({terms} {operator} ARRAY[{', '.join(sql)}]::text[])", _term_params(match)
    vr = match.attribute.vr
    path = f'$."{match.attribute.tag}".Value[*]' + (".Alphabetic" if vr == "PN" else "")
    condition, values = _value_condition(match, "(e.v #>> '{}')", like="ILIKE" if vr == "PN" else "LIKE", glob=None)
    return f"EXISTS (SELECT 1 FROM jsonb_path_query({header}, %s::jsonpath) AS e(v) WHERE {condition})", [path, *values]


def _indexed_terms(match: web.Match) -> tuple[list[str], str] | None:
    """The SQL of the search terms an exact or UID match looks for, and the array operator (all of one, any of
    many); None when the index cannot answer (wildcards, ranges, values longer than it holds)."""
    vr = match.attribute.vr
    if match.kind == "uids":
        return ["%s"] * len(match.value), "&&"
    if match.kind != "exact":
        return None
    if vr == "PN":  # the terms hold names lower case, by the database's own lower()
        return (["%s::text || lower(%s::text)"], "@>") if len(match.value) <= TERM_CHARACTERS else None
    if isinstance(match.value, (int, float)):  # as the terms write numbers: no trailing zeros
        return ["%s::text || trim_scale(%s::numeric)::text"], "@>"
    return (["%s"], "@>") if len(match.value) <= TERM_CHARACTERS else None


def _term_params(match: web.Match) -> list:
    prefix = f"{match.attribute.tag}="
    if match.kind == "uids":
        return [prefix + uid for uid in match.value]
    if match.attribute.vr == "PN" or isinstance(match.value, (int, float)):
        return [prefix, str(match.value)]
    return [prefix + match.value]


def _value_condition(match: web.Match, text: str, *, like: str, glob: str | None) -> tuple[str, list]:
    """The condition on one stored value (SQL `text`) for the match, and its parameters."""
    vr = match.attribute.vr
    if match.kind == "uids":
        return f"{text} IN ({', '.join(['%s'] * len(match.value))})", list(match.value)
    if match.kind == "range":
        low, high = (v.strftime("%Y%m%d") if isinstance(v, dt.date) else v for v in match.value)
        parts, values = [], []
        if low:
            parts.append(f"{text} >= %s")
            values.append(low)
        if high:
            parts.append(f"{text} <= %s")
            # TM and DT are compared as text: "~" sorts after every digit, so a high bound takes in its fractions
            values.append(high if vr == "DA" else high + "~")
        return " AND ".join(parts), values
    if match.kind == "exact":
        if vr == "PN":
            return f"LOWER({text}) = LOWER(%s)", [match.value]
        return f"{text} = %s", [match.value]
    pattern: str = match.value  # wildcard
    if glob:
        return f"{text} {glob} %s", ["".join("[[]" if ch == "[" else ch for ch in pattern)]
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{text} {like} %s ESCAPE '\\'", [escaped.replace("*", "%").replace("?", "_")]


def rest_query(level: str, params) -> web.Query:
    """The DICOM attribute keys of a REST list's query string (keywords or tags, e.g. `SliceThickness=5`,
    `00180015=CHEST`) as a parsed query; QueryError (400 invalid_parameter) for a value or key that cannot be
    matched, since a list that silently ignores a filter would answer the wrong question."""
    pairs = [(name, value) for name in params if web.is_attribute_key(name) for value in params.getlist(name)]
    query = web.parse_query(level, pairs)
    if query.warnings:
        raise web.QueryError("; ".join(query.warnings))
    return query
