-- The catalog of stream tables, their sources, refresh history and change buffers.
CREATE SCHEMA IF NOT EXISTS pgtrickle_changes;

CREATE TABLE pgtrickle.pgt_stream_tables (
  pgt_id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  pgt_relid              oid NOT NULL UNIQUE,
  pgt_schema             text NOT NULL,
  pgt_name               text NOT NULL,
  defining_query         text NOT NULL,
  refresh_mode           text NOT NULL CHECK (refresh_mode IN ('AUTO', 'FULL', 'DIFFERENTIAL', 'IMMEDIATE')),
  effective_refresh_mode text NOT NULL CHECK (effective_refresh_mode IN ('FULL', 'DIFFERENTIAL', 'IMMEDIATE')),
  fallback_reason        text,
  schedule               text NOT NULL,
  freshness_deadline_ms  bigint CHECK (freshness_deadline_ms > 0),
  status                 text NOT NULL DEFAULT 'INITIALIZING'
                         CHECK (status IN ('INITIALIZING', 'ACTIVE', 'SUSPENDED', 'ERROR')),
  plan                   jsonb NOT NULL,
  frontier               pg_snapshot,
  row_count              bigint NOT NULL DEFAULT 0,
  last_refresh_at        timestamptz,
  last_full_ms           double precision,
  last_diff_ms           double precision,
  consecutive_errors     integer NOT NULL DEFAULT 0,
  last_error             text,
  created_at             timestamptz NOT NULL DEFAULT now(),
  updated_at             timestamptz NOT NULL DEFAULT now(),
  UNIQUE (pgt_schema, pgt_name)
);

-- Stream table -> the tables its query reads (source_pgt_id when the source is itself a stream table).
CREATE TABLE pgtrickle.pgt_dependencies (
  pgt_id        bigint NOT NULL REFERENCES pgtrickle.pgt_stream_tables ON DELETE CASCADE,
  source_relid  oid NOT NULL,
  source_schema text NOT NULL,
  source_name   text NOT NULL,
  source_pgt_id bigint REFERENCES pgtrickle.pgt_stream_tables,
  PRIMARY KEY (pgt_id, source_relid)
);
CREATE INDEX ON pgtrickle.pgt_dependencies (source_relid);

-- Sources with change capture installed: their buffer is pgtrickle_changes.changes_<source_relid>.
CREATE TABLE pgtrickle.pgt_change_buffers (
  source_relid  oid PRIMARY KEY,
  source_schema text NOT NULL,
  source_name   text NOT NULL,
  columns       jsonb NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pgtrickle.pgt_refresh_history (
  refresh_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  pgt_id        bigint NOT NULL REFERENCES pgtrickle.pgt_stream_tables ON DELETE CASCADE,
  started_at    timestamptz NOT NULL,
  finished_at   timestamptz NOT NULL,
  duration_ms   double precision NOT NULL,
  action        text NOT NULL CHECK (action IN ('FULL', 'DIFFERENTIAL', 'NO_DATA')),
  status        text NOT NULL CHECK (status IN ('SUCCESS', 'FAILED')),
  rows_inserted bigint NOT NULL DEFAULT 0,
  rows_deleted  bigint NOT NULL DEFAULT 0,
  delta_rows    bigint NOT NULL DEFAULT 0,
  initiated_by  text NOT NULL CHECK (initiated_by IN ('CREATE', 'SCHEDULER', 'MANUAL')),
  reason        text,
  error         text,
  -- The service instance that ran it (its application_name), for operators running several.
  instance      text NOT NULL DEFAULT current_setting('application_name')
);
CREATE INDEX ON pgtrickle.pgt_refresh_history (pgt_id, started_at DESC);
CREATE INDEX ON pgtrickle.pgt_refresh_history (started_at);
