-- Cluster observability (docs/SQL_REFERENCE.md, "Cluster observability"). The worker state of every service instance
-- is kept as the application_name of connections to one coordination database (engine/scheduler/pool.ts):
--
--   trickle:<pid>:instance:<max_workers>:<per_database_quota>:<databases managed>   one per instance
--   trickle:<pid>:lead:<db_oid>:<queued>:<oldest queued, epoch ms>                   one per database it leads
--   trickle:<pid>:run:<db_oid>:<pgt_id>                                              one per running refresh
--
-- pg_stat_activity is cluster-wide, so these functions read the same markers from any managed database: no query
-- crosses databases. The service's REST answers call these functions, so SQL and REST give the same numbers.

-- The markers of one coordination group, parsed. With no argument, the group is the one whose leader marker names the
-- current database (found in whichever database it lives), so the functions need no setting; no leader: no rows.
CREATE FUNCTION pgtrickle.cluster_markers(coordination_database text DEFAULT NULL)
RETURNS TABLE (instance text, kind text, db_oid bigint, n1 bigint, n2 bigint, n3 bigint)
LANGUAGE sql STABLE AS $$
  WITH here AS (
    SELECT oid::bigint AS oid FROM pg_database WHERE datname = current_database()
  ), coord AS (
    SELECT coalesce(coordination_database, (
      SELECT a.datname::text FROM pg_stat_activity a, here
      WHERE a.application_name ~ ('^trickle:[0-9]+:(lead|run):' || here.oid || ':')
      ORDER BY a.application_name ~ ':lead:' DESC, a.backend_start
      LIMIT 1)) AS datname
  ), parsed AS (
    SELECT m[1] AS instance, m[2] AS kind, string_to_array(m[3], ':') AS f
    FROM pg_stat_activity a, coord,
      LATERAL regexp_match(a.application_name, '^(trickle:[0-9]+):(instance|lead|run):([0-9:]*)$') AS m
    WHERE a.datname = coord.datname AND m IS NOT NULL
  )
  SELECT instance, kind,
    CASE WHEN kind = 'instance' THEN NULL ELSE nullif(f[1], '')::bigint END,
    nullif(f[CASE WHEN kind = 'instance' THEN 1 ELSE 2 END], '')::bigint,
    nullif(f[CASE WHEN kind = 'instance' THEN 2 ELSE 3 END], '')::bigint,
    nullif(f[CASE WHEN kind = 'instance' THEN 3 ELSE 4 END], '')::bigint
  FROM parsed
$$;
COMMENT ON FUNCTION pgtrickle.cluster_markers(text) IS
  'The worker markers of the service instances coordinating in one database (internal to the cluster functions)';

-- The settings the cluster runs with, and the quota that follows from them: per_database_quota when set (capped at
-- max_workers), else the fair share ceil(max_workers / databases). Instances should agree; the largest is taken.
-- The pool's admission (engine/scheduler/pool.ts) computes the quota from the same markers with the same formula.
CREATE FUNCTION pgtrickle.cluster_worker_totals(coordination_database text DEFAULT NULL)
RETURNS TABLE (
  databases integer, instances integer, max_workers integer, per_database_quota integer, quota integer,
  workers_active integer, workers_queued integer, utilization_pct numeric
)
LANGUAGE sql STABLE AS $$
  WITH m AS (SELECT * FROM pgtrickle.cluster_markers(coordination_database)),
  s AS (
    SELECT count(*)::int AS instances, max(n1)::int AS max_workers, coalesce(max(n2), 0)::int AS pdq,
      coalesce(max(n3), 0)::int AS managed
    FROM m WHERE kind = 'instance'
  ), d AS (
    SELECT count(DISTINCT db_oid)::int AS n FROM m WHERE kind IN ('lead', 'run')
  ), w AS (
    SELECT count(*) FILTER (WHERE kind = 'run')::int AS active,
      coalesce(sum(n1) FILTER (WHERE kind = 'lead'), 0)::int AS queued
    FROM m
  )
  SELECT greatest(d.n, s.managed), s.instances, s.max_workers, s.pdq,
    CASE WHEN s.pdq > 0 THEN least(s.pdq, s.max_workers)
      ELSE ceil(s.max_workers::numeric / greatest(1, d.n, s.managed))::int END,
    w.active, w.queued,
    CASE WHEN s.max_workers > 0 THEN round(100.0 * w.active / s.max_workers, 1) END
  FROM s, d, w
$$;
COMMENT ON FUNCTION pgtrickle.cluster_worker_totals(text) IS
  'Cluster totals: databases, instances, max_workers, the per-database quota, workers active and queued';

-- One row per database led or worked for in the cluster: its workers now, its queue, its quota, who leads it.
CREATE FUNCTION pgtrickle.cluster_worker_summary(coordination_database text DEFAULT NULL)
RETURNS TABLE (
  db_oid bigint, db_name text, workers_active integer, workers_queued integer, quota integer,
  quota_utilization_pct numeric, oldest_queued_wait_ms bigint, leader text
)
LANGUAGE sql STABLE AS $$
  WITH m AS (SELECT * FROM pgtrickle.cluster_markers(coordination_database)),
  t AS (SELECT * FROM pgtrickle.cluster_worker_totals(coordination_database)),
  lead AS (
    SELECT DISTINCT ON (db_oid) db_oid, instance, n1 AS queued, n2 AS oldest FROM m WHERE kind = 'lead'
    ORDER BY db_oid, instance
  ), run AS (
    SELECT db_oid, count(*)::int AS active FROM m WHERE kind = 'run' GROUP BY db_oid
  ), dbs AS (
    SELECT db_oid FROM lead UNION SELECT db_oid FROM run
  )
  SELECT dbs.db_oid, p.datname::text, coalesce(run.active, 0), coalesce(lead.queued, 0)::int, t.quota,
    CASE WHEN t.quota > 0 THEN round(100.0 * coalesce(run.active, 0) / t.quota, 1) END,
    CASE WHEN lead.oldest > 0
      THEN greatest(0, (extract(epoch FROM clock_timestamp()) * 1000)::bigint - lead.oldest) END,
    lead.instance
  FROM dbs JOIN pg_database p ON p.oid = dbs.db_oid::oid
  CROSS JOIN t
  LEFT JOIN lead ON lead.db_oid = dbs.db_oid
  LEFT JOIN run ON run.db_oid = dbs.db_oid
  ORDER BY p.datname
$$;
COMMENT ON FUNCTION pgtrickle.cluster_worker_summary(text) IS
  'Per database of the cluster: workers active and queued, quota, quota use, oldest queued wait, leading instance';

-- The instances of the cluster with their settings.
CREATE FUNCTION pgtrickle.cluster_instances(coordination_database text DEFAULT NULL)
RETURNS TABLE (instance text, max_workers integer, per_database_quota integer, databases integer)
LANGUAGE sql STABLE AS $$
  SELECT instance, n1::int, coalesce(n2, 0)::int, coalesce(n3, 0)::int
  FROM pgtrickle.cluster_markers(coordination_database) WHERE kind = 'instance' ORDER BY instance
$$;
COMMENT ON FUNCTION pgtrickle.cluster_instances(text) IS 'The service instances of the cluster and their settings';

-- This database's stream tables and refreshes, with its workers from the cluster summary. Refresh counts are "since
-- history began": the rows of pgt_refresh_history, kept history_retention_days (history_since says from when); the
-- per-process counters are /metrics's. rows_processed = rows inserted + deleted by successful refreshes. Lag = time
-- since the last refresh of an ACTIVE or ERROR stream table (SUSPENDED ones are stale on purpose).
CREATE FUNCTION pgtrickle.metrics_summary(coordination_database text DEFAULT NULL)
RETURNS TABLE (
  db_oid bigint, db_name text,
  stream_tables integer, active integer, initializing integer, suspended integer, error integer,
  refreshes_total bigint, refreshes_failed_total bigint, refreshes_last_hour bigint, refreshes_failed_last_hour bigint,
  rows_processed_total bigint, rows_processed_last_hour bigint, history_since timestamptz,
  workers_active integer, workers_queued integer, quota integer, quota_utilization_pct numeric,
  stalest_stream_table text, stalest_lag_ms bigint
)
LANGUAGE sql STABLE AS $$
  WITH here AS (
    SELECT oid::bigint AS oid, datname::text AS name FROM pg_database WHERE datname = current_database()
  ), st AS (
    SELECT count(*)::int AS n,
      count(*) FILTER (WHERE status = 'ACTIVE')::int AS active,
      count(*) FILTER (WHERE status = 'INITIALIZING')::int AS initializing,
      count(*) FILTER (WHERE status = 'SUSPENDED')::int AS suspended,
      count(*) FILTER (WHERE status = 'ERROR')::int AS error
    FROM pgtrickle.pgt_stream_tables
  ), h AS (
    SELECT count(*) AS total,
      count(*) FILTER (WHERE status = 'FAILED') AS failed,
      count(*) FILTER (WHERE started_at > now() - interval '1 hour') AS hour,
      count(*) FILTER (WHERE status = 'FAILED' AND started_at > now() - interval '1 hour') AS failed_hour,
      coalesce(sum(rows_inserted + rows_deleted) FILTER (WHERE status = 'SUCCESS'), 0)::bigint AS rows_total,
      coalesce(sum(rows_inserted + rows_deleted)
        FILTER (WHERE status = 'SUCCESS' AND started_at > now() - interval '1 hour'), 0)::bigint AS rows_hour,
      min(started_at) AS since
    FROM pgtrickle.pgt_refresh_history
  ), stalest AS (
    SELECT format('%s.%s', pgt_schema, pgt_name) AS name,
      (extract(epoch FROM now() - coalesce(last_refresh_at, created_at)) * 1000)::bigint AS lag_ms
    FROM pgtrickle.pgt_stream_tables WHERE status IN ('ACTIVE', 'ERROR')
    ORDER BY coalesce(last_refresh_at, created_at), pgt_id LIMIT 1
  ), w AS (
    SELECT s.* FROM pgtrickle.cluster_worker_summary(coordination_database) s, here WHERE s.db_oid = here.oid
  ), t AS (SELECT quota FROM pgtrickle.cluster_worker_totals(coordination_database))
  SELECT here.oid, here.name, st.n, st.active, st.initializing, st.suspended, st.error,
    h.total, h.failed, h.hour, h.failed_hour, h.rows_total, h.rows_hour, h.since,
    coalesce(w.workers_active, 0), coalesce(w.workers_queued, 0), coalesce(w.quota, t.quota),
    coalesce(w.quota_utilization_pct, CASE WHEN t.quota > 0 THEN 0.0 END),
    stalest.name, stalest.lag_ms
  FROM here CROSS JOIN st CROSS JOIN h LEFT JOIN stalest ON true LEFT JOIN w ON true LEFT JOIN t ON true
$$;
COMMENT ON FUNCTION pgtrickle.metrics_summary(text) IS
  'This database: stream tables by status, refreshes and failures (retained history, last hour), rows processed, '
  'workers, the stalest stream table and its lag';
