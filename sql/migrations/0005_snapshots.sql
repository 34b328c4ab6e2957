-- Snapshots and point-in-time restore of stream tables (docs/SQL_REFERENCE.md, "Snapshots and restore"). These
-- functions ARE the operations: the service's REST calls them, so SQL and REST answer alike. Errors are raised with
-- SQLSTATEs of class PT (engine/snapshots.ts maps each to its error code):
--   PTN01 StreamTableNotFound   PTN02 SnapshotSourceNotFound   PTN03 SnapshotNotFound   PTV01 InvalidName
--   PTC01 SnapshotAlreadyExists PTC02 SnapshotSchemaVersionMismatch PTC03 SnapshotHashMismatch
--   PTC04 SnapshotIncompatible  PTC05 StreamTableBusy
-- Every name is taken apart by parse_ident and put into SQL with format('%I'), never concatenated.

-- Why the next refresh must be FULL (a restore whose changes since its frontier are not retained); cleared by the
-- refresh that commits next.
ALTER TABLE pgtrickle.pgt_stream_tables ADD COLUMN pending_full_reason text;

CREATE TABLE pgtrickle.pgt_snapshots (
  snapshot_id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  snapshot_schema        text NOT NULL,
  snapshot_name          text NOT NULL,
  -- The stream table it was taken of: no foreign key, a snapshot outlives its stream table (recreate).
  pgt_id                 bigint,
  pgt_schema             text NOT NULL,
  pgt_name               text NOT NULL,
  defining_query         text NOT NULL,
  refresh_mode           text NOT NULL,
  schedule               text NOT NULL,
  freshness_deadline_ms  bigint,
  -- md5 of the plan: a restore into a stream table planned otherwise cannot continue differentially.
  plan_version           text NOT NULL,
  -- Every column of the storage, hidden ones included, in order: [{name, type}].
  columns                jsonb NOT NULL,
  frontier               pg_snapshot,
  source_relids          oid[] NOT NULL,
  row_count              bigint NOT NULL,
  -- '<rows>:<sum of hashtextextended(row::text, 0)>': independent of row order.
  content_hash           text NOT NULL,
  size_bytes             bigint NOT NULL,
  catalog_schema_version integer NOT NULL,
  system_identifier      bigint,
  database_name          text NOT NULL,
  -- retained: its sources' change buffers are kept from its frontier on; rows_only: past a retention limit (or
  -- taken without a frontier), a restore from it is followed by a FULL refresh.
  retention_state        text NOT NULL CHECK (retention_state IN ('retained', 'rows_only')),
  rows_only_reason       text,
  created_at             timestamptz NOT NULL DEFAULT now(),
  UNIQUE (snapshot_schema, snapshot_name)
);
CREATE INDEX ON pgtrickle.pgt_snapshots (pgt_schema, pgt_name);

-- The cluster's identity; NULL where this role may not read pg_control_system() (then no restore is differential).
CREATE FUNCTION pgtrickle.system_identifier() RETURNS bigint LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN (SELECT system_identifier FROM pg_control_system());
EXCEPTION WHEN insufficient_privilege THEN
  RETURN NULL;
END
$$;

CREATE FUNCTION pgtrickle.catalog_schema_version() RETURNS integer LANGUAGE sql STABLE AS $$
  SELECT coalesce(max(version), 0) FROM pgtrickle.pgt_schema_version
$$;

-- 'schema.name' or 'name' (schema default_schema) -> {schema, name}; quoting as in SQL ("My Table").
CREATE FUNCTION pgtrickle.split_name(name text, default_schema text, what text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  parts text[];
BEGIN
  BEGIN
    parts := parse_ident(name);
  EXCEPTION WHEN invalid_parameter_value OR invalid_name THEN
    RAISE EXCEPTION USING ERRCODE = 'PTV01', MESSAGE = format('Invalid %s %s: expected an identifier, optionally '
      'qualified as schema.name', what, to_json(name));
  END;
  IF cardinality(parts) = 1 THEN
    RETURN ARRAY[default_schema, parts[1]];
  ELSIF cardinality(parts) = 2 THEN
    RETURN parts;
  END IF;
  RAISE EXCEPTION USING ERRCODE = 'PTV01', MESSAGE = format('Invalid %s %s: expected an identifier, optionally '
    'qualified as schema.name', what, to_json(name));
END
$$;

-- Locks the stream table's catalog row, as a refresh does (engine/refresh/refresh.ts), waiting at most wait_ms.
CREATE FUNCTION pgtrickle.lock_stream_table(st_schema text, st_name text, wait_ms integer)
RETURNS pgtrickle.pgt_stream_tables LANGUAGE plpgsql AS $$
DECLARE
  st pgtrickle.pgt_stream_tables;
  previous text := current_setting('lock_timeout');
BEGIN
  PERFORM set_config('lock_timeout', greatest(wait_ms, 1)::text, true);
  BEGIN
    SELECT * INTO st FROM pgtrickle.pgt_stream_tables WHERE pgt_schema = st_schema AND pgt_name = st_name FOR UPDATE;
  EXCEPTION WHEN lock_not_available THEN
    PERFORM set_config('lock_timeout', previous, true);
    RAISE EXCEPTION USING ERRCODE = 'PTC05',
      MESSAGE = format('Stream table "%s.%s" is being refreshed; it was not free within %s ms', st_schema, st_name,
        wait_ms),
      HINT = 'Retry in a few seconds';
  END;
  PERFORM set_config('lock_timeout', previous, true);
  IF st.pgt_id IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = 'PTN01',
      MESSAGE = format('Stream table "%s.%s" does not exist in database "%s"', st_schema, st_name, current_database());
  END IF;
  RETURN st;
END
$$;

-- Every column of a table (hidden ones included), in order: [{name, type}].
CREATE FUNCTION pgtrickle.table_columns(rel regclass) RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT coalesce(jsonb_agg(jsonb_build_object('name', attname, 'type', format_type(atttypid, atttypmod))
    ORDER BY attnum), '[]'::jsonb)
  FROM pg_attribute WHERE attrelid = rel AND attnum > 0 AND NOT attisdropped
$$;

-- The order-independent content hash of a table: '<rows>:<sum of 64-bit row hashes>'.
CREATE FUNCTION pgtrickle.content_hash(rel regclass) RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
  result text;
BEGIN
  -- rel is a regclass: its text is the server's own quoted name.
  EXECUTE format('SELECT count(*) || '':'' || coalesce(sum(hashtextextended(t::text, 0)), 0) FROM %s t', rel)
    INTO result;
  RETURN result;
END
$$;

-- The changes since a frontier in one source's change buffer (what a snapshot pins there).
CREATE FUNCTION pgtrickle.changes_since(source_relid oid, frontier pg_snapshot) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
  n bigint;
BEGIN
  IF to_regclass(format('pgtrickle_changes.%I', 'changes_' || source_relid)) IS NULL THEN
    RETURN 0;
  END IF;
  EXECUTE format('SELECT count(*) FROM pgtrickle_changes.%I WHERE xid >= pg_snapshot_xmin($1) '
    'AND NOT pg_visible_in_snapshot(xid, $1)', 'changes_' || source_relid) INTO n USING frontier;
  RETURN n;
END
$$;

-- Copies a stream table's rows into an archival table and records them with their frontier.
CREATE FUNCTION pgtrickle.snapshot_stream_table(name text, target text DEFAULT NULL, lock_wait_ms integer DEFAULT 10000)
RETURNS pgtrickle.pgt_snapshots LANGUAGE plpgsql AS $$
DECLARE
  st_name text[] := pgtrickle.split_name(name, 'public', 'stream table name');
  st pgtrickle.pgt_stream_tables;
  tgt text[];
  stamp bigint := floor(extract(epoch FROM clock_timestamp()) * 1000);
  rel regclass;
  n bigint;
  sources oid[];
  state text := 'retained';
  why text;
  snap pgtrickle.pgt_snapshots;
BEGIN
  -- Under the refresh's lock, no refresh can change the rows or the frontier until this transaction ends: the copy
  -- and the frontier below match in any isolation level (REPEATABLE READ makes it one snapshot besides).
  st := pgtrickle.lock_stream_table(st_name[1], st_name[2], lock_wait_ms);
  IF target IS NULL THEN
    -- 63 bytes at most: a long stream table name is cut, the time stamp kept.
    tgt := ARRAY['pgtrickle', 'snapshot_' || left(st.pgt_name, 40) || '_' || stamp];
  ELSE
    tgt := pgtrickle.split_name(target, 'public', 'snapshot target');
    IF tgt[1] IN ('pgtrickle', 'pgtrickle_changes', 'information_schema') OR tgt[1] LIKE 'pg\_%' THEN
      RAISE EXCEPTION USING ERRCODE = 'PTV01', MESSAGE = format('Invalid snapshot target %s: schema "%s" is '
        'reserved (trickle''s pgtrickle and pgtrickle_changes, and PostgreSQL''s information_schema and pg_*); use a '
        'schema of your own', to_json(target), tgt[1]);
    END IF;
    IF octet_length(tgt[2]) > 63 THEN
      RAISE EXCEPTION USING ERRCODE = 'PTV01', MESSAGE = format('Invalid snapshot target %s: longer than 63 bytes',
        to_json(target));
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = tgt[1]) THEN
      RAISE EXCEPTION USING ERRCODE = 'PTV01', MESSAGE = format('Invalid snapshot target %s: schema "%s" does not '
        'exist', to_json(target), tgt[1]);
    END IF;
  END IF;
  IF to_regclass(format('%I.%I', tgt[1], tgt[2])) IS NOT NULL
    OR EXISTS (SELECT 1 FROM pgtrickle.pgt_snapshots WHERE snapshot_schema = tgt[1] AND snapshot_name = tgt[2]) THEN
    RAISE EXCEPTION USING ERRCODE = 'PTC01',
      MESSAGE = format('Snapshot target "%s.%s" already exists; it is never overwritten', tgt[1], tgt[2]);
  END IF;
  EXECUTE format('CREATE TABLE %I.%I AS SELECT * FROM %I.%I', tgt[1], tgt[2], st.pgt_schema, st.pgt_name);
  GET DIAGNOSTICS n = ROW_COUNT;
  rel := format('%I.%I', tgt[1], tgt[2])::regclass;
  SELECT coalesce(array_agg(source_relid ORDER BY source_relid), '{}') INTO sources
  FROM pgtrickle.pgt_dependencies WHERE pgt_id = st.pgt_id;
  IF st.frontier IS NULL THEN
    state := 'rows_only';
    why := 'the stream table had no frontier (its next refresh was FULL)';
  ELSIF st.pending_full_reason IS NOT NULL THEN
    state := 'rows_only';
    why := 'the stream table was waiting for a FULL refresh: ' || st.pending_full_reason;
  END IF;
  INSERT INTO pgtrickle.pgt_snapshots (snapshot_schema, snapshot_name, pgt_id, pgt_schema, pgt_name, defining_query,
    refresh_mode, schedule, freshness_deadline_ms, plan_version, columns, frontier, source_relids, row_count,
    content_hash, size_bytes, catalog_schema_version, system_identifier, database_name, retention_state,
    rows_only_reason)
  VALUES (tgt[1], tgt[2], st.pgt_id, st.pgt_schema, st.pgt_name, st.defining_query, st.refresh_mode, st.schedule,
    st.freshness_deadline_ms, md5(st.plan::text), pgtrickle.table_columns(rel), st.frontier, sources, n,
    pgtrickle.content_hash(rel), pg_total_relation_size(rel), pgtrickle.catalog_schema_version(),
    pgtrickle.system_identifier(), current_database(), state, why)
  RETURNING * INTO snap;
  RETURN snap;
END
$$;

-- Snapshots (of one stream table, or all; or the one named `only_snapshot`), newest first, with their live size and the
-- changes they pin.
CREATE FUNCTION pgtrickle.list_snapshots(name text DEFAULT NULL, only_snapshot text DEFAULT NULL)
RETURNS TABLE (snapshot text, stream_table text, created_at timestamptz, row_count bigint, frontier pg_snapshot,
  size_bytes bigint, retention_state text, rows_only_reason text, pinned_changes bigint, content_hash text,
  catalog_schema_version integer)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  st_name text[] := CASE WHEN name IS NULL THEN NULL ELSE pgtrickle.split_name(name, 'public', 'stream table name') END;
  one text[] := CASE WHEN only_snapshot IS NULL THEN NULL
    ELSE pgtrickle.split_name(only_snapshot, 'pgtrickle', 'snapshot name') END;
BEGIN
  RETURN QUERY
  SELECT s.snapshot_schema || '.' || s.snapshot_name, s.pgt_schema || '.' || s.pgt_name, s.created_at, s.row_count,
    s.frontier,
    coalesce(pg_total_relation_size(to_regclass(format('%I.%I', s.snapshot_schema, s.snapshot_name))), 0)::bigint,
    s.retention_state, s.rows_only_reason,
    CASE WHEN s.retention_state = 'retained' THEN
      (SELECT coalesce(sum(pgtrickle.changes_since(r, s.frontier)), 0)::bigint FROM unnest(s.source_relids) r)
    ELSE 0::bigint END,
    s.content_hash, s.catalog_schema_version
  FROM pgtrickle.pgt_snapshots s
  WHERE (st_name IS NULL OR (s.pgt_schema = st_name[1] AND s.pgt_name = st_name[2]))
    AND (one IS NULL OR (s.snapshot_schema = one[1] AND s.snapshot_name = one[2]))
  ORDER BY s.created_at DESC, s.snapshot_id DESC;
END
$$;

-- Drops a snapshot's table and catalog row; its pin on the change buffers goes with it.
CREATE FUNCTION pgtrickle.drop_snapshot(snapshot text) RETURNS pgtrickle.pgt_snapshots LANGUAGE plpgsql AS $$
DECLARE
  parts text[] := pgtrickle.split_name(snapshot, 'pgtrickle', 'snapshot name');
  snap pgtrickle.pgt_snapshots;
BEGIN
  DELETE FROM pgtrickle.pgt_snapshots WHERE snapshot_schema = parts[1] AND snapshot_name = parts[2]
  RETURNING * INTO snap;
  IF snap.snapshot_id IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = 'PTN03', MESSAGE = format('Snapshot "%s.%s" does not exist', parts[1], parts[2]);
  END IF;
  EXECUTE format('DROP TABLE IF EXISTS %I.%I', parts[1], parts[2]);
  RETURN snap;
END
$$;

-- Marks rows_only the retained snapshots pinning a source's buffer past a retention limit, so it can be pruned.
CREATE FUNCTION pgtrickle.expire_snapshots(source_relid oid, max_age_seconds bigint, max_rows bigint)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  s record;
  pinned bigint;
  expired integer := 0;
BEGIN
  FOR s IN SELECT snapshot_id, frontier, created_at FROM pgtrickle.pgt_snapshots
    WHERE retention_state = 'retained' AND source_relid = ANY(source_relids) ORDER BY snapshot_id FOR UPDATE
  LOOP
    IF s.created_at < now() - make_interval(secs => max_age_seconds) THEN
      UPDATE pgtrickle.pgt_snapshots SET retention_state = 'rows_only',
        rows_only_reason = format('older than the retention limit of %s s (snapshotRetentionMaxAgeSeconds); the '
          'changes since its frontier may be pruned', max_age_seconds)
      WHERE snapshot_id = s.snapshot_id;
      expired := expired + 1;
      CONTINUE;
    END IF;
    pinned := pgtrickle.changes_since(source_relid, s.frontier);
    IF pinned > max_rows THEN
      UPDATE pgtrickle.pgt_snapshots SET retention_state = 'rows_only',
        rows_only_reason = format('%s changes of %s since its frontier, above the retention limit of %s rows '
          '(snapshotRetentionMaxRows); they may be pruned', pinned, source_relid::regclass, max_rows)
      WHERE snapshot_id = s.snapshot_id;
      expired := expired + 1;
    END IF;
  END LOOP;
  RETURN expired;
END
$$;

-- Replaces a stream table's rows with a snapshot's and sets its frontier to the snapshot's, in this transaction.
CREATE FUNCTION pgtrickle.restore_from_snapshot(name text, source text, verify boolean DEFAULT true,
  lock_wait_ms integer DEFAULT 10000)
RETURNS TABLE (stream_table text, snapshot text, rows_restored bigint, frontier pg_snapshot, next_refresh text,
  reason text)
LANGUAGE plpgsql AS $$
DECLARE
  st_name text[] := pgtrickle.split_name(name, 'public', 'stream table name');
  src text[] := pgtrickle.split_name(source, 'pgtrickle', 'snapshot name');
  st pgtrickle.pgt_stream_tables;
  snap pgtrickle.pgt_snapshots;
  rel regclass;
  current_version integer := pgtrickle.catalog_schema_version();
  this_cluster bigint := pgtrickle.system_identifier();
  found_hash text;
  why text;
  n bigint;
  index_defs text[];
  index_names text[];
  def text;
BEGIN
  st := pgtrickle.lock_stream_table(st_name[1], st_name[2], lock_wait_ms);
  -- FOR SHARE: a prune expiring this snapshot waits for this restore, then sees the restored frontier (cdc.ts).
  SELECT * INTO snap FROM pgtrickle.pgt_snapshots s WHERE s.snapshot_schema = src[1] AND s.snapshot_name = src[2]
    FOR SHARE;
  rel := to_regclass(format('%I.%I', src[1], src[2]));
  IF snap.snapshot_id IS NULL OR rel IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = 'PTN02', MESSAGE = format('Snapshot "%s.%s" does not exist%s', src[1], src[2],
      CASE WHEN snap.snapshot_id IS NULL THEN '' ELSE ' (its catalog row does, its table was dropped)' END);
  END IF;
  IF snap.catalog_schema_version <> current_version THEN
    RAISE EXCEPTION USING ERRCODE = 'PTC02', MESSAGE = format('Cannot restore "%s.%s": snapshot "%s.%s" was taken at '
      'catalog schema version %s, this database is at %s', st.pgt_schema, st.pgt_name, src[1], src[2],
      snap.catalog_schema_version, current_version);
  END IF;
  IF pgtrickle.table_columns(format('%I.%I', st.pgt_schema, st.pgt_name)::regclass) <> snap.columns THEN
    RAISE EXCEPTION USING ERRCODE = 'PTC04', MESSAGE = format('Cannot restore "%s.%s" from snapshot "%s.%s": the '
      'stream table has columns %s, the snapshot %s', st.pgt_schema, st.pgt_name, src[1], src[2],
      pgtrickle.table_columns(format('%I.%I', st.pgt_schema, st.pgt_name)::regclass), snap.columns);
  END IF;
  IF pgtrickle.table_columns(rel) <> snap.columns THEN
    RAISE EXCEPTION USING ERRCODE = 'PTC03', MESSAGE = format('Snapshot "%s.%s" was changed since it was taken: its '
      'table has columns %s, recorded %s', src[1], src[2], pgtrickle.table_columns(rel), snap.columns);
  END IF;
  IF verify THEN
    found_hash := pgtrickle.content_hash(rel);
    IF found_hash <> snap.content_hash THEN
      RAISE EXCEPTION USING ERRCODE = 'PTC03', MESSAGE = format('Snapshot "%s.%s" was changed since it was taken: '
        'content hash %s, recorded %s; nothing was restored', src[1], src[2], found_hash, snap.content_hash);
    END IF;
  END IF;
  -- The changes since the snapshot's frontier must all still be in this database's buffers for a DIFFERENTIAL
  -- refresh to continue from it; otherwise the rows are restored and the next refresh recomputes.
  IF snap.retention_state <> 'retained' THEN
    why := format('snapshot "%s.%s" is rows_only: %s', src[1], src[2], snap.rows_only_reason);
  ELSIF this_cluster IS NULL OR snap.system_identifier IS DISTINCT FROM this_cluster THEN
    why := format('snapshot "%s.%s" was taken on another cluster (system identifier %s, this cluster %s)', src[1],
      src[2], coalesce(snap.system_identifier::text, 'unknown'), coalesce(this_cluster::text, 'unknown'));
  ELSIF snap.database_name <> current_database() THEN
    why := format('snapshot "%s.%s" was taken in database "%s"', src[1], src[2], snap.database_name);
  ELSIF snap.defining_query <> st.defining_query THEN
    why := format('snapshot "%s.%s" was taken of another defining query', src[1], src[2]);
  ELSIF snap.plan_version <> md5(st.plan::text) THEN
    why := format('the stream table was planned otherwise than when snapshot "%s.%s" was taken', src[1], src[2]);
  ELSIF EXISTS (
    SELECT 1 FROM pgtrickle.pgt_dependencies d
    LEFT JOIN pgtrickle.pgt_change_buffers b ON b.source_relid = d.source_relid
    WHERE d.pgt_id = st.pgt_id AND (NOT d.source_relid = ANY(snap.source_relids) OR b.source_relid IS NULL
      OR b.created_at > snap.created_at)) THEN
    why := format('the change capture of a source was reinstalled or changed since snapshot "%s.%s"', src[1], src[2]);
  END IF;
  -- TRUNCATE: a new file, so a rollback or a crash keeps the old rows whole, and no dead rows are left behind. As
  -- pg_restore does, indexes are built after the rows are in (one sort instead of a million insertions); those that
  -- back a constraint stay and are maintained as rows go in.
  EXECUTE format('TRUNCATE %I.%I', st.pgt_schema, st.pgt_name);
  SELECT coalesce(array_agg(pg_get_indexdef(i.indexrelid) ORDER BY i.indexrelid), '{}'),
    coalesce(array_agg(i.indexrelid::regclass::text ORDER BY i.indexrelid), '{}')
  INTO index_defs, index_names
  FROM pg_index i WHERE i.indrelid = format('%I.%I', st.pgt_schema, st.pgt_name)::regclass
    AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid);
  FOREACH def IN ARRAY index_names LOOP
    -- regclass text: the server's own quoted name of the index.
    EXECUTE 'DROP INDEX ' || def;
  END LOOP;
  EXECUTE format('INSERT INTO %I.%I SELECT * FROM %s', st.pgt_schema, st.pgt_name, rel);
  GET DIAGNOSTICS n = ROW_COUNT;
  FOREACH def IN ARRAY index_defs LOOP
    -- pg_get_indexdef: the server's own definition of the index just dropped.
    EXECUTE def;
  END LOOP;
  UPDATE pgtrickle.pgt_stream_tables SET
    frontier = CASE WHEN why IS NULL THEN snap.frontier END,
    pending_full_reason = why,
    row_count = n,
    status = CASE WHEN status = 'INITIALIZING' THEN 'ACTIVE' ELSE status END,
    -- Due now: the sooner it catches up, the better.
    next_due_at = now(),
    updated_at = now()
  WHERE pgt_id = st.pgt_id;
  RETURN QUERY SELECT st.pgt_schema || '.' || st.pgt_name, src[1] || '.' || src[2], n,
    CASE WHEN why IS NULL THEN snap.frontier END,
    CASE WHEN why IS NULL AND st.effective_refresh_mode = 'DIFFERENTIAL' THEN 'DIFFERENTIAL' ELSE 'FULL' END,
    coalesce(why, CASE WHEN st.effective_refresh_mode = 'FULL' THEN 'refresh mode FULL' END);
END
$$;
