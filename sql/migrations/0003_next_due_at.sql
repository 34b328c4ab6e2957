-- When each stream table is next due (DESIGN.md section 11), kept by the engine: set when a refresh commits and when
-- its schedule changes, so a scheduler tick is one indexed query instead of parsing every schedule at every tick.
-- NULL means not scheduled: its schedule no longer parses (last_error says so), or it is still INITIALIZING.
ALTER TABLE pgtrickle.pgt_stream_tables ADD COLUMN next_due_at timestamptz;

-- Stream tables made before this migration are due at the first tick; that refresh sets their real due time.
UPDATE pgtrickle.pgt_stream_tables SET next_due_at = coalesce(last_refresh_at, created_at);

-- The tick: status = 'ACTIVE' AND next_due_at <= now, and status = 'INITIALIZING' (interrupted creations).
CREATE INDEX pgt_stream_tables_due ON pgtrickle.pgt_stream_tables (status, next_due_at);
