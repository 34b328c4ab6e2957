-- Snapshots across upgrades (docs/RELEASING.md). A snapshot records the catalog schema version it was taken at, and
-- restore_from_snapshot (0005) refused every other one, so any upgrade of the catalog made every earlier snapshot
-- useless, whether or not it changed anything a snapshot depends on. A restore now accepts a snapshot taken at any
-- schema version from snapshot_format_version() up to this database's: across those migrations a snapshot's rows (their
-- columns are checked on their own), its frontier and the change buffers it pins mean the same. A migration that
-- changes that meaning redefines snapshot_format_version() to return its own number; snapshots taken before it are
-- then refused with SnapshotSchemaVersionMismatch (PTC02), as before. restore_from_snapshot below is 0005's with only
-- that check changed.

-- The first catalog schema version whose snapshots this catalog restores: 5, the migration that introduced them.
CREATE FUNCTION pgtrickle.snapshot_format_version() RETURNS integer LANGUAGE sql STABLE AS $$
  SELECT 5
$$;

-- Replaces a stream table's rows with a snapshot's and sets its frontier to the snapshot's, in this transaction.
CREATE OR REPLACE FUNCTION pgtrickle.restore_from_snapshot(name text, source text, verify boolean DEFAULT true,
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
  format_version integer := pgtrickle.snapshot_format_version();
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
  IF snap.catalog_schema_version NOT BETWEEN format_version AND current_version THEN
    RAISE EXCEPTION USING ERRCODE = 'PTC02', MESSAGE = format('Cannot restore "%s.%s": snapshot "%s.%s" was taken at '
      'catalog schema version %s, this database is at %s and restores snapshots taken at %s to %s',
      st.pgt_schema, st.pgt_name, src[1], src[2], snap.catalog_schema_version, current_version, format_version,
      current_version);
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
