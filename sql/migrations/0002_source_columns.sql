-- Source schema changes (DESIGN.md section 6): capture maps buffer columns to source columns by attnum, so a renamed
-- column keeps being captured, and each stream table remembers the source columns it was planned against, so its
-- refresh can tell a renamed, dropped or retyped column apart.

-- The columns of the source as this stream table last saw them: [{attnum, name, type}]. NULL until its next refresh
-- records them.
ALTER TABLE pgtrickle.pgt_dependencies ADD COLUMN source_columns jsonb;

-- Buffers made before this migration name their columns only: add each one's attnum (NULL when the source column is
-- no longer there under that name; capture then fills it with NULL).
UPDATE pgtrickle.pgt_change_buffers b SET columns = (
  SELECT coalesce(jsonb_agg(e.c || jsonb_build_object('attnum', a.attnum) ORDER BY e.ord), '[]'::jsonb)
  FROM jsonb_array_elements(b.columns) WITH ORDINALITY AS e(c, ord)
  LEFT JOIN pg_attribute a ON a.attrelid = b.source_relid AND a.attname = e.c->>'name' AND NOT a.attisdropped
);

-- Which capture function a buffer has: 1 named the source's columns (a rename broke every write), 2 maps them by
-- position. A reader's next refresh rewrites version 1 capture.
ALTER TABLE pgtrickle.pgt_change_buffers ADD COLUMN capture_version int NOT NULL DEFAULT 1;
