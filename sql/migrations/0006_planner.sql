-- The schedule planner and alerts (docs/SQL_REFERENCE.md, "Schedule planner and alerts"). The rules run in the
-- service; these tables hold what its planner pass decided, so SQL and REST read the same recommendation.

-- One recommendation per stream table, as of the planner pass that wrote it.
CREATE TABLE pgtrickle.pgt_recommendations (
  pgt_id                       bigint PRIMARY KEY REFERENCES pgtrickle.pgt_stream_tables ON DELETE CASCADE,
  recommendation               jsonb NOT NULL,
  current_interval_seconds     double precision,
  recommended_interval_seconds double precision,
  delta_pct                    double precision,
  confidence                   double precision NOT NULL CHECK (confidence BETWEEN 0 AND 1),
  computed_at                  timestamptz NOT NULL
);

-- The time of the last planner pass over the database (one row).
CREATE TABLE pgtrickle.pgt_planner_passes (
  singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  last_pass_at timestamptz NOT NULL,
  stream_tables integer NOT NULL,
  duration_ms  double precision NOT NULL
);

-- Per stream table and kind: whether the alert is firing and when it last fired (the cooldown survives a restart).
CREATE TABLE pgtrickle.pgt_alert_state (
  pgt_id           bigint NOT NULL REFERENCES pgtrickle.pgt_stream_tables ON DELETE CASCADE,
  kind             text NOT NULL CHECK (kind IN ('predicted_sla_breach', 'freshness_deadline_missed')),
  active           boolean NOT NULL,
  last_fired_at    timestamptz,
  last_resolved_at timestamptz,
  PRIMARY KEY (pgt_id, kind)
);

-- The alert outbox: one row per alert fired or resolved, written in the transaction that decided it. pgt_id has no
-- foreign key: an alert outlives a dropped stream table.
CREATE TABLE pgtrickle.pgt_alerts (
  alert_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  webhook_id   text NOT NULL UNIQUE,
  pgt_id       bigint NOT NULL,
  stream_table text NOT NULL,
  kind         text NOT NULL,
  state        text NOT NULL CHECK (state IN ('firing', 'resolved')),
  severity     text NOT NULL,
  payload      jsonb NOT NULL,
  created_at   timestamptz NOT NULL
);
CREATE INDEX ON pgtrickle.pgt_alerts (created_at DESC);

-- One row per alert and sink: its delivery state. `target` is the sink's URL (secrets are never stored here).
CREATE TABLE pgtrickle.pgt_alert_deliveries (
  alert_id        bigint NOT NULL REFERENCES pgtrickle.pgt_alerts ON DELETE CASCADE,
  sink            text NOT NULL CHECK (sink IN ('webhook', 'alertmanager')),
  target          text NOT NULL,
  state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
  attempts        integer NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL,
  last_attempt_at timestamptz,
  last_status     integer,
  last_error      text,
  delivered_at    timestamptz,
  PRIMARY KEY (alert_id, sink, target)
);
CREATE INDEX ON pgtrickle.pgt_alert_deliveries (next_attempt_at) WHERE state = 'pending';

-- The stream table named `name` ('schema.table', or 'table' in public), or an error naming it.
CREATE FUNCTION pgtrickle.stream_table_id(name text) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
  parts text[] := parse_ident(name);
  id bigint;
BEGIN
  IF cardinality(parts) = 1 THEN parts := ARRAY['public', parts[1]]; END IF;
  SELECT pgt_id INTO id FROM pgtrickle.pgt_stream_tables WHERE pgt_schema = parts[1] AND pgt_name = parts[2];
  IF id IS NULL THEN
    RAISE EXCEPTION 'Stream table "%" does not exist', name USING ERRCODE = 'undefined_table';
  END IF;
  RETURN id;
END $$;

-- The recommendation of the last planner pass for one stream table, with the pass time. Before any pass: confidence
-- 0 and a reasoning that says so.
CREATE FUNCTION pgtrickle.recommend_schedule(name text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
  SELECT coalesce(
    r.recommendation,
    jsonb_build_object(
      'stream_table', st.pgt_schema || '.' || st.pgt_name,
      'recommended_interval_seconds', NULL, 'peak_window_cron', NULL, 'confidence', 0,
      'current_interval_seconds', NULL, 'delta_pct', NULL,
      'reasoning', jsonb_build_array(jsonb_build_object('rule', 'no_pass_yet',
        'detail', 'The planner has not examined this stream table yet')))
  ) || jsonb_build_object('computed_at', r.computed_at, 'pass_at', (SELECT last_pass_at FROM pgtrickle.pgt_planner_passes))
  FROM pgtrickle.pgt_stream_tables st
  LEFT JOIN pgtrickle.pgt_recommendations r USING (pgt_id)
  WHERE st.pgt_id = pgtrickle.stream_table_id(name)
$$;

-- Every stream table's recommendation, the largest change first.
CREATE FUNCTION pgtrickle.schedule_recommendations()
RETURNS TABLE (stream_table text, current_interval_seconds double precision,
  recommended_interval_seconds double precision, delta_pct double precision, confidence double precision,
  peak_window_cron text, reasoning jsonb, computed_at timestamptz)
LANGUAGE sql STABLE AS $$
  SELECT st.pgt_schema || '.' || st.pgt_name, r.current_interval_seconds, r.recommended_interval_seconds,
    r.delta_pct, coalesce(r.confidence, 0), r.recommendation ->> 'peak_window_cron',
    coalesce(r.recommendation -> 'reasoning', '[]'::jsonb), r.computed_at
  FROM pgtrickle.pgt_stream_tables st
  LEFT JOIN pgtrickle.pgt_recommendations r USING (pgt_id)
  ORDER BY r.delta_pct DESC NULLS LAST, 1
$$;
