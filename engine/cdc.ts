/**
 * Change capture (docs/architecture.md, change capture). Each source table gets statement-level AFTER triggers with transition
 * tables that append to one buffer per source, `pgtrickle_changes.changes_<relid>`, shared by every stream table
 * reading it: `xid` (the writing transaction, xid8), `action` ('I', 'D', 'T' for TRUNCATE) and the source's columns.
 * An UPDATE is a 'D' of the old row and an 'I' of the new one.
 *
 * `change_id` orders changes: one number per capturing statement (a sequence value taken once per trigger call, not
 * per row: that is most of capture's cost), and within a statement an UPDATE's 'D' sorts before its 'I'. Changes to
 * one key are ordered by (change_id, action): writers of the same row are serialised by its row lock, and a later
 * statement draws a later number.
 *
 * The delta of a refresh with snapshot S since frontier F is the buffer rows visible in S whose xid is not visible
 * in F (`deltaFilter`). Buffers are pruned below the oldest frontier xmin of every consumer, so they hold about the
 * changes since the slowest reader's last refresh. They have no index: reading one is a sequential scan of that
 * much, while an index would cost every captured row (a btree on xid made a 100k-row UPDATE 2.3 times slower than
 * untracked, a BRIN 2.1 times; without index it is 1.6 times; see `deno task bench`).
 */
import type { Tx } from "../db/pool.ts";
import { quoteIdent, quoteLiteral } from "../db/identifiers.ts";
import type { SourceRef } from "./plan.ts";

/** Advisory lock class for capture installation on one source (arbitrary, fixed). */
const CAPTURE_LOCK = 7_417_002;
/** The capture function this module writes (pgt_change_buffers.capture_version): 2 maps columns by position. */
export const CAPTURE_VERSION = 2;

/**
 * The SQL condition selecting a buffer's rows not visible in the frontier bound to `param` (a pg_snapshot): the
 * delta, as seen by the reading transaction's snapshot.
 */
export function deltaFilter(param = "$1"): string {
  return `xid >= pg_snapshot_xmin(${param}::pg_snapshot) AND NOT pg_visible_in_snapshot(xid, ${param}::pg_snapshot)`;
}

/** A table's name as the server renders regclass: schema-qualified where needed, quoted where needed. */
export async function tableName(tx: Tx, relid: number): Promise<string> {
  const [row] = await tx<{ q: string }[]>`SELECT ${relid}::oid::regclass::text AS q`;
  return row!.q;
}

/** Fully qualified, quoted name of a source's change buffer. */
export function bufferName(relid: number): string {
  return `pgtrickle_changes.${quoteIdent(`changes_${relid}`)}`;
}

/** A buffer column and the source column it is filled from, by attnum (null once that column is gone or retyped). */
export interface CapturedColumn {
  name: string;
  type: string;
  attnum: number | null;
}

/** A live column of a source table. */
export interface SourceColumn {
  attnum: number;
  name: string;
  type: string;
}

/** Prefix of buffer columns whose source column was dropped or retyped: kept for their past rows, no longer filled. */
const STALE = "__pgt_stale_";

/** The live columns of a table, in attnum order. */
export async function sourceColumns(tx: Tx, relid: number): Promise<SourceColumn[]> {
  return [
    ...await tx<SourceColumn[]>`
    SELECT attnum::int AS attnum, attname AS name, format_type(atttypid, atttypmod) AS type FROM pg_attribute
    WHERE attrelid = ${relid} AND attnum > 0 AND NOT attisdropped ORDER BY attnum`,
  ];
}

/**
 * Installs change capture on `source`, or brings it up to date with the source's columns. Must run in its own
 * committed transaction before the first refresh reads the source: CREATE TRIGGER waits for writers in flight, so
 * every change committed after that refresh's snapshot is in the buffer.
 */
export async function installCapture(tx: Tx, source: SourceRef): Promise<boolean> {
  return await syncCapture(tx, source.relid);
}

/**
 * Makes a source's capture match its current columns: creates the buffer, sequence and triggers the first time;
 * afterwards renames buffer columns after renamed source columns, adds buffer columns for added ones, and sets
 * aside those whose source column is gone. Returns whether the buffer was created or changed.
 *
 * The capture function maps transition-table columns to buffer columns by position (a column alias list over the
 * source's live columns, in attnum order, and an INSERT without a column list), so a rename, which moves nothing,
 * never breaks a write, and neither does an added column (it comes after the aliased ones). A guard view over the
 * captured columns makes PostgreSQL refuse to drop or retype them, or to drop the source, which would move the
 * positions. Should the guard be gone anyway (DROP ... CASCADE), the function records a TRUNCATE instead of rows,
 * so no reader applies a delta across the gap, and the reader's next refresh names the change (source_check.ts).
 */
export async function syncCapture(tx: Tx, relid: number): Promise<boolean> {
  await tx`SELECT pg_advisory_xact_lock(${CAPTURE_LOCK}, ${relid}::int4)`;
  const [rel] = await tx<{ schema: string; name: string }[]>`
    SELECT n.nspname AS schema, c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = ${relid}`;
  if (rel === undefined) throw new Error(`Cannot capture changes of table ${relid}: it does not exist`);
  // FOR UPDATE: in a refresh (REPEATABLE READ) that started before another sync committed, this fails as a
  // serialization failure, and the refresh is retried with a snapshot that sees the buffer as it now is.
  const [existing] = await tx<{ columns: CapturedColumn[] }[]>`
    SELECT columns FROM pgtrickle.pgt_change_buffers WHERE source_relid = ${relid} FOR UPDATE`;
  const current = await sourceColumns(tx, relid);
  const buffer = bufferName(relid);
  const table = `${quoteIdent(rel.schema)}.${quoteIdent(rel.name)}`;
  // Everything below is built from catalog names, types and numbers, each quoted; nothing comes from a request.
  let captured: CapturedColumn[];
  let changed = true;
  if (existing === undefined) {
    captured = current.map((c) => ({ ...c }));
    const colDefs = captured.map((c) => `,\n      ${quoteIdent(c.name)} ${c.type}`).join("");
    await tx.unsafe(`
      CREATE TABLE ${buffer} (
        change_id bigint NOT NULL,
        xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
        action char(1) NOT NULL${colDefs}
      ) WITH (autovacuum_vacuum_scale_factor = 0.01);
      CREATE SEQUENCE ${sequenceName(relid)} OWNED BY ${buffer}.change_id;`);
    await tx`INSERT INTO pgtrickle.pgt_change_buffers (source_relid, source_schema, source_name, columns,
        capture_version)
      VALUES (${relid}, ${rel.schema}, ${rel.name}, ${tx.json(captured as never)}, ${CAPTURE_VERSION})`;
  } else {
    const before = existing.columns;
    captured = reconcileColumns(before, current);
    const renamed = before.flatMap((c, i) => c.name !== captured[i]!.name ? [i] : []);
    const added = captured.slice(before.length);
    changed = renamed.length > 0 || added.length > 0;
    // Two steps through names of their own, so that swapped names never collide.
    const tmp = (i: number) => quoteIdent(`__pgt_tmp_${i}`);
    const ddl = [
      ...renamed.map((i) => `ALTER TABLE ${buffer} RENAME COLUMN ${quoteIdent(before[i]!.name)} TO ${tmp(i)};`),
      ...renamed.map((i) => `ALTER TABLE ${buffer} RENAME COLUMN ${tmp(i)} TO ${quoteIdent(captured[i]!.name)};`),
      ...added.map((c) => `ALTER TABLE ${buffer} ADD COLUMN ${quoteIdent(c.name)} ${c.type};`),
    ];
    if (ddl.length > 0) await tx.unsafe(ddl.join("\n"));
    await tx`UPDATE pgtrickle.pgt_change_buffers
      SET columns = ${tx.json(captured as never)}, source_schema = ${rel.schema}, source_name = ${rel.name},
        capture_version = ${CAPTURE_VERSION}
      WHERE source_relid = ${relid}`;
  }
  await writeCaptureFunction(tx, { relid, buffer, captured, current });
  await writeGuard(tx, { relid, table, current });
  if (existing === undefined) {
    const fn = captureFunction(relid);
    await tx.unsafe(`
      CREATE TRIGGER pgt_capture_ins AFTER INSERT ON ${table}
        REFERENCING NEW TABLE AS pgt_new FOR EACH STATEMENT EXECUTE FUNCTION ${fn}();
      CREATE TRIGGER pgt_capture_upd AFTER UPDATE ON ${table}
        REFERENCING OLD TABLE AS pgt_old NEW TABLE AS pgt_new FOR EACH STATEMENT EXECUTE FUNCTION ${fn}();
      CREATE TRIGGER pgt_capture_del AFTER DELETE ON ${table}
        REFERENCING OLD TABLE AS pgt_old FOR EACH STATEMENT EXECUTE FUNCTION ${fn}();
      CREATE TRIGGER pgt_capture_trunc AFTER TRUNCATE ON ${table}
        FOR EACH STATEMENT EXECUTE FUNCTION ${fn}();`);
  }
  return changed;
}

/**
 * The buffer's columns after a source change, in buffer order: a captured column still there with its type takes its
 * current name; one dropped or retyped is set aside (renamed, attnum null); live columns not yet captured are added.
 */
export function reconcileColumns(old: CapturedColumn[], current: SourceColumn[]): CapturedColumn[] {
  const live = new Map(current.map((c) => [c.attnum, c]));
  const next = old.map((c, i): CapturedColumn => {
    const now = c.attnum === null ? undefined : live.get(c.attnum);
    if (now !== undefined && now.type === c.type) return { name: now.name, type: c.type, attnum: c.attnum };
    return { name: c.name.startsWith(STALE) ? c.name : `${STALE}${i + 1}`, type: c.type, attnum: null };
  });
  const kept = new Set(next.map((c) => c.attnum));
  for (const c of current) if (!kept.has(c.attnum)) next.push({ ...c });
  return next;
}

/** Alias of a source column inside the capture function and the guard: its attnum, never its own name. */
function positional(attnum: number): string {
  return quoteIdent(`__pgt_a${attnum}`);
}

async function writeCaptureFunction(
  tx: Tx,
  c: { relid: number; buffer: string; captured: CapturedColumn[]; current: SourceColumn[] },
): Promise<void> {
  const aliases = c.current.length === 0 ? "" : `(${c.current.map((s) => positional(s.attnum)).join(", ")})`;
  const values = c.captured.map((col) => col.attnum === null ? `, NULL::${col.type}` : `, ${positional(col.attnum)}`)
    .join("");
  const rows = (action: string, transition: string) =>
    `SELECT stmt, xid, ${quoteLiteral(action)}${values} FROM ${transition} AS t${aliases}`;
  const into = `INSERT INTO ${c.buffer}`;
  await tx.unsafe(`
    CREATE OR REPLACE FUNCTION ${captureFunction(c.relid)}() RETURNS trigger LANGUAGE plpgsql AS $body$
    -- A column added to the source later and named like a variable must not make the statements ambiguous.
    #variable_conflict use_variable
    DECLARE
      stmt bigint := nextval(${quoteLiteral(sequenceName(c.relid))});
      xid xid8 := pg_current_xact_id();
    BEGIN
      IF to_regclass(${quoteLiteral(guardView(c.relid))}) IS NULL THEN
        -- Without the guard the positions below may have moved: make every reader recompute instead.
        INSERT INTO ${c.buffer} (change_id, action) VALUES (stmt, 'T');
      ELSIF TG_OP = 'INSERT' THEN
        ${into} ${rows("I", "pgt_new")};
      ELSIF TG_OP = 'UPDATE' THEN
        ${into} ${rows("D", "pgt_old")} UNION ALL ${rows("I", "pgt_new")};
      ELSIF TG_OP = 'DELETE' THEN
        ${into} ${rows("D", "pgt_old")};
      ELSE
        INSERT INTO ${c.buffer} (change_id, action) VALUES (stmt, 'T');
      END IF;
      RETURN NULL;
    END
    $body$;`);
}

/** (Re)creates the guard view over the source's live columns; kept (same oid) when columns were only added. */
async function writeGuard(tx: Tx, g: { relid: number; table: string; current: SourceColumn[] }): Promise<void> {
  const view = guardView(g.relid);
  const names = g.current.map((c) => `__pgt_a${c.attnum}`);
  const [old] = await tx<{ cols: string[] }[]>`
    SELECT coalesce(array_agg(attname::text ORDER BY attnum), '{}') AS cols FROM pg_attribute
    WHERE attrelid = to_regclass(${view}) AND attnum > 0`;
  const extendsOld = old!.cols.length > 0 && old!.cols.every((n, i) => names[i] === n);
  const select = g.current.length === 0
    ? `1 AS "__pgt_none"`
    : g.current.map((c) => `${quoteIdent(c.name)} AS ${positional(c.attnum)}`).join(", ");
  await tx.unsafe(`${extendsOld ? "" : `DROP VIEW IF EXISTS ${view};`}
    CREATE OR REPLACE VIEW ${view} AS SELECT ${select} FROM ${g.table};`);
}

function captureFunction(relid: number): string {
  return `pgtrickle_changes.${quoteIdent(`capture_${relid}`)}`;
}

function sequenceName(relid: number): string {
  return `pgtrickle_changes.${quoteIdent(`changes_${relid}_seq`)}`;
}

/** The guard view of a source's capture (see syncCapture). */
export function guardView(relid: number): string {
  return `pgtrickle_changes.${quoteIdent(`guard_${relid}`)}`;
}

/**
 * Removes capture from a source that no stream table reads any more (the source itself may be gone), and that no
 * retained snapshot pins: a stream table recreated from that snapshot continues from its buffer.
 */
export async function removeCaptureIfUnused(tx: Tx, relid: number): Promise<boolean> {
  await tx`SELECT pg_advisory_xact_lock(${CAPTURE_LOCK}, ${relid}::int4)`;
  const [used] = await tx`SELECT 1 FROM pgtrickle.pgt_dependencies WHERE source_relid = ${relid}
    UNION ALL SELECT 1 FROM pgtrickle.pgt_snapshots WHERE retention_state = 'retained'
      AND ${relid}::oid = ANY(source_relids)
    LIMIT 1`;
  if (used !== undefined) return false;
  const [buf] = await tx<{ schema: string; name: string }[]>`
    SELECT source_schema AS schema, source_name AS name FROM pgtrickle.pgt_change_buffers WHERE source_relid = ${relid}`;
  if (buf === undefined) return false;
  const [rel] = await tx`SELECT 1 FROM pg_class WHERE oid = ${relid}`;
  const fn = captureFunction(relid);
  if (rel !== undefined) {
    const table = await tableName(tx, relid);
    await tx.unsafe(`
      DROP TRIGGER IF EXISTS pgt_capture_ins ON ${table};
      DROP TRIGGER IF EXISTS pgt_capture_upd ON ${table};
      DROP TRIGGER IF EXISTS pgt_capture_del ON ${table};
      DROP TRIGGER IF EXISTS pgt_capture_trunc ON ${table};`);
  }
  await tx.unsafe(`DROP VIEW IF EXISTS ${guardView(relid)};
    DROP FUNCTION IF EXISTS ${fn}() CASCADE;
    DROP TABLE IF EXISTS ${bufferName(relid)};`);
  await tx`DELETE FROM pgtrickle.pgt_change_buffers WHERE source_relid = ${relid}`;
  return true;
}

export interface DeltaStats {
  rows: number;
  truncated: boolean;
}

/**
 * Counts the delta of one source since a frontier, as seen by the transaction's snapshot: `frontier` as pg_snapshot
 * text, or `{ of: pgtId }` for that stream table's frontier read in the same statement (so a refresh can send the
 * count with its lock, before it has read the frontier).
 */
export async function deltaStats(tx: Tx, relid: number, frontier: string | { of: number }): Promise<DeltaStats> {
  const since = typeof frontier === "string"
    ? { param: "$1", value: frontier as string | number }
    : { param: "(SELECT frontier FROM pgtrickle.pgt_stream_tables WHERE pgt_id = $1)", value: frontier.of };
  // bufferName is built from an integer oid and quoted; the frontier or the stream table's id is a bind parameter.
  const [row] = await tx.unsafe<{ rows: number; truncated: boolean }[]>(
    `SELECT count(*)::int8 AS rows, coalesce(bool_or(action = 'T'), false) AS truncated FROM ${bufferName(relid)}
     WHERE ${deltaFilter(since.param)}`,
    [since.value],
  );
  return { rows: Number(row!.rows), truncated: row!.truncated };
}

/** How long and over how many buffered changes a retained snapshot pins a buffer (config.ts). */
export interface SnapshotRetention {
  snapshotRetentionMaxAgeSeconds: number;
  snapshotRetentionMaxRows: number;
}

/**
 * Deletes buffer rows no consumer needs: those whose transaction is visible in the frontier of every stream table
 * reading the source and of every retained snapshot of one (a later frontier sees all an earlier one does, so no
 * delta will ever contain them again). A consumer without a frontier yet pins everything. Snapshots past a retention
 * limit are first marked rows_only, and pin nothing more. Returns the rows deleted.
 */
export async function pruneBuffer(tx: Tx, relid: number, retention: SnapshotRetention): Promise<number> {
  // Waits for a restore from one of these snapshots to commit (it holds the snapshot's row FOR SHARE), so the
  // frontiers read below include the frontier that restore set.
  await tx`SELECT pgtrickle.expire_snapshots(${relid}, ${retention.snapshotRetentionMaxAgeSeconds},
    ${retention.snapshotRetentionMaxRows})`;
  const [row] = await tx<{ frontiers: string[] | null; pinned: boolean }[]>`
    SELECT array_agg(f) AS frontiers, bool_or(f IS NULL) AS pinned FROM (
      SELECT s.frontier::text AS f
      FROM pgtrickle.pgt_dependencies d JOIN pgtrickle.pgt_stream_tables s USING (pgt_id)
      WHERE d.source_relid = ${relid}
      UNION ALL
      SELECT frontier::text FROM pgtrickle.pgt_snapshots
      WHERE retention_state = 'retained' AND ${relid}::oid = ANY(source_relids)
    ) consumers`;
  if (row === undefined || row.frontiers === null || row.pinned) return 0;
  // Below the smallest xmin, visibility is certain; between it and the smallest xmax, each frontier is asked.
  const result = await tx.unsafe(
    `DELETE FROM ${bufferName(relid)}
     WHERE xid < (SELECT min(pg_snapshot_xmax(f::pg_snapshot)) FROM unnest($1::text[]) f)
       AND (xid < (SELECT min(pg_snapshot_xmin(f::pg_snapshot)) FROM unnest($1::text[]) f)
         OR (SELECT bool_and(pg_visible_in_snapshot(xid, f::pg_snapshot)) FROM unnest($1::text[]) f))`,
    [row.frontiers],
  );
  return result.count;
}
