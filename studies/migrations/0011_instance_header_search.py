"""Search on any header attribute (studies.header_search), PostgreSQL only: `header_terms`, a column the database
generates from each stored header, with a GIN index. It holds one text per value of every element ("00181030=CT
protocol"; numbers without trailing zeros, so 5 = 5.0; person names lower case, as they are matched without regard
to case; values over 128 characters left out). Exact matches are `header_terms @> ARRAY['...']`. It is not a model
field: nothing in Python writes it, so no write path can forget it, and SQLite has no such column (its searches
read the headers: correct, slower).

Measured at 100k instances (bench/run.py search, docs/performance.md), one key matching 1 in 8 of a user's rows:
- GIN (jsonb_path_ops) over the header: the index is lossy, so every candidate's whole header (~12 KB of DICOM
  JSON, TOAST-compressed) is decompressed to recheck it: 40 ms a count against 1.5 ms for a column;
- a GIN expression index over dicom_search_terms(header): exact, 2 ms a count, but a row the planner tests
  outside the index recomputes the terms (~0.5 ms a row), and the planner cannot be told that cheaply;
- this stored column with its GIN index: 2 ms a count, 33 MB of index, ~2.5 KB a row of table (compressed).

Adding it computes the terms of every stored header (~0.5-1 ms a row: about a minute and a half per 100k instances)
and rewrites the table, blocking writes meanwhile; every insert computes them once (~0.5 ms).
"""

from django.db import migrations

COLUMN, INDEX = "header_terms", "instance_header_terms"  # studies.header_search.TERMS_COLUMN

FUNCTION = r"""
CREATE OR REPLACE FUNCTION dicom_search_terms(header jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(term), '{}') FROM (
        SELECT element.key || '=' || CASE jsonb_typeof(item.v)
            WHEN 'string' THEN item.v #>> '{}'
            WHEN 'number' THEN trim_scale((item.v #>> '{}')::numeric)::text
            ELSE lower(item.v ->> 'Alphabetic')  -- a person name; NULL (left out) for a sequence item
        END AS term
        FROM jsonb_each(header) AS element, jsonb_array_elements(element.value -> 'Value') AS item(v)
        WHERE jsonb_typeof(element.value -> 'Value') = 'array'
    ) AS terms
    WHERE length(term) <= 137  -- 8 hex digits, "=", and at most 128 characters: a GIN entry has a size limit
$$
"""


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        table = schema_editor.quote_name(apps.get_model("studies", "Instance")._meta.db_table)
        schema_editor.execute(FUNCTION)
        schema_editor.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {COLUMN} text[] "
                              f"GENERATED ALWAYS AS (dicom_search_terms(header)) STORED")  # fmt: skip
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {INDEX} ON {table} USING gin ({COLUMN})")


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        table = schema_editor.quote_name(apps.get_model("studies", "Instance")._meta.db_table)
        schema_editor.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS {COLUMN}")  # its index goes with it
        schema_editor.execute("DROP FUNCTION IF EXISTS dicom_search_terms(jsonb)")


class Migration(migrations.Migration):
    dependencies = [("studies", "0010_label")]

    operations = [migrations.RunPython(create, drop)]
